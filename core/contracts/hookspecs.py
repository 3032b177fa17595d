"""The extension points of omnivox. A plugin (built-in or third-party, entry-point group `omnivox`)
implements any of these hooks with `@omnivox.core.contracts.hookspecs.hookimpl` and adds named factories to the
registry it is given: `registry.add("snac", make_snac_codec, description="SNAC 24 kHz codec")`.

A factory is a callable taking keyword parameters (from a pipeline YAML or the CLI) and returning the
component. Names are unique per kind; a later registration of a taken name is an error."""

from __future__ import annotations

import pluggy

PROJECT = "omnivox"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_audio_inputs(registry):
    """Add audio sources (file, microphone, MQTT, ...): factories returning an audio-input stage."""


@hookspec
def register_vad(registry):
    """Add voice-activity / turn detectors: factories returning a VAD stage."""


@hookspec
def register_encoders(registry):
    """Add audio encoders (Whisper, ...): factories returning an `AudioEncoder` (core/contracts/encoder.py)."""


@hookspec
def register_strategies(registry):
    """Add decoding strategies: factories returning a `DecodingStrategy` (core/kernel/strategies), named by the
    `strategy:` of a pipeline's `lm/omni` stage and of a training recipe."""


@hookspec
def register_codecs(registry):
    """Add audio codecs (SNAC, Mimi, ...): factories returning a `Codec` (core/contracts/codec.py)."""


@hookspec
def register_audio_outputs(registry):
    """Add audio sinks (file, speaker, MQTT, ...): factories returning an audio-output stage."""


@hookspec
def register_datasets(registry):
    """Add training datasets: factories returning a dataset usable by omnivox.training."""


@hookspec
def register_models(registry):
    """Add named models: factories returning an `OmniModel`, selected by `checkpoint: NAME` in a pipeline or
    `--checkpoint NAME` on the command line (a name that is not registered is read as a directory)."""


@hookspec
def register_transports(registry):
    """Add transports (MQTT, HTTP, ...): factories returning a `Transport` (core/runtime/transport.py): the factories
    of its input and output stages and, for one `omnivox serve` can serve, its `ServeOptions` (command-line
    options, `--config` keys, the input stage's params, whether the options enable it). A transport's input and
    output stages share its running service through their pipeline's `shared` place, never a global."""


@hookspec
def register_stage_adapters(registry):
    """Add stage adapters: `registry.add(KIND, adapter)` (KIND a stage kind with plugins, e.g. "codecs") makes the
    factories of KIND that return a component, not a Stage, usable in pipelines: `adapter(component, *, name,
    **params)` returns the Stage (a stage's params the factory does not take go to the adapter). Core adapts
    encoders and codecs itself (omnivox.core.runtime.pipeline.CORE_ADAPTERS); a plugin's adapter of a kind
    replaces core's."""
