"""`omnivox doctor` lists what is installed and what is missing, with the command that fixes each missing thing,
and exits 0 exactly when the core works."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from virtual_audio import VirtualAudio

from omnivox.cli.doctor import Check, combined_fixes


def _doctor(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, "-m", "omnivox.cli.main", "doctor", *args], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, **(env or {})}, timeout=300)


def _line(output: str, name: str) -> str:
    """The report line `  STATUS   NAME: detail` of check `name`."""
    return next(line for line in output.splitlines() if line.split(":")[0].split(None, 1)[1:] == [name])


def test_doctor_lists_installed_and_missing_things_with_fixes(tmp_path):
    checkpoints = tmp_path / "ckpts"
    (checkpoints / "native").mkdir(parents=True)
    (checkpoints / "native" / "model.safetensors").write_bytes(b"")
    (checkpoints / "upstream").mkdir()
    (checkpoints / "upstream" / "lit_model.pth").write_bytes(b"")
    (checkpoints / "upstream" / "small.pt").write_bytes(b"")
    (checkpoints / "empty").mkdir()
    bin_dir = tmp_path / "bin"  # a PATH without espeak-ng, sox and pulseaudio (mosquitto lives in /usr/sbin)
    bin_dir.mkdir()
    with VirtualAudio(tmp_path / "audio") as devices:  # real PortAudio devices: a file microphone and speaker
        run = _doctor(tmp_path, "--checkpoints", str(checkpoints), env={**devices.env, "PATH": str(bin_dir)})
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "the core works" in out
    for package in ("torch", "transformers", "soundfile", "tqdm"):  # the core's requirements, from the metadata
        assert _line(out, package).split()[0] == "ok"
    for extra, package in (("audio", "sounddevice"), ("mqtt", "aiomqtt"), ("vad", "silero-vad"),
                           ("train", "tensorboard"), ("train", "matplotlib")):
        assert f"\nextra {extra}\n" in out and package in out
    assert _line(out, "tiny random model").split()[0] == "ok"
    for tool in ("espeak-ng", "sox", "pulseaudio"):
        assert _line(out, tool).split()[0] == "MISSING"
        assert f"fix: apt-get install -y {tool}" in out
    assert "\n  apt-get install -y espeak-ng sox pulseaudio" in out  # one command for all of them
    assert "mosquitto" in out and "Silero VAD" in out
    assert _line(out, "PortAudio inputs").split()[0] == "ok" and "fakemic" in _line(out, "PortAudio inputs")
    assert _line(out, "PortAudio outputs").split()[0] == "ok" and "fakespk" in _line(out, "PortAudio outputs")
    assert "native: omnivox native, without Whisper small.pt" in out
    assert "upstream: upstream Mini-Omni, with Whisper small.pt" in out
    empty = out.splitlines().index(next(line for line in out.splitlines() if f"{checkpoints}/empty:" in line))
    assert out.splitlines()[empty].split()[0] == "MISSING"
    assert f"omnivox download mini-omni {checkpoints}/empty" in out.splitlines()[empty + 1]


@pytest.mark.slow
def test_doctor_exits_1_when_a_core_package_does_not_import(tmp_path):
    shadow = tmp_path / "shadow"  # modules that fail to import, as they do without their system library
    shadow.mkdir()
    (shadow / "soundfile.py").write_text("raise OSError('sndfile library not found')\n")
    (shadow / "aiomqtt.py").write_text("raise ImportError('broken aiomqtt')\n")
    run = _doctor(tmp_path, env={"PYTHONPATH": str(shadow)})
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    assert "the core does NOT work" in out
    assert "`import soundfile` fails: sndfile library not found" in _line(out, "soundfile")
    assert "fix: apt-get install -y libsndfile1" in out
    assert _line(out, "aiomqtt").split()[0] == "MISSING" and "Traceback" not in run.stderr


def test_fixes_are_merged_into_one_apt_and_one_pip_command():
    missing = [Check("s", "a", False, fix="apt-get install -y sox"),
               Check("s", "b", False, fix='pip install "omnivox[mqtt]"'),
               Check("s", "c", False, fix="apt-get install -y mosquitto"),
               Check("s", "d", False, fix='pip install "omnivox[vad]"'), Check("s", "e", False, fix="hf download x/y"),
               Check("s", "f", False, fix="apt-get install -y sox")]
    assert combined_fixes(missing) == ["apt-get install -y sox mosquitto", 'pip install "omnivox[mqtt,vad]"',
                                       "hf download x/y"]
