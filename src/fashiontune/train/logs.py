"""Run logging on rank 0: metrics.jsonl (one JSON object per log step, appended, so a resumed run continues
the same file), TensorBoard scalars, and a progress bar with samples/s."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()  # a 0-dim tensor (the backend's grad norm): converted here, on log steps only
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN; null reads as "not measured"
    return v


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, progress: bool, total_steps: int,
                 start_step: int):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        self.bar = None
        if not enabled:
            return
        if start_step == 0 and self.path.exists():
            self.path.unlink()  # a fresh run (no checkpoint to resume) starts a fresh log
        elif start_step > 0 and self.path.exists():
            self._truncate_after(start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)
            except ImportError:  # tensorboard is a declared dependency; keep training if it is broken
                self.tb = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: drop their old lines so each step appears once."""
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                pass  # a line cut by a kill
        self.path.write_text("".join(k + "\n" for k in keep))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            kind = record.get("kind", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch") and v is not None:
                    self.tb.add_scalar(f"{kind}/{k}", v, record.get("step", 0))

    def progress(self, steps: int) -> None:
        """Advance the bar; its loss and samples/s are set on log steps only (reading a loss is a host sync)."""
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


class Throughput:
    """Samples/s over the steps since the last `rate()` call."""

    def __init__(self):
        self.t, self.n = time.perf_counter(), 0

    def add(self, samples: int) -> None:
        self.n += samples

    def rate(self) -> float:
        now = time.perf_counter()
        r = self.n / (now - self.t) if now > self.t else 0.0
        self.t, self.n = now, 0
        return r


def read_metrics(path: Path) -> list[dict]:
    out: list[dict] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out

