"""Training recipes: the YAML schema, its validation, `key=value` overrides and the `_component_` builders.

A recipe is one YAML mapping with these top-level keys (defaults in DEFAULTS):

    name, seed, output_dir        run name, global seed, where checkpoints/metrics/export go
    model:      {_component_, config, overrides}      the OmniLM to train (config: tiny | mini-omni | PATH)
    tokenizer:  byte-level | PATH/tokenizer.json | null (= the init_from checkpoint's tokenizer.json)
    init_from:  null | DIR    weights of a previous stage / Qwen2 / Mini-Omni; partial load reported
    resume:     null | auto | DIR   full training state (model, optimizer, scheduler, step, data, RNG)
    strategy:   decoding-strategy name whose layout builds the targets (e.g. text-delay)
    trainable:  {encoder, adapter, lm, heads}: frozen | full
    data:       {_component_ (dataset plugin or dotted path), ...its parameters}
    eval_data:  null | {_component_ (default manifest), ...}: held-out set, evaluated every
                training.eval_every steps and at the end (eval.csv, summary.json)
    prepare:    {codec: {_component_, ...}, encoder: {_component_, ...}}  used by `omnivox prepare`
    optimizer:  {_component_ (dotted path, called with the trainable params), ...}
    scheduler:  {_component_ (dotted path, called with the optimizer and total_steps), ...}
    loss:       {text_weight, audio_weight, task_streams: {TASK: [text, audio]}} (which streams carry loss
                per task; default all: e.g. stage 1 trains TTS examples on audio only, the frozen LM's text
                stream gets no gradient there)
    logger:     {_component_, ...}
    training:   {max_steps, batch_size (global), grad_clip, log_every, checkpoint_every, keep_checkpoints,
                 eval_every, distributed: ddp | fsdp, device: cpu | cuda | auto, num_threads, group_by_length:
                 0 | W (batches of about one length, sorted within runs of W batches: less padding), ema_decay:
                 null | D (export an exponential moving average of the weights, training/weight_average.py),
                 audio_noise: 0 | P (each fed audio code of a training batch replaced by a random one with
                 probability P, labels kept: collate.corrupt_audio)}
    export:     null | DIR (default OUTPUT_DIR/export): the final weights in the native inference format
    trainer:    {_component_}: the recipe object that runs the steps (training/trainer.py TrainingRecipe, or
                a subclass of it that overrides a step, e.g. `loss` or `train_step`)
    progress:   true | false: a step progress bar on stderr (shown only when stderr is a terminal)

A `_component_` without a dot names a plugin of the section's kind (`data` -> datasets, `prepare.codec` ->
codecs, `prepare.encoder` -> encoders); with dots it is `package.module.callable`. Parameters are checked
against the callable's signature when the recipe is loaded, before anything is built."""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from omnivox.core.config_check import check_params, did_you_mean
from omnivox.core.errors import ConfigError
from omnivox.core.yaml_files import read_yaml

TRAINABLE_GROUPS = ("encoder", "adapter", "lm", "heads")
TRAINABLE_MODES = ("frozen", "full")
DISTRIBUTED = ("ddp", "fsdp")
DEVICES = ("cpu", "cuda", "auto")

DEFAULTS: dict[str, Any] = {
    "name": None,
    "seed": 0,
    "output_dir": None,
    "model": {"_component_": "omnivox.training.recipe.build_model", "config": "tiny", "overrides": {}},
    "tokenizer": None,
    "init_from": None,
    "resume": None,
    "strategy": "text-delay",
    "trainable": {"encoder": "frozen", "adapter": "full", "lm": "full", "heads": "full"},
    "data": {"_component_": "manifest"},
    "eval_data": None,
    "prepare": None,
    "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-4},
    "scheduler": {"_component_": "omnivox.training.schedule.warmup_cosine", "warmup_steps": 0},
    "loss": {"text_weight": 1.0, "audio_weight": 1.0, "task_streams": {}},
    "logger": {"_component_": "omnivox.training.metric_logging.MetricsLogger"},
    "training": {"max_steps": 100, "batch_size": 8, "grad_clip": 1.0, "log_every": 10, "checkpoint_every": 0,
                 "keep_checkpoints": 2, "eval_every": 0, "distributed": "ddp", "device": "cpu", "num_threads": None,
                 "group_by_length": 0, "ema_decay": None, "audio_noise": 0.0},
    "export": None,
    "trainer": {"_component_": "omnivox.training.trainer.TrainingRecipe"},
    "progress": True,
}
REQUIRED = ("name", "output_dir")
# sections whose keys are fixed (the others are `_component_` sections whose keys are the callable's parameters)
FIXED_SECTIONS = ("trainable", "loss", "training")
COMPONENT_SECTIONS = {"model": None, "data": "datasets", "optimizer": None, "scheduler": None, "logger": None,
                      "trainer": None}
