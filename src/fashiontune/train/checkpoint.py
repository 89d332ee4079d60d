"""Atomic, collective checkpoints in <run>/checkpoints/step_<N>/ and the resume lookup.

Every rank calls `save()` (a DeepSpeed save is collective; accelerate also writes each rank's RNG state).
The state is written into `.tmp-step_<N>/`; once every rank is done, rank 0 writes `trainer_state.json`
and `complete.json` into it and renames it to `step_<N>/`. A directory without `complete.json` is never
resumed from, so a job killed mid-save (SLURM preemption) resumes from the previous complete one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

_STEP_DIR = re.compile(r"^step_(\d+)$")
MARKER = "complete.json"
STATE = "trainer_state.json"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def complete_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    out = []
    for p in ckpt_dir.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / MARKER).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    found = complete_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def read_trainer_state(path: Path) -> dict:
    return json.loads((path / STATE).read_text())


class CheckpointManager:
    def __init__(self, accelerator, ckpt_dir: Path, keep_last: int):
        self.acc, self.dir, self.keep_last = accelerator, Path(ckpt_dir), keep_last

    def save(self, step: int, trainer_state: dict) -> Path:
        acc = self.acc
        final = self.dir / f"step_{step:08d}"
        tmp = self.dir / f".tmp-step_{step:08d}"
        if acc.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left over from a save that was killed
                shutil.rmtree(tmp)
        acc.wait_for_everyone()
        if (final / MARKER).is_file():  # already saved at this step (e.g. final save right after a periodic one)
            acc.wait_for_everyone()
            return final
        acc.save_state(str(tmp), safe_serialization=False)  # task modules may share tensors with the model
        acc.wait_for_everyone()
        if acc.is_main_process:
            _write_json(tmp / STATE, trainer_state)
            _write_json(tmp / MARKER, {"step": step, "time": time.time(), "world_size": acc.num_processes})
            if final.exists():  # an incomplete directory under the final name cannot be trusted
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune()
        acc.wait_for_everyone()
        return final

    def _prune(self) -> None:
        for _, path in complete_checkpoints(self.dir)[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)
        for p in self.dir.glob(".tmp-step_*"):
            shutil.rmtree(p, ignore_errors=True)

    def load_latest(self) -> Optional[dict]:
        """Restore model/optimizer/scheduler/RNG from the newest complete checkpoint; return its trainer
        state (step, epoch, data position, counters), or None when there is none."""
        path = latest_checkpoint(self.dir)
        if path is None:
            return None
        self.acc.load_state(str(path))
        state = read_trainer_state(path)
        state["path"] = str(path)
        return state
