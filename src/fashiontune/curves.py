"""Metric-vs-setting reports shared by `wise` (metric vs alpha) and `sweep` (metric vs each swept key):
flatten nested results.json dicts to "a/b/c" keys, write a markdown table and one PNG per metric."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from fashiontune.eval.plots import pyplot, save_png


def flatten(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as {"a/b/c": value}; lists, strings and booleans are left out."""
    out: dict[str, float] = {}
    for k, v in results.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def pick_metrics(rows: Sequence[Mapping[str, float]], patterns: Sequence[str]) -> list[str]:
    """Keys present in any row whose end, from a "/" on, matches one of `patterns` (regexes): "accuracy" picks
    every ".../accuracy", "classify/accuracy" the head's, a whole key itself."""
    keys = sorted({k for r in rows for k in r})
    return [k for k in keys if any(re.search(f"(?:^|/)(?:{p})$", k) for p in patterns)]


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _numeric(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def log_x(xs: Sequence[Any]) -> bool:
    """A log x axis for positive numbers spanning two decades or more (data sizes 100..10,000, learning rates)."""
    vals = [_numeric(x) for x in xs]
    return bool(vals) and all(v is not None and v > 0 for v in vals) and max(vals) >= 100 * min(vals)


def curve_png(series: Mapping[str, Sequence[tuple[Any, float]]], xlabel: str, ylabel: str, path: Path) -> Path:
    """One line per series of (x, y) points; categorical x values (strings) are placed at 0, 1, 2, ...; a log
    x axis when the values span two decades (log_x)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs_all = [x for pts in series.values() for x, _ in pts]
    numeric = all(_numeric(x) is not None for x in xs_all)
    ticks = sorted({str(x) for x in xs_all}) if not numeric else []
    for label, pts in series.items():
        pts = sorted(pts, key=lambda p: _numeric(p[0]) if numeric else ticks.index(str(p[0])))
        xs = [_numeric(x) if numeric else ticks.index(str(x)) for x, _ in pts]
        ax.plot(xs, [y for _, y in pts], "o-", label=label)
    if ticks:
        ax.set_xticks(range(len(ticks)), ticks)
    elif log_x(xs_all):
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{ylabel} vs {xlabel}")
    if len(series) > 1:
        ax.legend(fontsize=7)
    return save_png(fig, path, dpi=80)


def safe_name(key: str) -> str:
    """A metric key as a file name (slashes and @ are kept out of paths)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "metric"


Point = tuple[Mapping[str, Any], Mapping[str, float]]  # (settings, flat metrics) of one run


def metric_curves(points: Sequence[Point], x_keys: Sequence[str], metrics: Sequence[str], out_dir: Path) -> list[Path]:
    """plots/<metric>_vs_<key>.png for each metric and each key in x_keys; one line per combination of the
    other settings (the same line for every point when there are none)."""
    written: list[Path] = []
    for x in x_keys:
        for m in metrics:
            series: dict[str, list[tuple[Any, float]]] = {}
            for settings, values in points:
                if m not in values:
                    continue
                label = ", ".join(f"{k}={v}" for k, v in settings.items() if k != x) or m
                series.setdefault(label, []).append((settings.get(x), values[m]))
            if series:
                path = out_dir / "plots" / f"{safe_name(m)}_vs_{safe_name(x)}.png"
                written.append(curve_png(series, x, m, path))
    return written


def report_table(points: Sequence[Point], metrics: Sequence[str]) -> str:
    """A markdown table: one row per point, its settings then the chosen metrics."""
    keys = list(dict.fromkeys(k for settings, _ in points for k in settings))
    rows = [{**settings, **{m: values.get(m) for m in metrics}} for settings, values in points]
    return markdown_table(rows, [*keys, *metrics])
