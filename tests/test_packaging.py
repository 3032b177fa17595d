"""The distribution maps core/, plugins/, training/ to omnivox.core/.plugins/.training in a real
(non-editable) install, and the console script works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_non_editable_install_imports_all_subpackages(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(ROOT)],
                   check=True, capture_output=True, text=True)
    code = ("import omnivox, omnivox.core.kernel.model, omnivox.plugins, omnivox.training, omnivox.core.cli.main;"
            "print(omnivox.__file__)")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()).is_relative_to(target)
    for init in ROOT.glob("**/__init__.py"):  # every source package is in the wheel
        relative = init.relative_to(ROOT)
        if relative.parts[0] in ("core", "plugins", "training") or relative == Path("__init__.py"):
            assert (target / "omnivox" / relative).is_file(), f"{relative} missing from the installed package"
    assert not (target / "core").exists() and not (target / "tests").exists()


def test_console_script_lists_commands():
    run = subprocess.run(["omnivox", "--help"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for command in ("convert", "download"):
        assert command in run.stdout


def test_core_imports_no_plugin_libraries():
    """omnivox.core loads without whisper/snac/sounddevice/aiomqtt (plugins import them when used)."""
    modules = sorted("omnivox." + ".".join(p.relative_to(ROOT).with_suffix("").parts)
                     for p in (ROOT / "core").rglob("*.py") if p.stem != "__init__")
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print([m for m in ('whisper', 'snac', 'sounddevice', 'aiomqtt') if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
