"""Convert a Mini-Omni-shaped (Qwen2-0.5B, 181,120-row vocab) random upstream checkpoint and report the
converter's peak RSS against the checkpoint size, plus load times of both formats.

    python benchmarks/bench_convert.py [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from omnivox.core import progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from upstream_reference import UPSTREAM_FIELDS, write_upstream_checkpoint  # noqa: E402

# VmHWM (peak RSS of this process image; unlike ru_maxrss it is not inherited from the parent at exec).
CHILD = """
import re, time
from omnivox.core.kernel.checkpoint import {fn}
t = time.perf_counter()
{call}
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print(time.perf_counter() - t, hwm)
"""


def run_child(fn: str, call: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD.format(fn=fn, call=call)], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), int(out[1]) / 1024  # seconds, MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    baseline_rss = run_child("OmniModel", "pass")[1]
    # one step per case (fabricate, convert, two loads), shown only when stderr is a terminal; lines print above
    bar = progress.bar(total=4, desc="bench_convert", unit="case", leave=False)
    with tempfile.TemporaryDirectory() as tmp, bar:
        src, dst = Path(tmp) / "upstream", Path(tmp) / "native"
        t = time.perf_counter()
        write_upstream_checkpoint(src, dict(UPSTREAM_FIELDS), seed=0, dtype=getattr(torch, args.dtype))
        size = (src / "lit_model.pth").stat().st_size / 2**20
        bar.write(f"fabricated {src / 'lit_model.pth'}: {size:.0f} MiB ({args.dtype}) in "
                  f"{time.perf_counter() - t:.1f}s")
        bar.update()
        secs, rss = run_child("convert_upstream", f"convert_upstream({str(src)!r}, {str(dst)!r})")
        bar.write(f"convert: {secs:.1f}s, peak RSS {rss:.0f} MiB = {rss / size:.2f}x checkpoint size "
                  f"(python+torch+transformers alone: {baseline_rss:.0f} MiB)")
        bar.update()
        for name, path in (("upstream", src), ("native", dst)):
            touch_all = f"sum(p.float().sum() for p in OmniModel.from_pretrained({str(path)!r}).lm.parameters())"
            secs, rss = run_child("OmniModel", touch_all)
            bar.write(f"load {name} (+ touching every weight): {secs:.1f}s, peak RSS {rss:.0f} MiB")
            bar.update()

if __name__ == "__main__":
    main()
