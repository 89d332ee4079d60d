"""Atomic, collective checkpoints in <run>/checkpoints/step_<N>/ and the resume lookup.

Every rank calls `save()` (a DeepSpeed save is collective; every rank writes its own RNG state).
The state is written into `.tmp-step_<N>/`; once every rank is done, rank 0 writes `trainer_state.json`
and `complete.json` into it and renames it to `step_<N>/`. A directory without `complete.json` is never
resumed from, so a job killed mid-save (SLURM preemption) resumes from the previous complete one.

No file of a checkpoint runs code when it is loaded. We write the state ourselves, as tensors and JSON:
    model.pt, optimizer.pt [, scaler.pt]   state dicts (rank 0; DDP keeps them equal on every rank)
    pytorch_model/                         DeepSpeed's own files instead of those, under DeepSpeed
    rng_state_<rank>.pt                    python / numpy / torch (/ cuda) RNG states as ints and tensors
    trainer_state.json                     the TrainState (train/state.py) and the lr schedule
and read every .pt with torch's weights-only unpickler (models.load_tensors). DeepSpeed reads its files
itself with the full unpickler, so each is first checked with the weights-only one plus an allowlist of
the few DeepSpeed classes they hold. A refused, corrupt or missing file stops the resume with a
CheckpointError (a ModelLoadError) naming the file and the way out; nothing is silently skipped.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from accelerate.utils import DistributedType

from fashiontune.files import write_json_atomic
from fashiontune.models import ModelLoadError, load_tensors
from fashiontune.train.testing import fault_point

_STEP_DIR = re.compile(r"^step_(\d+)$")
MARKER = "complete.json"
STATE = "trainer_state.json"
DS_TAG = "pytorch_model"  # DeepSpeed's sub-directory


class CheckpointError(ModelLoadError):
    """A checkpoint cannot be resumed from (refused, corrupt or missing file); the message names it."""


def way_out(path: Path) -> str:
    step_dir = next((p for p in (path, *path.parents) if _STEP_DIR.match(p.name)), path)
    return (f"Checkpoints must come from a run you trust. Delete {step_dir} to resume "
            "from the previous complete checkpoint, or set checkpoint.resume=false to start the run over.")


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
    try:
        state = json.loads((path / STATE).read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("not an object with an integer 'step'")
        return state
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path / STATE}: unreadable trainer state ({e}). {way_out(path / STATE)}") from e


# -- RNG state as plain ints and tensors ---------------------------------------------------------------
def rng_state() -> dict:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": [version, list(mt), gauss], "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict, path: Path) -> None:
    try:
        version, mt, gauss = state["python"]
        random.setstate((version, tuple(mt), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: corrupt RNG state ({type(e).__name__}: {e}); the run would not continue "
                              f"as it started. {way_out(path)}") from e


def _deepspeed_allowlist() -> list:
    """The classes DeepSpeed pickles into its ZeRO optimizer files (checked, ZeRO-2 and ZeRO-3)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [fragment_address, ZeroStageEnum, LossScaler, DynamicLossScaler]