PREPARE_PARTS = {"codec": "codecs", "encoder": "encoders"}
# parameters the trainer passes itself: a recipe must not set them
INJECTED = {"model": (), "data": (), "optimizer": ("params",), "scheduler": ("optimizer", "total_steps"),
            "logger": ("output_dir", "resume_step", "enabled"), "trainer": ("recipe",)}


@dataclass
class Recipe:
    """A validated recipe: `data` is the full mapping with defaults filled in; `source` names the file."""

    data: dict[str, Any]
    source: str

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @property
    def output_dir(self) -> Path:
        return Path(self.data["output_dir"])

    @property
    def export_dir(self) -> Path:
        return Path(self.data["export"]) if self.data["export"] else self.output_dir / "export"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False)


# ---- loading ---------------------------------------------------------------------------------------
def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read RECIPE.yaml, apply `key.sub=value` overrides (values parsed as YAML), fill defaults, validate.
    Relative paths in the recipe stay relative to the working directory (as torchtune)."""
    path = Path(path)
    raw = read_yaml(path, "recipe", "pass the path of a recipe YAML (see recipes/)")
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path}: expected a mapping of keys, got {type(raw).__name__}",
                          f"write 'key: value' lines; valid keys: {', '.join(DEFAULTS)}")
    for item in overrides:
        apply_override(raw, item, str(path))
    return validate(_floats(raw), str(path))


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _floats(node: Any) -> Any:
    """YAML 1.1 reads `1e-4` as a string: turn such strings into floats, everywhere in the tree."""
    if isinstance(node, dict):
        return {k: _floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_floats(v) for v in node]
    if isinstance(node, str) and _FLOAT.fullmatch(node):
        return float(node)
    return node


def apply_override(raw: dict[str, Any], item: str, source: str = "recipe") -> None:
    """`a.b=value` sets raw['a']['b'] (creating the mapping); the value is parsed as YAML (`null`, `3`, ...)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not key=value",
                          "write overrides as key=value, e.g. training.max_steps=10")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    if parts[0] not in DEFAULTS:
        raise _unknown_key(source, "", parts[0], DEFAULTS)
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            default = _lookup(DEFAULTS, parts[: parts.index(part) + 1])
            node[part] = copy.deepcopy(default) if isinstance(default, dict) else {}
        node = node[part]
    node[parts[-1]] = value


