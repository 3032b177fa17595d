"""The package's import graph, read with folders as architecture parts, matches the README's map; the public
API in `omnivox` keeps its names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import omnivox

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "core", "plugins", "training")  # the folders of the package; top-level modules are part "omnivox"
PARTS = ("core/kernel", "core/runtime", "core/contracts")
# What each part may import from omnivox (any import, at module level or inside a function). Layers, top down:
# the application (cli/) composes everything; training/ and plugins/ are implementations (training may use
# plugins, never the reverse); core/ imports only core/: runtime -> kernel -> contracts -> core's shared base.
CORE = {"core/kernel", "core/runtime", "core/contracts", "core"}
ALLOWED = {
    "cli": {"cli", "training", "plugins", "omnivox"} | CORE,
    "omnivox": {"omnivox", "plugins"} | CORE,  # the lazy public API (__init__.py) and the device client (mqtt.py)
    "training": {"training", "plugins"} | CORE,
    "plugins": {"plugins"} | CORE,
    "core/runtime": {"core/runtime", "core/kernel", "core/contracts", "core"},
    "core/kernel": {"core/kernel", "core/contracts", "core"},
    "core/contracts": {"core/contracts", "core"},
    "core": {"core"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("omnivox",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def part_of(module: str) -> str:
    """`omnivox.core.kernel.model` -> `core/kernel`; `omnivox.core.errors` -> `core`; `omnivox.plugins.x` ->
    `plugins`; `omnivox.mqtt` and `omnivox` -> `omnivox`."""
    path = "/".join(module.split(".")[1:])
    for part in PARTS:
        if path == part or path.startswith(part + "/"):
            return part
    top = path.split("/")[0]
    return top if top in PACKAGES else "omnivox"


def imports(path: Path, top_level_only: bool = False) -> list[str]:
    """The omnivox modules `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join(module_name(path).split(".")[: -node.level] + [node.module])
            found += [base] + [f"{base}.{a.name}" for a in node.names]
    return [m for m in found if m == "omnivox" or m.startswith("omnivox.")]


def package_files() -> list[Path]:
    """Every Python module of the package: the top-level modules and everything under its folders."""
    files = sorted(ROOT.glob("*.py"))
    for folder in PACKAGES:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def core_files():
    return sorted((ROOT / "core").rglob("*.py"))


def test_readme_map_lists_every_part_of_core_and_every_module():
    readme = (ROOT / "README.md").read_text()
    for part in PARTS + ("cli",):
        assert f"`{part}/`" in readme, f"README's architecture map does not name {part}/"
    for path in core_files():
        folder = path.parent.relative_to(ROOT).as_posix()
        named = f"`{path.parent.name}/`" if folder not in PARTS + ("core",) else path.name
        if path.stem != "__init__":
            assert named in readme, f"README's architecture map does not mention {path.relative_to(ROOT)}"


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_imports_only_what_the_layers_allow(path):
    part = part_of(module_name(path))
    for target in imports(path):
        if target in ("omnivox", "omnivox.core"):
            continue
        target_part = part_of(target)
        assert target_part in ALLOWED[part], f"{module_name(path)} ({part}) imports {target} ({target_part})"


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_core_module_imports_a_plugin_at_import_time(path):
    bad = [m for m in imports(path, top_level_only=True) if m.startswith("omnivox.plugins")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad} at import time"


def test_kernel_never_imports_the_runtime_even_lazily():
    for path in (ROOT / "core" / "kernel").rglob("*.py"):
        assert not [m for m in imports(path) if m.startswith("omnivox.core.runtime")], path


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """Guard against a checker that can never fail: a kernel file importing the runtime, and a core file
    importing the command line, are caught."""
    for source, part in (("from omnivox.core.runtime.bus import Bus\n", "core/kernel"),
                         ("from omnivox.cli.chat import chat\n", "core/runtime")):
        node = ast.parse(source).body[0]
        assert part_of(node.module) not in ALLOWED[part]


# ---- underscore names stay in their module -----------------------------------------------------------------
def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_private_names(tree: ast.AST) -> set[str]:
    """The underscore names a module defines: functions, classes, variables, attributes it assigns
    (`self._x = ...`, `obj._x = ...`) and parameters."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return {n for n in names if _private(n)}


# third-party underscore names the project sets or calls on purpose (not another omnivox module's)
THIRD_PARTY = {"_attn_implementation", "_download", "_MODELS"}
TREES = {path: ast.parse(path.read_text()) for path in package_files()}
DEFINED = {path: defined_private_names(tree) for path, tree in TREES.items()}


def foreign_private_uses(path: Path, tree: ast.AST, defined: dict[Path, set[str]]) -> list[str]:
    """`from omnivox.x import _name` of another module, and `obj._name` where `_name` is not this module's own
    but another omnivox module's (third-party underscore names are not the project's to police here)."""
    own = defined[path]
    elsewhere = set().union(*(names for other, names in defined.items() if other != path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("omnivox"):
            found += [f"line {node.lineno}: from {node.module} import {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and _private(node.attr):
            if node.attr not in own and node.attr in elsewhere and node.attr not in THIRD_PARTY:
                found.append(f"line {node.lineno}: .{node.attr}")
    return found


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_reaches_into_another_modules_underscore_names(path):
    found = foreign_private_uses(path, TREES[path], DEFINED)
    assert not found, f"{path.relative_to(ROOT)} uses another module's underscore names: {found}"


def test_the_underscore_checker_sees_a_reach_in():
    user = Path("user.py")
    tree = ast.parse("from omnivox.core.kernel.generation import _sample\ndef f(lm):\n    return lm._head(1)\n")
    defined = {user: defined_private_names(tree), Path("model.py"): {"_head"}}
    assert len(foreign_private_uses(user, tree, defined)) == 2


# ---- no module-level registries in core/runtime/ and plugins/ (state lives in the plugin manager) -------------
STATEFUL_PARTS = ("core/runtime", "plugins")
CONTAINER_CALLS = {"dict", "list", "set", "OrderedDict", "defaultdict", "deque", "Counter"}
CONTAINER_DISPLAYS = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)
MUTATORS = {"append", "extend", "update", "setdefault", "pop", "clear", "add", "remove", "insert", "popitem",
            "discard", "appendleft"}


def _makes_container(value: ast.expr | None) -> bool:
    if isinstance(value, CONTAINER_DISPLAYS):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        return (func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)) in CONTAINER_CALLS
    return False


def _root_name(node: ast.expr) -> str | None:
    """`X` of `X`, `X[k]`, `X[k][j]`: the module name whose container an expression reaches."""
    while isinstance(node, ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _locals(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    """The names a function binds itself (parameters, assignments not declared global): they shadow module names."""
    args = function.args
    bound = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg) if a}
    declared = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Global):
            declared.update(node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
    return bound - declared


def module_registries(tree: ast.Module) -> list[str]:
    """The module-level names bound to a mutable container (a dict/list/set display or a dict()/list()/set()/
    OrderedDict()/defaultdict()/... call) that the module mutates: item assignment or deletion, a mutating method
    (append, update, setdefault, pop, add, ...), an augmented assignment; plus every `global` rebinding (module
    state set at run time). Reads, and constants never mutated, are fine. Not followed: aliases and callees."""
    containers = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and _makes_container(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            containers.update(t.id for t in targets if isinstance(t, ast.Name))
    found: list[str] = []

    def visit(node: ast.AST, shadowed: set[str]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            shadowed = shadowed | _locals(node)
        mutated = None
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                if isinstance(target, ast.Subscript) or isinstance(node, ast.AugAssign):
                    mutated = _root_name(target) or mutated
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            mutated = _root_name(node.func.value)
        elif isinstance(node, ast.Global):
            found.extend(f"line {node.lineno}: global {name}" for name in node.names)
        if mutated in containers and mutated not in shadowed:
            found.append(f"line {node.lineno}: {mutated} is mutated")
        for child in ast.iter_child_nodes(node):
            visit(child, shadowed)

    visit(tree, set())
    return found


def stateful_part_files() -> list[Path]:
    return [path for part in STATEFUL_PARTS for path in sorted((ROOT / part).rglob("*.py"))]


@pytest.mark.parametrize("path", stateful_part_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_level_mutable_registry(path):
    """Issue #21: what plugins register lives in the plugin manager, what a pipeline's stages share in
    `pipeline.shared`; no module of core/runtime/ or plugins/ keeps a registry or cache of its own. Kept on purpose:
    `functools.lru_cache(maxsize=1)` on plugins/fw_transcriber.py's `_normalizer` (a lazily built constant, not a
    registry: nothing registers into it)."""
    found = module_registries(TREES[path])
    assert not found, f"{path.relative_to(ROOT)} keeps module-level state: {found}"


def test_the_registry_checker_sees_a_registry():
    """Guard against a checker that can never fail: a registry filled by a function, a cache, an augmented list and
    a global are caught; constants, a local of the same name and a mutated copy are not."""
    caught = ast.parse(
        "REGISTRY: dict = {}\nCACHE = dict()\nHOOKS = []\n_DEFAULT = None\n"
        "def register(kind, adapter):\n    REGISTRY[kind] = adapter\n"
        "def cached(key):\n    return CACHE.setdefault(key, object())\n"
        "HOOKS += [print]\n"
        "def default():\n    global _DEFAULT\n    _DEFAULT = object()\n")
    assert [f.split(": ")[1] for f in module_registries(caught)] == [
        "REGISTRY is mutated", "CACHE is mutated", "HOOKS is mutated", "global _DEFAULT"]
    fine = ast.parse(
        "KINDS = {'a': 1}\nNAMES = ['x']\n"
        "def lookup(kind):\n    return KINDS[kind]\n"
        "def build(NAMES):\n    NAMES.append('y')\n    return NAMES\n"
        "def copy():\n    mine = dict(KINDS)\n    mine['b'] = 2\n    return mine\n")
    assert module_registries(fine) == []


PUBLIC = {
    "OmniModel": "class", "OmniLM": "class", "OmniConfig": "class", "TokenLayout": "class",
    "generate": "function", "stream": "function", "Stage": "class", "Pipeline": "class", "Bus": "class",
    "hookimpl": "object", "create": "function",
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_api_names_resolve(name):
    obj = getattr(omnivox, name)
    if PUBLIC[name] == "class":
        assert isinstance(obj, type)
    elif PUBLIC[name] == "function":
        assert callable(obj)
    assert name in omnivox.__all__


def test_public_event_types_and_hooks():
    events = omnivox.events
    for name in ("Interruption", "Error", "Cancel", "Shutdown", "AudioChunk", "Features", "TextIn",
                 "TextToken", "CodecFrame", "AudioOut", "AudioStart", "AudioStop", "VoiceStarted",
                 "VoiceStopped", "TurnStart", "TurnEnd", "Metrics"):
        assert issubclass(getattr(events, name), events.Event)
    hooks = {n for n in dir(omnivox.hookspecs) if re.fullmatch(r"register_\w+", n)}
    assert {"register_audio_inputs", "register_vad", "register_encoders", "register_strategies",
            "register_codecs", "register_audio_outputs", "register_datasets", "register_models"} <= hooks


def test_a_stage_written_against_the_public_api_runs():
    """What the README shows a plugin author: subclass omnivox.Stage, feed it with omnivox.testing."""
    ev = omnivox.events

    class Upper(omnivox.Stage):
        consumes = (ev.TextToken,)

        async def process(self, event):
            yield ev.TextToken(event.token_id, event.text.upper(), step=event.step, **ev.same_turn(event))

    import asyncio

    turn = omnivox.testing.make_turn(1, [ev.TextToken(1, "hi", step=0)])
    out = asyncio.run(omnivox.testing.run_stage(Upper(), turn))
    assert [e.text for e in omnivox.testing.of_type(out, ev.TextToken)] == ["HI"]
