"""The plan of a sweep, written once to <out>/sweep-plan.json before anything runs, so that every array task
(on any node) and the collect step read the same points.

An experiment file may carry its own grid under a top-level `sweep:` key (configs/sweeps/*.yaml):
    sweep: {grid: {data.max_train_items: [100, 1000, 0]}, metrics: [accuracy, macro_f1]}
That section is split off (the rest, the experiment itself, is saved as <out>/experiment.yaml); --grid on the
command line adds keys or replaces their values.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from fashiontune.config import ConfigError
from fashiontune.files import write_json_atomic, write_text_atomic

PLAN = "sweep-plan.json"


class SweepError(ConfigError):
    """A grid, sweep file or sweep directory a user must fix; the message names it and the fix."""


@dataclass
class SweepPlan:
    out: str  # the sweep directory
    experiment: str  # <out>/experiment.yaml: the experiment without its sweep section
    overrides: list[str]  # command-line overrides of every point
    grid: dict[str, list[Any]]  # key -> values, in the order given
    points: list[dict[str, Any]] = field(default_factory=list)  # {key: value} per point, the grid's product
    metrics: list[str] = field(default_factory=list)  # regexes of the metrics to tabulate and plot

    def point_overrides(self, i: int) -> list[str]:
        """Everything one point's run gets: the common overrides, its grid values, its own name and out_dir."""
        values = [f"{k}={_yaml_value(v)}" for k, v in self.points[i].items()]
        return [*self.overrides, *values, f"name={point_name(i, self.points[i])}", f"out_dir={Path(self.out) / 'runs'}"]

    def run_dir(self, i: int) -> Path:
        return Path(self.out) / "runs" / point_name(i, self.points[i])


def _yaml_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def point_name(i: int, point: dict[str, Any]) -> str:
    slug = "-".join(f"{k.split('.')[-1]}={v}" for k, v in point.items())
    return f"p{i:03d}-" + re.sub(r"[^A-Za-z0-9_.=-]+", "_", slug)[:80]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """--grid key=v1,v2,... -> {key: [v1, v2]} (numbers as numbers, anything else as a YAML scalar)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        if not eq or not key or not values:
            raise SweepError(f"--grid {item!r}: expected key=v1,v2,... (e.g. --grid optim.lr=1e-4,3e-4).")
        grid[key] = [_scalar(v) for v in values.split(",")]
    return grid


def _scalar(text: str) -> Any:
    """A grid value: int, float (1e-3 too, which YAML 1.1 reads as a string), else a YAML scalar."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def split_sweep_section(config: str | Path) -> tuple[dict, dict]:
    """(experiment mapping, its `sweep:` section) of an experiment file."""
    p = Path(config)
    if not p.is_file():
        raise SweepError(f"--config {p}: no such file; pass an experiment YAML (configs/*.yaml or configs/sweeps/*.yaml).")
    doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(doc, dict):
        raise SweepError(f"{p}: the top level must be a mapping (an experiment config).")
    section = doc.pop("sweep", None) or {}
    if not isinstance(section, dict) or set(section) - {"grid", "metrics"}:
        raise SweepError(f"{p}: 'sweep:' takes 'grid' ({{key: [values]}}) and 'metrics' ([regex, ...]).")
    grid = section.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise SweepError(f"{p}: sweep.grid must map each key to a non-empty list of values.")
    return doc, section


def make_plan(config: str | Path, grid_args: Sequence[str], overrides: Sequence[str], out: str | Path,
              metrics: Sequence[str] = ()) -> SweepPlan:
    """Write <out>/experiment.yaml and <out>/sweep-plan.json; every point's config is validated first."""
    experiment, section = split_sweep_section(config)
    grid = {**section.get("grid", {}), **parse_grid(grid_args)}
    if not grid:
        raise SweepError("no grid: pass --grid key=v1,v2 (or give the experiment file a 'sweep: {grid: ...}').")
    out = Path(out).absolute()
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    plan = SweepPlan(str(out), str(out / "experiment.yaml"), list(overrides), grid, points,
                     list(metrics or section.get("metrics") or []))
    from fashiontune.train.config import load_train_config

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "experiment.yaml", yaml.safe_dump(experiment, sort_keys=False))
    for i in range(len(points)):  # a typo in a grid key fails here, before any run starts
        load_train_config(plan.experiment, plan.point_overrides(i))
    write_json_atomic(out / PLAN, asdict(plan))
    return plan


def read_plan(out: str | Path) -> SweepPlan:
    p = Path(out) / PLAN
    if not p.is_file():
        raise SweepError(f"{p}: no sweep plan here; run `fashiontune sweep --config EXP --grid ...` first.")
    return SweepPlan(**json.loads(p.read_text(encoding="utf-8")))
