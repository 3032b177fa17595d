"""The package's import graph, read with folders as architecture parts, matches the README's map; the public
API in `omnivox` keeps its names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import omnivox

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("core/kernel", "core/runtime", "core/contracts", "core/cli")
# What each part of core/ may import from omnivox (any import, at module level or inside a function).
ALLOWED = {
    "core/kernel": {"core/kernel", "core/contracts", "core"},
    "core/contracts": {"core/contracts", "core"},
    "core/runtime": {"core/runtime", "core/kernel", "core/contracts", "core"},
    "core": {"core"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("omnivox",) + (parts[:-1] if parts[-1] == "__init__" else parts))


def part_of(module: str) -> str:
    """`omnivox.core.kernel.model` -> `core/kernel`; `omnivox.core.errors` -> `core`; plugins -> `plugins`."""
    path = "/".join(module.split(".")[1:])
    for part in PARTS:
        if path == part or path.startswith(part + "/"):
            return part
    return path.split("/")[0] if "/" in path else ("core" if path == "core" else path)


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


def core_files():
    return sorted((ROOT / "core").rglob("*.py"))


def test_readme_map_lists_every_part_of_core_and_every_module():
    readme = (ROOT / "README.md").read_text()
    for part in PARTS:
        assert f"`{part}/`" in readme, f"README's architecture map does not name {part}/"
    for path in core_files():
        folder = path.parent.relative_to(ROOT).as_posix()
        named = f"`{path.parent.name}/`" if folder not in PARTS + ("core",) else path.name
        if path.stem != "__init__":
            assert named in readme, f"README's architecture map does not mention {path.relative_to(ROOT)}"


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_parts_import_only_what_the_map_allows(path):
    part = part_of(module_name(path))
    if part == "core/cli":
        return  # the command line may use every part and the built-in plugins
    for target in imports(path):
        target_part = part_of(target)
        if target in ("omnivox", "omnivox.core"):
            continue
        assert target_part in ALLOWED[part], f"{module_name(path)} ({part}) imports {target} ({target_part})"


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_core_module_imports_a_plugin_at_import_time(path):
    bad = [m for m in imports(path, top_level_only=True) if m.startswith("omnivox.plugins")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad} at import time"


def test_kernel_never_imports_the_runtime_even_lazily():
    for path in (ROOT / "core" / "kernel").rglob("*.py"):
        assert not [m for m in imports(path) if m.startswith("omnivox.core.runtime")], path


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """Guard against a checker that can never fail: a kernel file importing the runtime is caught."""
    bad = ROOT / "core" / "kernel" / "model.py"
    source = bad.read_text() + "\nfrom omnivox.core.runtime.bus import Bus\n"
    tree_imports = [m for m in ast.walk(ast.parse(source)) if isinstance(m, ast.ImportFrom)]
    assert any(part_of(n.module) not in ALLOWED["core/kernel"] for n in tree_imports if n.module)


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
