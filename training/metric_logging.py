"""Training metrics: metrics.csv (training steps), eval.csv (evaluations), TensorBoard (when installed) and the
loss-curve PNG (when matplotlib is installed). A metric whose value is None is absent (a loss term the stage has no
targets for): `-` in the CSV files, not written to TensorBoard, a gap in the PNG."""

from __future__ import annotations

import csv as csvfile  # `csv` is a MetricsLogger parameter
from pathlib import Path

ABSENT = "-"  # a CSV cell of an absent metric


class CsvLog:
    """One CSV file of rows keyed by `step`. Opening it to resume at step k drops the rows after k."""

    def __init__(self, path: Path, resume_step: int, write: bool):
        self.path, self.write = path, write
        self.rows: list[dict[str, float | None]] = []
        if write and path.is_file():
            with path.open(newline="") as f:
                self.rows = [{k: None if v == ABSENT else float(v) for k, v in r.items()} for r in csvfile.DictReader(f)
                             if float(r["step"]) <= resume_step]
            self._rewrite()

    def append(self, row: dict[str, float | None]) -> None:
        self.rows.append(row)
        if not self.write:
            return
        new = not self.path.is_file()
        with self.path.open("a", newline="") as f:
            writer = csvfile.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(_cells(row))

    def _rewrite(self) -> None:
        if not self.rows:
            self.path.unlink(missing_ok=True)
            return
        with self.path.open("w", newline="") as f:
            writer = csvfile.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(_cells(row) for row in self.rows)


def _cells(row: dict[str, float | None]) -> dict[str, float | str]:
    return {k: ABSENT if v is None else v for k, v in row.items()}


class MetricsLogger:
    """Training metrics to metrics.csv, evaluations to eval.csv, both to TensorBoard (when installed, under
    train/ and eval/), and a loss-curve PNG (when matplotlib is installed) at the end. Only rank 0 logs
    (`enabled`). Resuming at step k drops the rows after k."""

    def __init__(self, output_dir: str | Path, resume_step: int = 0, enabled: bool = True, csv: bool = True,
                 tensorboard: bool = True, plot: bool = True):
        self.dir = Path(output_dir)
        self.enabled, self.plot = enabled, plot
        self.writer = None
        if not enabled:
            return
        self.train = CsvLog(self.dir / "metrics.csv", resume_step, csv)
        self.eval = CsvLog(self.dir / "eval.csv", resume_step, csv)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                print("note: tensorboard is not installed; metrics go to metrics.csv only "
                      "(pip install 'omnivox[train]')", flush=True)

    def log(self, step: int, metrics: dict[str, float | None], split: str = "train") -> None:
        """Record `metrics` at `step` (None: absent); split "train" -> metrics.csv, "eval" -> eval.csv."""
        if not self.enabled:
            return
        (self.train if split == "train" else self.eval).append({"step": float(step), **metrics})
        if self.writer is not None:
            for key, value in metrics.items():
                if value is not None:
                    self.writer.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> Path | None:
        """Flush TensorBoard and draw loss.png; returns the PNG path (None without matplotlib or data)."""
        if not self.enabled:
            return None
        if self.writer is not None:
            self.writer.close()
        rows = self.train.rows
        if not (self.plot and rows):
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("note: matplotlib is not installed; no loss.png (pip install 'omnivox[train]')", flush=True)
            return None
        steps = [r["step"] for r in rows]
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in [k for k in rows[0] if k == "loss" or k == "text" or k.startswith("audio_")]:
            values = [float("nan") if r.get(key) is None else r[key] for r in rows]  # nan: a gap in the line
            ax.plot(steps, values, label=key, linewidth=2 if key == "loss" else 0.8)
        if self.eval.rows:
            ax.plot([r["step"] for r in self.eval.rows], [r["loss"] for r in self.eval.rows], "ko", label="eval loss")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        path = self.dir / "loss.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