class CheckpointManager:
    """Saves and restores `model` (the prepared module or DeepSpeed engine), `optimizer`, `scheduler`."""

    def __init__(self, accelerator, ckpt_dir: Path, keep_last: int, model=None, optimizer=None, scheduler=None):
        self.acc, self.dir, self.keep_last = accelerator, Path(ckpt_dir), keep_last
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.saved_step: Optional[int] = None  # the step this run last saved or resumed from (same on all ranks)

    @property
    def _deepspeed(self) -> bool:
        return self.acc.distributed_type == DistributedType.DEEPSPEED

    def save(self, step: int, trainer_state: dict) -> Path:
        acc = self.acc
        final = self.dir / f"step_{step:08d}"
        tmp = self.dir / f".tmp-step_{step:08d}"
        # Already saved at this step (the final save right after a periodic one, a finished run started again):
        # decided from what every rank knows alike, never from the file system, where ranks of a shared
        # directory may see the marker at different times and only some would enter the collective save.
        # A step_<N> left by an earlier run with checkpoint.resume=false is written anew.
        if step == self.saved_step:
            return final
        if acc.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left over from a save that was killed
                shutil.rmtree(tmp)
        acc.wait_for_everyone()
        self._write_state(tmp)
        acc.wait_for_everyone()
        if acc.is_main_process:
            fault_point("save", step)  # test hook: a kill mid-save leaves only .tmp-step_<N>/
            write_json_atomic(tmp / STATE, {**trainer_state, "scheduler": self.scheduler.state_dict()})
            write_json_atomic(tmp / MARKER, {"step": step, "time": time.time(), "world_size": acc.num_processes})
            if final.exists():  # an incomplete directory under the final name cannot be trusted
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._prune()
        acc.wait_for_everyone()
        self.saved_step = step
        fault_point("saved", step)
        return final

    def _write_state(self, tmp: Path) -> None:
        acc = self.acc
        if acc.is_main_process:
            tmp.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        if self._deepspeed:  # collective; writes partitioned optimizer (and ZeRO-3 parameter) files
            self.model.save_checkpoint(str(tmp), tag=DS_TAG, client_state={}, save_latest=False)
        elif acc.is_main_process:
            # Task modules may share tensors with the model: torch.save keeps shared storage (safetensors won't).
            torch.save(acc.unwrap_model(self.model).state_dict(), tmp / "model.pt")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            if acc.scaler is not None:
                torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
        torch.save(rng_state(), tmp / f"rng_state_{acc.process_index}.pt")

    def _prune(self) -> None:
        for _, path in complete_checkpoints(self.dir)[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)
        for p in self.dir.glob(".tmp-step_*"):
            shutil.rmtree(p, ignore_errors=True)

    def load_latest(self) -> Optional[dict]:
        """Restore model/optimizer/scheduler/RNG from the newest complete checkpoint; return its trainer
        state (step, epoch, data position, counters), or None when there is none."""
        path = self._rank0(latest_checkpoint(self.dir))
        if path is None:
            return None
        state = read_trainer_state(path)
        if self._deepspeed:
            self._load_deepspeed(path)
        else:
            self._load_files(path)
        try:
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path / STATE}: no valid 'scheduler' state ({e}). {way_out(path / STATE)}") from e
        rng = path / f"rng_state_{self.acc.process_index}.pt"
        set_rng_state(self._load(rng), rng)  # last: loading must not move the restored RNG
        self.saved_step = state["step"]
        state["path"] = str(path)
        return state

    def _rank0(self, found: Optional[Path]) -> Optional[Path]:
        """Rank 0's answer on every rank: which checkpoint to resume is one decision, not one per rank's view of
        a shared file system (a rank that lists it differently would resume elsewhere, or hang a collective)."""
        if self.acc.num_processes == 1:
            return found
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([found])[0]

    def _load(self, path: Path, **kw) -> Any:
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from a complete checkpoint. {way_out(path)}")
        return load_tensors(path, hint=way_out(path), **kw)

    def _load_files(self, path: Path) -> None:
        acc = self.acc
        try:
            acc.unwrap_model(self.model).load_state_dict(self._load(path / "model.pt"))
            self.optimizer.load_state_dict(self._load(path / "optimizer.pt"))
            if acc.scaler is not None:
                acc.scaler.load_state_dict(self._load(path / "scaler.pt"))
        except ModelLoadError:
            raise
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: state does not fit this model/optimizer ({str(e).splitlines()[0][:300]}). "
                                  f"{way_out(path)}") from e

    def _load_deepspeed(self, path: Path) -> None:
        allow = _deepspeed_allowlist()
        for f in sorted((path / DS_TAG).glob("*.pt")):  # DeepSpeed unpickles them fully: check each first
            self._load(f, allow=allow, mmap=True)
        loaded, _ = self.model.load_checkpoint(str(path), tag=DS_TAG)
        if loaded is None:
            raise CheckpointError(f"{path / DS_TAG}: DeepSpeed found no checkpoint to load. {way_out(path)}")
