"""The distribution maps core/, plugins/, training/ to omnivox.core/.plugins/.training in a real
(non-editable) install, the console script works, and a wheel built from a clean checkout, installed with no
extras in a fresh virtual environment, runs the main job: the default model answers a spoken question."""

from __future__ import annotations

import os
import re
import shutil
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


def _clean_copy(destination: Path) -> Path:
    """The files a commit of the working tree would hold (tracked, plus untracked ones git does not ignore), copied
    to `destination`: no build/, *.egg-info, runs/ or caches. On a clean clone (CI) that is HEAD exactly; in a
    working tree it tests the change before it is committed."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if not os.path.lexists(source):  # deleted in the working tree, not yet in the index
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return destination


@pytest.mark.slow
def test_wheel_from_clean_checkout_runs_chat_in_fresh_venv(tmp_path):
    """A clean copy of the checkout -> pip wheel -> `pip install WHEEL` with NO extras into a venv WITHOUT the
    system site (so neither the editable install nor this repository can be reached) -> from an unrelated folder:
    `omnivox chat --checkpoint random --text hello --output a.wav` (the tiny random model), and the main job,
    a SPOKEN question from a WAV file answered by the DEFAULT model (no --checkpoint: the shipped `demo`, whose
    encoder and codec are core dependencies) in text and speech.
    torch is pinned to the running one (the CPU build the Makefile installs: a local wheel, not CUDA's GBs)."""
    import torch

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng speaks the question: apt-get install -y espeak-ng")
    times, start = {}, time.perf_counter()

    def step(name, command, **kwargs):
        t = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)
        times[name] = time.perf_counter() - t
        assert run.returncode == 0, f"{name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        return run

    checkout, wheels, venv, work = (tmp_path / d for d in ("checkout", "wheels", "venv", "work"))
    work.mkdir()
    t = time.perf_counter()
    _clean_copy(checkout)
    times["copy"] = time.perf_counter() - t
    step("wheel", [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                   str(wheels), str(checkout)])
    wheel = next(wheels.glob("omnivox-*.whl"))
    step("venv", [sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    step("install", [str(python), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check",
                     f"torch=={torch.__version__}", str(wheel)], env=env)  # the wheel alone: no [extras]
    where = step("import", [str(python), "-c", "import omnivox, sys; print(omnivox.__file__); "
                            "print(any('site-packages' in p and p.startswith(sys.base_prefix) for p in sys.path))"],
                 cwd=work, env=env).stdout.split()
    assert Path(where[0]).is_relative_to(venv) and where[1] == "False"  # the wheel's copy; no system site
    omnivox = str(venv / "bin" / "omnivox")
    chat = step("chat random", [omnivox, "chat", "--checkpoint", "random", "--text", "hello", "--output", "a.wav",
                                "--max-steps", "24"], cwd=work, env=env)
    info = sf.info(work / "a.wav")
    assert info.samplerate == 24000 and info.frames > 0
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", chat.stdout)

    # the default model answers a spoken question: what `make demo` runs, from the wheel alone
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(work / "question.wav"),
                    "What is the capital of France?"], check=True)
    chat = step("chat demo", [omnivox, "chat", "--input", "question.wav", "--output", "answer.wav",
                              "--text-out", "answer.txt"], cwd=work, env=env)
    assert "shipped demo model" in chat.stderr  # no --checkpoint: the default model, not the random one
    text = (work / "answer.txt").read_text(encoding="utf-8").strip()
    assert text and text in chat.stdout  # printed live and written
    assert "paris" in text.lower(), text  # the demo knows its capitals (98.8% right in text on held-out speech)
    audio, rate = sf.read(work / "answer.wav", dtype="float32")
    assert len(audio) > 0.5 * rate, f"{len(audio) / rate:.2f} s of audio"  # a spoken sentence, not a click
    assert float((audio ** 2).mean()) ** 0.5 > 1e-3  # not silence
    print(f"wheel -> fresh venv -> chat: {time.perf_counter() - start:.0f} s ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"); the demo answered {text!r}")


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
