"""Long commands draw a tqdm bar on stderr when it is a terminal, and nothing when it is not (logs, pipes)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest
import torch
from safetensors.torch import load_file
from upstream_reference import tiny_fields, write_upstream_checkpoint

from omnivox.core.kernel.checkpoint import OmniModel


def _omnivox(args: list[str], cwd, tty: bool) -> tuple[int, str]:
    """Run `omnivox ARGS` with stderr on a pseudo-terminal (tty=True) or a pipe; returns (rc, stderr)."""
    command = [sys.executable, "-m", "omnivox.cli.main", *args]
    if not tty:
        run = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
        return run.returncode, run.stderr
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


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipe"])
def test_synth_data_shows_a_bar_only_on_a_terminal(tmp_path, tty):
    rc, err = _omnivox(["synth-data", "data", "--pairs", "2"], tmp_path, tty)
    assert rc == 0, err
    assert (tmp_path / "data" / "manifest.jsonl").is_file()
    assert ("synth-data:" in err and "/2 [" in err and "pair/s" in err) == tty, err  # e.g. "0/2 [00:00<?, ?pair/s]"


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipe"])
def test_convert_shows_bytes_written_only_on_a_terminal(tmp_path, tty):
    write_upstream_checkpoint(tmp_path / "upstream", tiny_fields())
    rc, err = _omnivox(["convert", "mini-omni", "upstream", "native"], tmp_path, tty)
    assert rc == 0, err
    assert ("write model.safetensors" in err and "B/s" in err) == tty, err
    # the streamed writer's file is a valid safetensors file with the upstream model's weights
    native = load_file(str(tmp_path / "native" / "model.safetensors"))
    upstream = OmniModel.from_pretrained(tmp_path / "upstream").lm.state_dict()
    assert native.keys() == upstream.keys() and all(torch.equal(native[k], upstream[k]) for k in native)
