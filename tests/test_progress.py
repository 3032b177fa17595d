"""Long commands draw a tqdm bar on stderr when it is a terminal, and nothing when it is not (logs, pipes); every
bar goes through one helper, omnivox.core.progress."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from upstream_reference import tiny_fields, write_upstream_checkpoint

from omnivox.core import progress
from omnivox.core.kernel.checkpoint import OmniModel

ROOT = Path(__file__).resolve().parents[1]


def _omnivox(args: list[str], cwd, tty: bool) -> tuple[int, str]:
    """Run `omnivox ARGS` with stderr on a pseudo-terminal (tty=True) or in a log file; returns (rc, stderr)."""
    command = [sys.executable, "-m", "omnivox.cli.main", *args]
    if not tty:
        log = Path(cwd) / "stderr.log"
        with log.open("w") as f:
            rc = subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=f, timeout=300).returncode
        return rc, log.read_text(errors="replace")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "log-file"])
def test_synth_data_shows_a_bar_only_on_a_terminal(tmp_path, tty):
    rc, err = _omnivox(["synth-data", "data", "--pairs", "2"], tmp_path, tty)
    assert rc == 0, err
    assert (tmp_path / "data" / "manifest.jsonl").is_file()
    assert ("synth-data:" in err and "/2 [" in err and "pair/s" in err) == tty, err  # e.g. "0/2 [00:00<?, ?pair/s]"


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "log-file"])
def test_convert_shows_bytes_written_only_on_a_terminal(tmp_path, tty):
    write_upstream_checkpoint(tmp_path / "upstream", tiny_fields())
    rc, err = _omnivox(["convert", "mini-omni", "upstream", "native"], tmp_path, tty)
    assert rc == 0, err
    assert ("write model.safetensors" in err and "B/s" in err) == tty, err
    # the streamed writer's file is a valid safetensors file with the upstream model's weights
    native = load_file(str(tmp_path / "native" / "model.safetensors"))
    upstream = OmniModel.from_pretrained(tmp_path / "upstream").lm.state_dict()
    assert native.keys() == upstream.keys() and all(torch.equal(native[k], upstream[k]) for k in native)


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "log-file"])
def test_corpus_build_draws_its_bar_only_on_a_terminal(tmp_path, tty):
    """`synth-data --corpus` (training/corpus.py, and demo_domain's build through the same renderer): no
    carriage-return bar in a log file."""
    rc, err = _omnivox(["synth-data", "corpus", "--corpus", "--set", "sentences=3", "--set", "qa_pairs=1",
                        "--set", "variants=1"], tmp_path, tty)
    assert rc == 0, err
    assert (tmp_path / "corpus" / "corpus.json").is_file()
    assert ("corpus:" in err and "utt/s" in err) == tty, err
    assert ("\r" in err) == tty, repr(err)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stderr, enabled, drawn", [(_Terminal, True, True), (_Terminal, False, False),
                                                    (io.StringIO, True, False)],
                         ids=["terminal", "terminal-disabled", "not-a-terminal"])
def test_the_helper_draws_only_on_an_enabled_terminal(monkeypatch, stderr, enabled, drawn):
    monkeypatch.setattr(sys, "stderr", stderr())
    assert list(progress.bar(range(3), desc="work", unit="job", enabled=enabled)) == [0, 1, 2]
    assert ("work:" in sys.stderr.getvalue() and "3/3" in sys.stderr.getvalue()) == drawn


def test_every_bar_goes_through_the_helper():
    """No module of the package or the benchmarks uses tqdm itself (only core/progress.py does)."""
    files = [p for p in ROOT.rglob("*.py")
             if not any(part.startswith(".") or part in ("tests", "build") for part in p.relative_to(ROOT).parts)]
    users = sorted(str(p.relative_to(ROOT)) for p in files
                   if re.search(r"^\s*(from tqdm|import tqdm)", p.read_text(encoding="utf-8"), re.M))
    assert users == ["core/progress.py"], users
