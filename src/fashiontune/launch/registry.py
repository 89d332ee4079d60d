"""The jobs `fashiontune submit` can run: name -> function + config class, imported lazily.

Targets are "module:attribute" strings so that submitting never imports torch on the login node unless
the job's config class lives there, and so that a job whose code is not in this checkout yet fails with a
clear message instead of an ImportError deep in a traceback.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


class JobNotAvailable(RuntimeError):
    pass


@dataclass(frozen=True)
class ArraySpec:
    """A job that runs as N independent single-process tasks when its config asks for N > 1, then one merge
    job over their outputs (on SLURM: a job array plus a dependent job). Submit reads this; it knows no job."""

    size_key: str  # config attribute: number of tasks
    index_key: str  # config attribute set to each task's index
    merge: str  # registered job run once every task succeeded, with the run dir as its argument
    task_label: str = ""  # "module:function"(config, run_dir, index) -> what a task covers, for failure messages
    rerun_hint: str = ""  # said after a failed array: what resubmitting does
    task_gpus: int = 0  # GPUs per array task, when the cluster config has GPUs (sweep points train on one)


@dataclass(frozen=True)
class JobSpec:
    name: str
    target: str  # "module:function", called as function(config)
    config: Optional[str]  # "module:Class" of its config dataclass (None: the argument is a plain path/str)
    run_dir_key: str  # config attribute naming the run/output dir (requeue records go there), or "module:function"
    distributed: bool = True  # False: one process per task whatever the cluster config says
    help: str = ""
    summary: str = ""  # "module:function" turning rank 0's result into a short text for the terminal
    array: Optional[ArraySpec] = None  # set for jobs that may run as an array of tasks plus a merge

    def array_size(self, cfg: Any) -> int:
        """Tasks this config asks for: > 1 means an array (then a merge)."""
        return int(getattr(cfg, self.array.size_key, 1) or 1) if self.array else 1

    def task_label(self, cfg: Any, run_dir: Path, index: int) -> str:
        if not (self.array and self.array.task_label):
            return ""
        try:
            return str(_resolve(self.array.task_label, self.name)(cfg, run_dir, index))
        except Exception:  # a label must never hide the failure it describes
            return ""

    def function(self) -> Callable[[Any], Any]:
        return _resolve(self.target, self.name)

    def summarize(self, result: Any) -> str:
        if self.summary:
            try:
                return str(_resolve(self.summary, self.name)(result))
            except Exception:  # a summary must never hide a successful result
                pass
        text = json.dumps(result, default=str)
        return text if len(text) <= 400 else text[:400] + " ..."

    def config_class(self) -> type:
        if self.config is None:
            raise JobNotAvailable(f"job {self.name!r} takes no config")
        return _resolve(self.config, self.name)

    def run_dir(self, cfg: Any) -> Path:
        if self.config is None:
            value = cfg
        elif ":" in self.run_dir_key:
            value = _resolve(self.run_dir_key, self.name)(cfg)
        else:
            value = getattr(cfg, self.run_dir_key, "")
        if not value:
            raise JobNotAvailable(
                f"job {self.name!r}: its config has an empty {self.run_dir_key!r}; set {self.run_dir_key}=DIR"
            )
        return Path(str(value))


def _resolve(target: str, job: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise JobNotAvailable(f"job {job!r} needs {target}, but {module} cannot be imported: {e}") from e
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise JobNotAvailable(f"job {job!r} needs {target}, which this checkout does not define yet") from None
    return obj


JOBS: dict[str, JobSpec] = {}


def register(spec: JobSpec) -> JobSpec:
    JOBS[spec.name] = spec
    return spec


def get(name: str) -> JobSpec:
    if name not in JOBS:
        raise JobNotAvailable(f"unknown job {name!r}: choose one of {', '.join(sorted(JOBS))}")
    return JOBS[name]


# The product's three jobs, plus `smoke`: a tiny distributed job that checks ranks, rendezvous and
# preemption-requeue on a new cluster in seconds (and is what the launch tests run first).
register(JobSpec("shards", "fashiontune.shards.build:build_shards", "fashiontune.shards.config:ShardBuildConfig",
                 "out", distributed=False, help="build WebDataset shards as a job array, then merge",
                 summary="fashiontune.shards.build:summary",
                 array=ArraySpec("num_jobs", "job_index", "shards-merge", "fashiontune.shards.build:task_range",
                                 "Resubmit the same command to redo only what is missing.")))
register(JobSpec("shards-merge", "fashiontune.shards.build:merge", None, "", distributed=False,
                 help="write manifest.json once every array task is done", summary="fashiontune.shards.build:summary"))
register(JobSpec("train", "fashiontune.train:run_training", "fashiontune.train.config:TrainConfig", "run_dir",
                 help="training run (Accelerate / DeepSpeed), one task per GPU"))
register(JobSpec("eval", "fashiontune.eval.run:run_eval", "fashiontune.eval.config:EvalConfig",
                 "fashiontune.eval.run:out_dir",
                 help="full-corpus evaluation, one task per GPU"))
register(JobSpec("index", "fashiontune.index.build:build_index", "fashiontune.index.config:IndexConfig", "out",
                 help="embed a catalogue into a faiss index (the eval job's embedding pass), one task per GPU",
                 summary="fashiontune.index.build:summary"))
register(JobSpec("smoke", "fashiontune.launch.smoke:run_smoke", "fashiontune.launch.smoke:SmokeConfig", "run_dir",
                 help="tiny all-reduce job with checkpoints: checks ranks, rendezvous and requeue"))
register(JobSpec("sweep", "fashiontune.sweep.run:run_point", "fashiontune.sweep.run:SweepTask",
                 "fashiontune.sweep.run:task_out", distributed=False,
                 help="one training run per grid point as a job array, then collect",
                 array=ArraySpec("points", "index", "sweep-collect", "fashiontune.sweep.run:task_label",
                                 "Resubmit the same command: finished points only rewrite their reports, the others "
                                 "resume from their newest checkpoints.", task_gpus=1)))
register(JobSpec("sweep-collect", "fashiontune.sweep.run:collect", None, "", distributed=False,
                 help="sweep.json, table and curves once every point finished", summary="fashiontune.sweep.run:summary"))
