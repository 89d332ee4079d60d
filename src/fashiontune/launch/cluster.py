"""`ClusterConfig`: where and with what resources a job runs (configs/cluster/*.yaml).

One task per GPU: `tasks_per_node` must equal `gpus_per_node` on GPU configs, because every rank drives one
device (`LOCAL_RANK` picks it). `executor: local` runs the same job through submitit's local executor
(one node, subprocesses) so that a laptop exercises the exact code path of the cluster.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from fashiontune.config import ConfigError, load_config


class ExecutorKind(str, enum.Enum):
    local = "local"
    slurm = "slurm"


@dataclass
class ClusterConfig:
    executor: ExecutorKind = ExecutorKind.slurm
    partition: str = ""  # "" = the cluster's default partition
    account: str = ""
    qos: str = ""
    constraint: str = ""  # site-specific node feature, e.g. "a100" (sbatch --constraint; `sinfo -o "%N %f"`)
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1  # one per GPU on GPU configs
    cpus_per_task: int = 1  # per task (srun gets it too): data-loader workers + the rank's own threads
    mem_gb: float = 0.0  # per node; 0 = do not ask (cluster default), or with exclusive: --mem=0 (all of it)
    omp_threads: int = 0  # OMP_NUM_THREADS per rank; 0 = cpus_per_task minus loader workers (launch.threads)
    time_min: int = 60
    signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint + requeue
    max_requeues: int = 3  # preemptions + time-outs a run may survive (counted in <run_dir>/launch/)
    exclusive: bool = False
    sbatch_extra: list[str] = field(default_factory=list)  # extra sbatch flags, e.g. "--mail-type=END"
    setup: list[str] = field(default_factory=list)  # shell lines before the job: module load, conda activate
    log_dir: str = "runs/_submitit"  # submitit's folder: pickles + per-task logs, <log_dir>/<job id>/
    job_name: str = ""  # "" = fashiontune-<job>
    python: str = ""  # command that runs python on the nodes; "" = this interpreter
    array_parallelism: int = 64  # shard array tasks running at once
    slurm_conf: str = ""  # SLURM config of the cluster to submit to (exported as SLURM_CONF); "" = the default

    @property
    def num_tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    def validate(self, source: str = "cluster config") -> None:
        """Raise ConfigError naming the file, the key, the bad value and the fix."""

        def bad(key: str, want: str) -> ConfigError:
            return ConfigError(f"{source}: {key}={getattr(self, key)!r} is invalid: {want}.")

        for key in ("nodes", "tasks_per_node", "cpus_per_task", "time_min"):
            if getattr(self, key) < 1:
                raise bad(key, "set an integer >= 1")
        for key in ("gpus_per_node", "max_requeues", "signal_delay_s", "array_parallelism", "omp_threads"):
            if getattr(self, key) < 0:
                raise bad(key, "set an integer >= 0")
        if self.mem_gb < 0:
            raise bad("mem_gb", "set GB per node >= 0 (0 = cluster default)")
        if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ConfigError(
                f"{source}: tasks_per_node={self.tasks_per_node} but gpus_per_node={self.gpus_per_node}: "
                f"run one task per GPU (set tasks_per_node: {self.gpus_per_node})."
            )
        if self.signal_delay_s >= self.time_min * 60:
            raise ConfigError(
                f"{source}: signal_delay_s={self.signal_delay_s} is not shorter than time_min={self.time_min} "
                "minutes: the job would be signalled before it starts; lower signal_delay_s or raise time_min."
            )
        if self.executor == ExecutorKind.local and self.nodes != 1:
            raise ConfigError(
                f"{source}: nodes={self.nodes} with executor=local: the local executor runs on this machine "
                "only; set nodes: 1 or executor: slurm."
            )
        for line in self.sbatch_extra:
            parse_sbatch_flag(line, source)
        if not self.log_dir:
            raise bad("log_dir", "set a folder shared by all nodes (e.g. runs/_submitit)")

    def sbatch_additional(self, source: str = "cluster config") -> dict[str, object]:
        """`sbatch_extra` lines as submitit's `additional_parameters` ({flag: value or True})."""
        return dict(parse_sbatch_flag(line, source) for line in self.sbatch_extra)


_FLAG = re.compile(r"^(?:#SBATCH\s+)?--([A-Za-z][A-Za-z0-9_-]*)(?:[= ](.*))?$")


def parse_sbatch_flag(line: str, source: str = "cluster config") -> tuple[str, object]:
    """'--mail-type=END' / '#SBATCH --reservation=x' / '--requeue' -> ('mail_type', 'END') ..."""
    m = _FLAG.match(line.strip())
    if not m:
        raise ConfigError(
            f"{source}: sbatch_extra line {line!r} is not an sbatch long flag: write it as "
            "'--name=value' or '--name' (e.g. '--mail-type=END', '--reservation=demo')."
        )
    name, value = m.group(1).replace("-", "_"), m.group(2)
    return name, (True if value is None else value.strip())


def load_cluster(path: str | Path | None, overrides: Sequence[str] = ()) -> ClusterConfig:
    """configs/cluster/<name>.yaml (+ key=value overrides) -> a validated ClusterConfig.

    A bare name (`slurm-cpu`) is looked up in configs/cluster/ of this checkout.
    """
    resolved: Optional[Path] = None
    if path is not None:
        p = Path(path)
        if not p.exists() and not p.suffix and "/" not in str(path):
            p = _configs_dir() / f"{path}.yaml"
        if not p.is_file():
            have = ", ".join(sorted(x.stem for x in _configs_dir().glob("*.yaml"))) or "none found"
            raise ConfigError(
                f"cluster config {path} does not exist: pass --cluster configs/cluster/<name>.yaml "
                f"(ready ones: {have})."
            )
        resolved = p
    cfg = load_config(ClusterConfig, resolved, overrides)
    cfg.validate(str(resolved) if resolved else "cluster config")
    return cfg


def _configs_dir() -> Path:
    # src/fashiontune/launch/cluster.py -> repo root / configs / cluster
    return Path(__file__).resolve().parents[3] / "configs" / "cluster"
