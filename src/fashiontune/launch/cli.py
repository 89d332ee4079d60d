"""`fashiontune submit {shards,train,eval,index,smoke} --cluster configs/cluster/<name>.yaml [key=value ...]`.

`key=value` overrides go to the job's config; `cluster.key=value` ones to the cluster config
(e.g. `cluster.nodes=2 cluster.time_min=240`). `--dry-run` prints the sbatch script(s) and submits nothing.
"""

from __future__ import annotations

import argparse
import sys
import time

JOBS = ("shards", "train", "eval", "index", "smoke")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # One sub-parser per job, so that `submit JOB --cluster X key=value` and `submit JOB key=value --cluster X`
    # both parse (argparse cannot interleave two positionals with options).
    sub = parser.add_subparsers(dest="job", metavar="{" + ",".join(JOBS) + "}")
    sub.required = True
    for job in JOBS:
        p = sub.add_parser(job, help=f"run `{job}` on the cluster of --cluster")
        p.add_argument("--cluster", required=True,
                       help="cluster config: configs/cluster/{local,slurm-cpu,a100-1node,a100-4nodes}.yaml")
        p.add_argument("--config", help=f"the {job} job's YAML config")
        p.add_argument("--dry-run", action="store_true", help="print the sbatch script(s); submit nothing")
        p.add_argument("--no-wait", action="store_true", help="print the job ids and log paths, then return")
        p.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="job config overrides; cluster.key=value for the cluster config")


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    cluster = [o[len("cluster."):] for o in overrides if o.startswith("cluster.")]
    job = [o for o in overrides if not o.startswith("cluster.")]
    return job, cluster


def run(args: argparse.Namespace) -> int:
    from fashiontune.launch import submit as sub_mod
    from fashiontune.launch.cluster import load_cluster
    from fashiontune.launch.registry import JobNotAvailable

    job_over, cluster_over = split_overrides(list(args.overrides))
    try:
        cluster = load_cluster(args.cluster, cluster_over)
        cfg = sub_mod.load_job_config(args.job, args.config, job_over)
        if args.dry_run:
            print(sub_mod.dry_run(args.job, cfg, cluster), end="")
            return 0
        t0 = time.monotonic()
        sub = sub_mod.submit(args.job, cfg, cluster)
    except (JobNotAvailable, RuntimeError) as e:
        print(f"fashiontune submit {args.job}: {e}", file=sys.stderr)
        return 2
    print(sub.describe(), flush=True)
    if args.no_wait:
        return 0
    code, results = wait_reporting(sub, args.timeout, f"submit {args.job}")
    if code is not None:
        return code
    from fashiontune.launch.registry import get

    spec = get(args.job)
    last = spec.array.merge if sub.is_array else args.job
    print(f"done in {time.monotonic() - t0:.1f} s; run dir {sub.run_dir}")
    print(get(last).summarize(sub_mod.main_result(results)))
    return 0


def wait_reporting(sub, timeout_s: float | None, command: str) -> tuple[int | None, list]:
    """Wait for a submission, with a progress note on stderr: (None, results), or the exit code (1: a job
    failed, 3: timed out) after printing why as `fashiontune <command>: ...`."""
    from fashiontune.launch import submit as sub_mod

    try:
        return None, sub_mod.wait(sub, timeout_s=timeout_s,
                                  on_progress=lambda s: print(f"  waiting: {s}", file=sys.stderr, flush=True))
    except sub_mod.JobFailed as e:
        print(f"fashiontune {command}: {e}", file=sys.stderr)
        return 1, []
    except TimeoutError as e:
        print(f"fashiontune {command}: {e}", file=sys.stderr)
        return 3, []
