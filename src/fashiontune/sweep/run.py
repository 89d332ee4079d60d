"""One sweep point as a job (an array task: `run_point`), and `collect`: the finished runs' results.json into
<out>/sweep.json, sweep.md and plots/<metric>_vs_<key>.png.

A point is an ordinary training run in <out>/runs/<point>: preempted and requeued, it resumes from its newest
checkpoint; run again after it finished, it only rewrites its report. So resubmitting a sweep redoes only
what is missing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashiontune.sweep.plan import SweepError, read_plan

DEFAULT_METRICS = ["accuracy", "macro_f1", "mean_R@1", "mAP", "loss"]


@dataclass
class SweepTask:
    """The config of one array task: which point of which plan."""

    out: str = ""  # the sweep directory (holds sweep-plan.json)
    index: int = 0
    points: int = 1  # the array's size

    def validate(self) -> "SweepTask":
        read_plan(self.out)
        return self


def run_point(task: SweepTask) -> dict[str, Any]:
    from fashiontune.train import load_train_config, run_training

    plan = read_plan(task.out)
    return run_training(load_train_config(plan.experiment, plan.point_overrides(task.index)))


def task_out(task: SweepTask) -> str:
    return task.out


def task_label(task: SweepTask, run_dir: Path, index: int) -> str:
    plan = read_plan(task.out)
    return f"point {index}: {plan.points[index]} (run dir {plan.run_dir(index)})"


def collect(out: str | Path) -> dict[str, Any]:
    """sweep.json (a list of {"overrides", "results"}, one per point, in grid order), sweep.md, curves."""
    from fashiontune.curves import flatten, metric_curves, pick_metrics, report_table
    from fashiontune.files import write_json_atomic, write_text_atomic

    plan = read_plan(out)
    entries, points, missing = [], [], []
    for i, point in enumerate(plan.points):
        path = plan.run_dir(i) / "results.json"
        if not path.is_file():
            missing.append(str(path))
            continue
        results = json.loads(path.read_text(encoding="utf-8"))
        entries.append({"overrides": point, "results": results})
        points.append((point, flatten(results.get("final") or {})))
    if not entries:
        raise SweepError(f"{out}: no point has finished (no {missing[0]}); run the sweep first.")
    metrics = pick_metrics([p[1] for p in points], plan.metrics or DEFAULT_METRICS)
    out = Path(out)
    write_json_atomic(out / "sweep.json", entries)
    table = report_table(points, metrics)
    if missing:
        table += f"\n{len(missing)} point(s) not finished: {', '.join(missing)}\n"
    write_text_atomic(out / "sweep.md", table)
    plots = metric_curves(points, list(plan.grid), metrics, out)
    return {"out": str(out), "points": len(plan.points), "finished": len(entries), "missing": missing,
            "table": table, "plots": [str(p) for p in plots]}


def summary(result: dict[str, Any]) -> str:
    return f"{result['finished']}/{result['points']} points collected in {result['out']}\n{result['table']}"