def _lookup(tree: dict[str, Any], parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def _unknown_key(source: str, section: str, key: str, valid) -> ConfigError:
    where = f"{section}." if section else ""
    return ConfigError(f"{source}: unknown recipe key '{where}{key}'{did_you_mean(key, valid)}",
                       f"valid keys{' of ' + section if section else ''}: {', '.join(sorted(valid))}")


def validate(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Fill defaults and check every key, value and `_component_` of a recipe mapping."""
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise _unknown_key(source, "", unknown[0], DEFAULTS)
    data = copy.deepcopy(DEFAULTS)
    for key, value in raw.items():
        if isinstance(DEFAULTS[key], dict) and key in FIXED_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a mapping",
                                  f"valid keys of {key}: {', '.join(DEFAULTS[key])}")
            bad = sorted(set(value) - set(DEFAULTS[key]))
            if bad:
                raise _unknown_key(source, key, bad[0], DEFAULTS[key])
            data[key].update(value)
        elif key in COMPONENT_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a mapping with _component_",
                                  f"write {key}: {{_component_: ..., param: value}}")
            # a section that names another component starts from no parameters of the default one
            data[key] = dict(value) if value.get("_component_", data[key]["_component_"]) != data[key]["_component_"] \
                else {**data[key], **value}
        else:
            data[key] = value
    for key in REQUIRED:
        if not data[key]:
            raise ConfigError(f"{source}: missing required key {key!r}", f"add '{key}: ...' to the recipe")
    _check_scalars(data, source)
    for section, kind in COMPONENT_SECTIONS.items():
        check_component(data[section], f"{source}: {section}", kind, INJECTED[section])
    if data["eval_data"] is not None:
        if not isinstance(data["eval_data"], dict):
            raise ConfigError(f"{source}: eval_data must be a mapping or null",
                              "write eval_data: {path: HELD_OUT.prepared.jsonl} (a dataset like data:)")
        data["eval_data"] = {"_component_": "manifest", **data["eval_data"]}
        check_component(data["eval_data"], f"{source}: eval_data", "datasets", ())
    if data["prepare"] is not None:
        prep = data["prepare"]
        if not isinstance(prep, dict) or set(prep) - set(PREPARE_PARTS):
            bad = sorted(set(prep) - set(PREPARE_PARTS)) if isinstance(prep, dict) else ["(not a mapping)"]
            raise _unknown_key(source, "prepare", bad[0], PREPARE_PARTS)
        for part, kind in PREPARE_PARTS.items():
            if part in prep:
                check_component(prep[part], f"{source}: prepare.{part}", kind, ())
    return Recipe(data, source)


def _check_scalars(data: dict[str, Any], source: str) -> None:
    def need(cond: bool, key: str, problem: str, fix: str) -> None:
        if not cond:
            raise ConfigError(f"{source}: {key} {problem}", fix)

    need(isinstance(data["seed"], int), "seed", f"= {data['seed']!r} is not an integer", "write seed: 0")
    for key in ("name", "output_dir", "strategy"):
        need(isinstance(data[key], str), key, f"= {data[key]!r} is not a string", f"write {key}: TEXT")
    for key in ("init_from", "tokenizer", "export"):
        need(data[key] is None or isinstance(data[key], str), key, f"= {data[key]!r} is not a path",
             f"write {key}: PATH or {key}: null")
    need(data["resume"] is None or isinstance(data["resume"], str), "resume", f"= {data['resume']!r}",
         "write resume: auto, resume: PATH (a checkpoint directory) or resume: null")
    for group, mode in data["trainable"].items():
        need(mode in TRAINABLE_MODES, f"trainable.{group}", f"= {mode!r}", f"use one of: {', '.join(TRAINABLE_MODES)}")
    need(data["trainable"]["encoder"] == "frozen", "trainable.encoder", "= full is not supported: encoder "
         "features are computed once by `omnivox prepare` and cached", "set trainable.encoder: frozen")
    need(any(m == "full" for m in data["trainable"].values()), "trainable", "freezes everything",
         "set at least one of adapter, lm, heads to full")
    t = data["training"]
    for key in ("max_steps", "batch_size"):
        need(isinstance(t[key], int) and not isinstance(t[key], bool) and t[key] > 0, f"training.{key}",
             f"= {t[key]!r} must be a positive integer", f"write training.{key}: N")
    need(isinstance(data["progress"], bool), "progress", f"= {data['progress']!r}", "write progress: true or false")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints", "eval_every", "group_by_length"):
        need(isinstance(t[key], int) and t[key] >= 0, f"training.{key}", f"= {t[key]!r} must be an integer >= 0",
             f"write training.{key}: N (0 = {'never' if key != 'keep_checkpoints' else 'keep all'})")
    need(t["grad_clip"] is None or (isinstance(t["grad_clip"], (int, float)) and t["grad_clip"] > 0),
         "training.grad_clip", f"= {t['grad_clip']!r}", "give a positive max gradient norm or null (no clipping)")
    need(t["distributed"] in DISTRIBUTED, "training.distributed", f"= {t['distributed']!r}",
         f"use one of: {', '.join(DISTRIBUTED)}")
    need(t["device"] in DEVICES, "training.device", f"= {t['device']!r}", f"use one of: {', '.join(DEVICES)}")
    need(t["ema_decay"] is None or (isinstance(t["ema_decay"], float) and 0 < t["ema_decay"] < 1),
         "training.ema_decay", f"= {t['ema_decay']!r}", "give a decay between 0 and 1 (e.g. 0.999) or null")
    need(isinstance(t["audio_noise"], (int, float)) and not isinstance(t["audio_noise"], bool)
         and 0 <= t["audio_noise"] < 1, "training.audio_noise", f"= {t['audio_noise']!r}",
         "give the share of fed audio codes replaced by random ones, in [0, 1) (0: none)")
    need(t["num_threads"] is None or (isinstance(t["num_threads"], int) and t["num_threads"] > 0),
         "training.num_threads", f"= {t['num_threads']!r}", "give a positive integer or null (torch's default)")
    for key in ("text_weight", "audio_weight"):
        w = data["loss"][key]
        need(isinstance(w, (int, float)) and w >= 0, f"loss.{key}", f"= {w!r}", "give a number >= 0")
    from omnivox.core.kernel.tokens import TASKS

    streams = data["loss"]["task_streams"]
    need(isinstance(streams, dict), "loss.task_streams", f"= {streams!r}", "write {TASK: [text, audio]}")
    for task, kept in streams.items():
        need(task in TASKS, "loss.task_streams", f"names unknown task {task!r}", f"use some of: {', '.join(TASKS)}")
        need(isinstance(kept, list) and kept and set(kept) <= {"text", "audio"}, f"loss.task_streams.{task}",
             f"= {kept!r}", "give a non-empty list of text and/or audio")


# ---- components ------------------------------------------------------------------------------------
def resolve_component(name: Any, where: str, kind: str | None) -> Callable[..., Any]:
    """`_component_` -> callable: a dotted import path, or (without dots) a plugin name of `kind`."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: _component_ is missing", "name a builder: a dotted path or a plugin name")
    if "." not in name:
        if kind is None:
            raise ConfigError(f"{where}: _component_ {name!r} is not a dotted path",
                              "write package.module.callable (e.g. torch.optim.AdamW)")
        from omnivox.core.contracts.manager import get_plugin_manager

        return get_plugin_manager().registry(kind).get(name).factory
    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: _component_ {name!r}: cannot import {module_name} ({exc})",
                          "check the dotted path, or install the package that provides it") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{where}: _component_ {name!r}: {module_name} has no {attr!r}", "check the name")
    return getattr(module, attr)


