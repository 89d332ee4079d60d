"""`fashiontune submit smoke`: a tiny distributed job for checking a cluster before a real run.

Every step all-reduces (rank + 1) * step over gloo (or nccl), adds the sum to an accumulator and, every
`checkpoint_every` steps, rank 0 saves {step, acc} after a barrier. A requeued job resumes from that file, so
its final `acc` equals an uninterrupted run's: exactly what preemption must preserve. `fail_at_step` makes
one rank raise, to see how a remote failure reaches the user. `hold_at` + `hold_file` make every rank wait
before that step until the file exists: a test keeps the job at a known point until it lets it go.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from fashiontune.files import write_json_atomic
from fashiontune.launch import env as dist_env


@dataclass
class SmokeConfig:
    run_dir: str = "runs/smoke"
    steps: int = 20
    step_s: float = 0.2  # sleep per step, so that a test can preempt mid-way
    checkpoint_every: int = 1
    fail_at_step: int = -1  # >= 0: rank `fail_rank` raises at this step
    fail_rank: int = 0
    backend: str = "gloo"
    timeout_s: int = 120  # collective timeout: a dead peer ends the job instead of hanging it
    hold_at: int = -1  # >= 0: before this step (its checkpoint written), wait until `hold_file` exists
    hold_file: str = ""


def expected_acc(steps: int, world_size: int) -> float:
    return world_size * (world_size + 1) / 2 * steps * (steps + 1) / 2


def run_smoke(cfg: SmokeConfig) -> dict:
    import torch
    import torch.distributed as td

    dist = dist_env.setup()
    run = Path(cfg.run_dir)
    ckpt = run / "checkpoints" / "smoke.json"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if dist.world_size > 1:
        td.init_process_group(cfg.backend, init_method="env://", rank=dist.rank, world_size=dist.world_size,
                              timeout=timedelta(seconds=cfg.timeout_s))
    state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "acc": 0.0}
    start, acc = int(state["step"]), float(state["acc"])
    if dist.is_main:
        with open(run / "starts.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), "job_id": os.environ.get("SLURM_JOB_ID", ""),
                                "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0),
                                "resumed_from": start, "world_size": dist.world_size,
                                "master": f"{dist.master_addr}:{dist.master_port}"}) + "\n")
    print(f"smoke: {dist.describe()} host={socket.gethostname()} resuming at step {start}", flush=True)
    for step in range(start, cfg.steps):
        while step == cfg.hold_at and not Path(cfg.hold_file).exists():
            time.sleep(0.05)
        if step == cfg.fail_at_step and dist.rank == cfg.fail_rank:
            raise RuntimeError(f"smoke job: rank {dist.rank} fails on purpose at step {step} (fail_at_step)")
        t = torch.tensor([float((dist.rank + 1) * (step + 1))])
        if dist.world_size > 1:
            td.all_reduce(t)
        acc += t.item()
        time.sleep(cfg.step_s)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            if dist.world_size > 1:
                td.barrier()  # every rank finished the step before it counts as saved
            if dist.is_main:
                write_json_atomic(ckpt, {"step": step + 1, "acc": acc}, indent=1)
    result = {"steps": cfg.steps, "acc": acc, "expected_acc": expected_acc(cfg.steps, dist.world_size),
              "world_size": dist.world_size, "resumed_from": start, "rank": dist.rank}
    if dist.world_size > 1:
        td.barrier()
        td.destroy_process_group()
    if dist.is_main:
        write_json_atomic(run / "results.json", result, indent=1)
    return result
