"""The speech kit: a model with the encoder it hears through and the codec it speaks through, checked to fit.

The one place that knows which encoder and codec go with a model (`SpeechKit.load`):
- a registered model (kind `models`; `random` = `tiny-random`) comes with the components its plugin declares
  (`registry.add(NAME, factory, components=RECORD | EXPORT_DIR)`);
- a checkpoint directory (or hub id) with the record its export wrote, EXPORT/components.json:
  {"encoder"|"codec": {"name", "params", "local"}}, `local` naming the params that are files of the export; one
  without a record (upstream Mini-Omni) with the encoder and codec whose plugins declare themselves Mini-Omni's own
  (`registry.add(..., mini_omni={"params", "local"})`);
- `--encoder` / `--codec NAME[:MODEL]` override them; a bare value (a directory, a hub id) goes to the plugin that
  declares it loads it (`registry.add(..., loads=PREDICATE)`).
Plugins are reached only through the plugin manager's registries, by name."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from omnivox.core.contracts.manager import Entry, get_plugin_manager
from omnivox.core.errors import CheckpointError, ConfigError, PluginError

COMPONENTS_FILE = "components.json"  # EXPORT/components.json, written by training/export.py
DEFAULT_MODEL = "demo"  # the shipped demo model: what runs without a checkpoint
RANDOM_MODEL = "tiny-random"  # the registered tiny random model
ALIASES = {"random": RANDOM_MODEL}  # `--checkpoint random` / `checkpoint: random`
MAX_STEPS = 600  # the default bound of an answer
RANDOM_MAX_STEPS = 96  # the random model's answer is noise: a short one shows every stage
NOTICE = "--checkpoint random: running a tiny RANDOM model (every stage runs; the answer is noise)"
DEFAULT_NOTICE = ("no --checkpoint given: the shipped demo model (a small demo: spoken arithmetic, days, months, "
                  "capitals, greetings; --checkpoint random for the tiny random model)")
ROLES = {"encoder": "encoders", "codec": "codecs"}  # role -> plugin kind


class SpeechKit:
    """A model, the encoder it hears through and the codec it speaks through (None: not needed), checked to fit;
    `components`: {role: spec} of the encoder and codec the model was trained with; `max_steps`: the default bound
    of an answer."""

    def __init__(self, model, encoder=None, codec=None, *, components: dict | None = None,
                 max_steps: int = MAX_STEPS):
        check_fit(model, encoder, codec)
        self.model, self.encoder, self.codec = model, encoder, codec
        self.components = dict(components or {})
        self.max_steps = max_steps

    @classmethod
    def load(cls, checkpoint: str | None = None, *, encoder: str | None = None, codec: str | None = None,
             hear: bool = True, speak: bool = True, seed: int = 0, say=print) -> SpeechKit:
        """The kit of `checkpoint`, a registered model or a checkpoint directory (None: the shipped demo model,
        said with DEFAULT_NOTICE; `random`: the tiny random kit, said with NOTICE). The encoder (only when `hear`)
        and codec (only when `speak`) are the ones it records unless `encoder` / `codec` (NAME[:MODEL], or a value
        a plugin loads) override them."""
        if checkpoint is None:
            say(DEFAULT_NOTICE)
        name = model_name(checkpoint)
        if name == RANDOM_MODEL:
            say(NOTICE)
        models = get_plugin_manager().registry("models")
        if name in models.entries:
            model, record = models.create(name, seed=seed), declared_components(models.entries[name])
        else:
            model = cls.load_model(name, seed)
            record = components_in(Path(model.source))  # source: the resolved directory
        heard = _choose(model, record, "encoder", encoder) if hear else None
        spoken = _choose(model, record, "codec", codec) if speak else None
        return cls(model, heard, spoken, components=record,
                   max_steps=RANDOM_MAX_STEPS if name == RANDOM_MODEL else MAX_STEPS)

    @classmethod
    def random(cls, seed: int = 0, *, hear: bool = True, speak: bool = True) -> SpeechKit:
        """The tiny random kit: `tiny-random` (seeded by `seed`) with the encoder and codec it declares."""
        return cls.load(RANDOM_MODEL, hear=hear, speak=speak, seed=seed, say=lambda line: None)

    @staticmethod
    def load_model(checkpoint: str, seed: int = 0):
        """The model alone: a registered model by name (`random` = `tiny-random`), else an upstream or native
        checkpoint directory (or hub id); half-precision weights (a shipped fp16 export) widened to fp32 for CPU."""
        name = model_name(checkpoint)
        models = get_plugin_manager().registry("models")
        if name in models.entries:
            return models.create(name, seed=seed)
        from omnivox.core.kernel.checkpoint import OmniModel

        model = OmniModel.from_pretrained(name)
        if any(p.dtype in (torch.float16, torch.bfloat16) for p in model.lm.parameters()):
            model.lm.float()
        return model

    @staticmethod
    def components_of(checkpoint: str) -> dict[str, dict]:
        """{role: spec} of the encoder and codec `checkpoint` was trained with, read without loading its weights."""
        name = model_name(checkpoint)
        models = get_plugin_manager().registry("models")
        if name in models.entries:
            return declared_components(models.entries[name])
        from omnivox.core.kernel.checkpoint import resolve_checkpoint_dir

        return components_in(resolve_checkpoint_dir(name))

    @staticmethod
    def build(role: str, spec: dict):
        """The encoder or codec (`role`) a spec names; a plugin that is not loaded is named with why and the fix."""
        manager = get_plugin_manager()
        kind, name = ROLES[role], spec["name"]
        for key in spec.get("local", []):
            if not Path(spec["params"][key]).exists():
                fix = spec.get("fix", f"pass --{role}")
                raise CheckpointError(f"the {role} {name!r} needs {spec['params'][key]} ({spec['where']}), which is "
                                      "missing", f"copy the whole export directory, or {fix}")
        if name not in manager.registry(kind).entries:
            skipped = "; ".join(f"plugin {p!r} skipped: {why}" for p, why in manager.skipped.items())
            raise PluginError(f"the {role} {name!r} ({spec['where']}) is not available"
                              + (f" ({skipped})" if skipped else ""),
                              f"install the plugin that registers {kind}/{name} (`omnivox plugins` lists what is "
                              f"loaded), or choose another with --{role} NAME[:MODEL]")
        return manager.create(kind, name, **spec["params"])


def model_name(checkpoint: str | None) -> str:
    """The registered name or directory `checkpoint` stands for (None: the default model; aliases resolved)."""
    return DEFAULT_MODEL if checkpoint is None else ALIASES.get(str(checkpoint), checkpoint)


def declared_components(entry: Entry) -> dict[str, dict]:
    """{role: spec} a registered model's plugin declares: a record, or the export directory holding one."""
    declared = entry.components
    if declared is None:
        return {}
    if isinstance(declared, dict):
        where = f"declared by the model {entry.name!r} (plugin {entry.plugin})"
        return _specs(declared, None, where, "pass --encoder/--codec", where)
    return components_in(declared)


