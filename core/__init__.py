"""The core of omnivox, one subpackage per part of the architecture: `kernel` (the model), `runtime` (bus,
stages, pipelines), `contracts` (plugin contracts and machinery), `cli` (the command line). The modules at
this level (errors, YAML reading, PCM helpers) are shared by all four."""
