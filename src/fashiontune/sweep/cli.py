"""`fashiontune sweep --config EXP [--grid key=v1,v2,...]... [--cluster CFG] [--out DIR] [key=value ...]`

Every point of the grid (the product of the --grid lists, plus the experiment file's own `sweep: {grid}`)
is one training run in <out>/runs/<point>: with --cluster, one task of a job array per point (each
preemption-safe like any training job) and a collect job after them; without, one after another here.
Then <out>/sweep.json, sweep.md (a table) and plots/<metric>_vs_<key>.png. `key=value` overrides go to every
point; `cluster.key=value` ones to the cluster config. `--collect` only re-collects an existing <out>.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="experiment YAML (configs/*.yaml, configs/sweeps/*.yaml)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a swept config key and its values (repeat for a product grid)")
    parser.add_argument("--cluster", help="run as a job array on this cluster config (configs/cluster/*.yaml)")
    parser.add_argument("--out", default="", help="sweep directory (default runs/sweeps/<experiment name>)")
    parser.add_argument("--metrics", default="", help="comma-separated regexes of the metrics to tabulate and plot")
    parser.add_argument("--collect", action="store_true", help="only collect the finished points of --out")
    parser.add_argument("--no-wait", action="store_true", help="with --cluster: submit, print the job ids, return")
    parser.add_argument("--timeout", type=float, default=None, help="with --cluster: stop waiting after N seconds")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides of every point; cluster.key=value for the cluster config")


def default_out(config: str) -> Path:
    from fashiontune.sweep.plan import split_sweep_section

    experiment, _ = split_sweep_section(config)
    return Path("runs") / "sweeps" / str(experiment.get("name") or Path(config).stem)


def run(args: argparse.Namespace) -> int:
    from fashiontune.launch.cli import split_overrides
    from fashiontune.sweep import SweepTask, collect, make_plan, run_point
    from fashiontune.sweep.run import summary

    job_over, cluster_over = split_overrides(list(args.overrides))
    out = Path(args.out) if args.out else default_out(args.config)
    metrics = [m for m in args.metrics.split(",") if m]
    if not args.collect:
        plan = make_plan(args.config, args.grid, job_over, out, metrics)
        n = len(plan.points)
        print(f"sweep: {n} point(s) over {', '.join(plan.grid)}; runs in {out / 'runs'}", flush=True)
        if args.cluster:
            code = _on_cluster(args, SweepTask(plan.out, 0, n), cluster_over)
            if code is not None:
                return code
        else:
            for i in range(n):
                print(f"sweep: point {i + 1}/{n}: {plan.points[i]}", flush=True)
                run_point(SweepTask(plan.out, i, n))
    print(summary(collect(out)), flush=True)
    return 0


def _on_cluster(args: argparse.Namespace, task, cluster_over: list[str]) -> int | None:
    """Submit the array (and its collect job); None once every point finished, else the exit code."""
    from fashiontune.launch import submit as S
    from fashiontune.launch.cli import wait_reporting
    from fashiontune.launch.cluster import load_cluster

    sub = S.submit("sweep", task, load_cluster(args.cluster, cluster_over))
    print(sub.describe(), flush=True)
    return 0 if args.no_wait else wait_reporting(sub, args.timeout, "sweep")[0]