def components_in(directory) -> dict[str, dict]:
    """{role: spec} of a checkpoint directory, spec = {"name", "params", "local", "where", "fix"}, its local files
    resolved to paths in `directory`: its COMPONENTS_FILE (written by `omnivox train`'s export), or Mini-Omni's own
    components (the plugins that declare `mini_omni`) when it has none."""
    directory = Path(directory)
    path = directory / COMPONENTS_FILE
    if path.is_file():
        fix = f"re-export the model (omnivox train RECIPE writes {COMPONENTS_FILE}), or pass --encoder/--codec"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}", fix) from None
        return _specs(record, directory, f"recorded in {path}", fix, str(path))
    where = f"Mini-Omni's default for {directory} (it has no {COMPONENTS_FILE})"
    return _specs(mini_omni_components(), directory, where, "pass --encoder/--codec", where)


def mini_omni_components() -> dict[str, dict]:
    """The record of a checkpoint without one: per role, the first plugin entry that declares `mini_omni`."""
    manager, record = get_plugin_manager(), {}
    for role, kind in ROLES.items():
        entry = next((e for e in manager.registry(kind).entries.values() if e.mini_omni is not None), None)
        if entry is not None:
            record[role] = {"name": entry.name, **entry.mini_omni}
    return record


def _specs(record, directory: Path | None, where: str, fix: str, source: str) -> dict[str, dict]:
    """{role: spec} of a components record; `local` params resolved in `directory`."""
    specs = {}
    for role in ROLES:
        entry = record.get(role) if isinstance(record, dict) else None
        if entry is None:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not isinstance(entry.get("params", {}), dict):
            raise CheckpointError(f"{source}: {role} must be {{name: str, params: {{...}}, local: [...]}}", fix)
        params, local = dict(entry.get("params") or {}), list(entry.get("local") or [])
        if directory is not None:
            for key in local:  # files that live in the checkpoint directory (checked when the component is built)
                params[key] = str(directory / str(params.get(key)))
        specs[role] = {"name": entry["name"], "params": params, "local": local, "where": where, "fix": fix}
    return specs


