"""The distribution maps core/, plugins/, training/ to omnivox.core/.plugins/.training in a real
(non-editable) install, the console script works, and a wheel built from a clean checkout runs the main job
in a fresh virtual environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_non_editable_install_imports_all_subpackages(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(ROOT)],
                   check=True, capture_output=True, text=True)
    code = ("import omnivox, omnivox.core.kernel.model, omnivox.plugins, omnivox.training, omnivox.cli.main;"
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
    for shipped in (ROOT / "models" / "demo").rglob("*"):  # the shipped demo model is package data
        if shipped.is_file():
            relative = shipped.relative_to(ROOT)
            assert (target / "omnivox" / relative).is_file(), f"{relative} missing from the installed package"


@pytest.mark.slow
def test_wheel_from_clean_checkout_runs_chat_in_fresh_venv(tmp_path):
    """git clone of HEAD -> pip wheel -> a venv WITHOUT the system site (so neither the editable install nor
    this repository can be reached) -> `omnivox chat --checkpoint random --text hello --output a.wav` from an
    unrelated folder.
    torch is pinned to the running one (the CPU build the Makefile installs: a local wheel, not CUDA's GBs)."""
    import torch

    times, start = {}, time.perf_counter()

    def step(name, command, **kwargs):
        t = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
        times[name] = time.perf_counter() - t
        assert run.returncode == 0, f"{name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        return run

    checkout, wheels, venv, work = (tmp_path / d for d in ("checkout", "wheels", "venv", "work"))
    work.mkdir()
    step("clone", ["git", "clone", "--quiet", str(ROOT), str(checkout)])
    step("wheel", [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                   str(wheels), str(checkout)])
    wheel = next(wheels.glob("omnivox-*.whl"))
    step("venv", [sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    step("install", [str(python), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check",
                     f"torch=={torch.__version__}", str(wheel)], env=env)
    where = step("import", [str(python), "-c", "import omnivox, sys; print(omnivox.__file__); "
                            "print(any('site-packages' in p and p.startswith(sys.base_prefix) for p in sys.path))"],
                 cwd=work, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(venv) and where[1] == "False"  # the wheel's copy; no system site
    chat = step("chat", [str(venv / "bin" / "omnivox"), "chat", "--checkpoint", "random", "--text", "hello",
                         "--output", "a.wav", "--max-steps", "24"], cwd=work, env=env)
    info = sf.info(work / "a.wav")
    assert info.samplerate == 24000 and info.frames > 0
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", chat.stdout)
    print(f"wheel -> fresh venv -> chat: {time.perf_counter() - start:.0f} s ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + ")")


def test_version_flag_prints_the_version_pyproject_declares():
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    run = subprocess.run(["omnivox", "--version"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"omnivox {declared}"


def test_console_script_lists_commands():
    run = subprocess.run(["omnivox", "--help"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for command in ("chat", "convert", "download", "doctor"):
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