def component_params(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k != "_component_"}


def check_component(section: dict[str, Any], where: str, kind: str | None, injected: Sequence[str]) -> None:
    """The callable exists, its parameters pass core/config_check.py (names, required ones, types: the checker
    pipelines use), and the recipe sets none of the injected ones."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a mapping with _component_", "write {_component_: ..., param: value}")
    factory = resolve_component(section.get("_component_"), where, kind)
    params = component_params(section)
    clash = sorted(set(params) & set(injected))
    if clash:
        raise ConfigError(f"{where}: {', '.join(clash)} is set by the trainer", f"remove {', '.join(clash)}")
    name = section["_component_"]
    check_params(where, name if "." in name or kind is None else f"{kind}/{name}", factory, params, skip=injected)


def build(section: dict[str, Any], where: str, kind: str | None = None, **injected: Any) -> Any:
    """Call the section's `_component_` with its parameters plus the trainer-injected ones."""
    factory = resolve_component(section["_component_"], where, kind)
    return factory(**injected, **component_params(section))


def model_config(config: str | dict = "tiny", overrides: dict | None = None):
    """The OmniConfig of a recipe's model section: "tiny" (OmniConfig.tiny), "mini-omni" (Qwen2-0.5B shape),
    a model_config.yaml path, or a mapping of config fields; `overrides` replace single fields."""
    from omnivox.core.kernel.config import OmniConfig

    overrides = dict(overrides or {})
    if config == "tiny":
        return OmniConfig.tiny(**overrides)
    if config == "mini-omni":
        return OmniConfig.from_dict({**OmniConfig.mini_omni().to_dict(), **overrides}, source="mini-omni config")
    if isinstance(config, dict):
        return OmniConfig.from_dict({**config, **overrides}, source="recipe model.config")
    if isinstance(config, str):
        return OmniConfig.from_dict({**OmniConfig.from_file(config).to_dict(), **overrides}, source=config)
    raise ConfigError(f"model.config = {config!r}", "use tiny, mini-omni, a model_config.yaml path or a mapping")


def build_model(config: str | dict = "tiny", overrides: dict | None = None, init_std: float | None = None):
    """OmniLM of `model_config(config, overrides)`. `init_std`: draw every Linear and Embedding weight from
    N(0, init_std) (norms stay 1) instead of the default initialisation."""
    import torch

    from omnivox.core.kernel.model import OmniLM

    model = OmniLM(model_config(config, overrides))
    if init_std is not None:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                    module.weight.normal_(0.0, init_std)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()
    return model