def component_spec(role: str, value: str) -> dict:
    """A command-line override `NAME` or `NAME:MODEL` (e.g. `faster_whisper:tiny.en`, `mel:runs/codec/export`) as a
    spec; MODEL goes to the factory's `model` or `checkpoint` parameter. A value that names no registered plugin
    goes to the plugin that declares it loads it (`loads`), as its MODEL."""
    name, sep, model = str(value).partition(":")
    registry = get_plugin_manager().registry(ROLES[role])
    if name not in registry.entries:
        loader = registry.loader(str(value))
        if loader is not None:
            name, sep, model = loader.name, ":", str(value)
        elif Path(str(value)).expanduser().is_dir():
            raise ConfigError(f"--{role} {value}: a directory that no {role} plugin loads",
                              f"name its {role} plugin: --{role} NAME:{value} (`omnivox plugins` lists the "
                              f"{ROLES[role]})")
    params = {}
    if sep:
        entry = registry.entries.get(name)
        accepted = inspect.signature(entry.factory).parameters if entry is not None else {}
        params["checkpoint" if "checkpoint" in accepted and "model" not in accepted else "model"] = model
    return {"name": name, "params": params, "where": f"given with --{role} {value}"}


def _choose(model, record: dict, role: str, override: str | None):
    """The `role` of the kit: the override when given (unless it is the recorded one's own files), else the one
    `record` names."""
    own = record.get(role)
    if override is not None and not _is_local_copy(override, own):
        spec = component_spec(role, override)
    elif own is not None:
        spec = own
    else:
        raise ConfigError(f"the model {getattr(model, 'source', '')!r} records no {role}",
                          f"name it: --{role} NAME[:MODEL] (`omnivox plugins` lists the {ROLES[role]})")
    return SpeechKit.build(role, spec)


def _is_local_copy(value: str, spec: dict | None) -> bool:
    """`value` is the path of the recorded component's own files (e.g. `--codec EXPORT/codec`)."""
    if spec is None or not Path(str(value)).expanduser().exists():
        return False
    target = Path(str(value)).expanduser().resolve()
    return any(Path(spec["params"][key]).resolve() == target for key in spec.get("local", []))


def check_fit(model, encoder=None, codec=None) -> None:
    """The encoder's feature width and the codec's token grid must be the ones the LM was built for."""
    config = model.config
    if encoder is not None and encoder.feature_dim != config.whisper_adapter_dim:
        raise ConfigError(f"the encoder gives {encoder.feature_dim}-d features but the model's adapter takes "
                          f"{config.whisper_adapter_dim}", "use the encoder the model was trained with (without "
                          "--encoder/--whisper: the one its export recorded in components.json)")
    if codec is not None:
        grid = codec.grid
        if grid.n_slots != config.audio_streams or grid.codebook_size != config.codebook_size:
            raise ConfigError(
                f"the codec has {grid.n_slots} slots of {grid.codebook_size} codes but the model has "
                f"{config.audio_streams} audio streams of {config.codebook_size}",
                "use the codec the model was trained with (without --codec: the one its export recorded)")
