"""`fashiontune wise --base EXPORT_OR_TAG --fine-tuned EXPORT --alphas 0,0.25,0.5,0.75,1 [--out DIR]
[--eval CONFIG ...] [--splits val,test] [key=value ...]`

Writes <out>/alpha-<a>/ (an open_clip-loadable export per alpha, heads carried over) and, with --eval,
evaluates each with `fashiontune eval` (every config x split is one curve; key=value overrides apply to every
evaluation), then <out>/wise.json, wise.md and plots/<metric>_vs_alpha.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_METRICS = "accuracy,macro_f1,R@1,R@10"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True,
                        help="the zero-shot side: an export directory, a weights file, or a pretrained tag of the "
                             "fine-tuned model's architecture (e.g. openai)")
    parser.add_argument("--fine-tuned", required=True, help="a training export directory (runs/<name>/export)")
    parser.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="weights of the fine-tuned model, in [0, 1]")
    parser.add_argument("--out", default="", help="output directory (default: <fine-tuned>/../wise)")
    parser.add_argument("--eval", action="append", default=[], metavar="CONFIG",
                        help="evaluate every alpha with this eval config (repeat for a second corpus)")
    parser.add_argument("--splits", default="", help="comma-separated splits to evaluate (default: each config's own)")
    parser.add_argument("--metrics", default=DEFAULT_METRICS,
                        help="regexes of the metrics to tabulate and plot, matched against the end of each flattened "
                             "results.json key (e.g. accuracy, classify/accuracy, t2i/R@1)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="eval config overrides for every evaluation")


def parse_alphas(text: str) -> list[float]:
    from fashiontune.wise import WiseError

    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError as e:
        raise WiseError(f"--alphas={text!r}: not a comma-separated list of numbers; e.g. 0,0.25,0.5,0.75,1.") from e
    if not alphas:
        raise WiseError("--alphas is empty; e.g. 0,0.25,0.5,0.75,1.")
    return alphas


def evaluate(export: Path, config: str, split: str, overrides: list[str]) -> dict:
    """results.json of `fashiontune eval` on one export (written under <export>/eval-<config>-<split>)."""
    from fashiontune.config import load_config
    from fashiontune.eval.config import EvalConfig
    from fashiontune.eval.run import run_eval

    extra = [f"data.split={split}"] if split else []
    cfg = load_config(EvalConfig, config, [*overrides, *extra, f"model.checkpoint={export}"])
    cfg.out_dir = str(export / f"eval-{Path(config).stem}-{cfg.data.split}")
    cfg.validate(config)
    return run_eval(cfg)


def run(args: argparse.Namespace) -> int:
    from fashiontune.curves import flatten, metric_curves, pick_metrics, report_table
    from fashiontune.files import write_json_atomic, write_text_atomic
    from fashiontune.wise import load_base_state, write_blend

    tuned = Path(args.fine_tuned)
    out = Path(args.out) if args.out else tuned.parent / "wise"
    base_state = load_base_state(args.base, tuned)
    exports = {a: write_blend(args.base, base_state, tuned, a, out / f"alpha-{a:g}") for a in parse_alphas(args.alphas)}
    for a, d in exports.items():
        print(f"alpha={a:g}: {d}", flush=True)
    report = {"base": args.base, "fine_tuned": str(tuned), "exports": {f"{a:g}": str(d) for a, d in exports.items()},
              "evals": []}
    splits = [s for s in args.splits.split(",") if s] or [""]
    points = []
    for config in args.eval:
        for split in splits:
            for a, d in exports.items():
                flat = flatten(evaluate(d, config, split, list(args.overrides)))
                label = f"{Path(config).stem}:{split or 'default'}"
                report["evals"].append({"alpha": a, "eval": label, "results": flat})
                points.append(({"eval": label, "alpha": a}, flat))
    if points:
        metrics = pick_metrics([p[1] for p in points], args.metrics.split(","))
        report["plots"] = [str(p) for p in metric_curves(points, ["alpha"], metrics, out)]
        write_text_atomic(out / "wise.md", report_table(points, metrics))
        print((out / "wise.md").read_text(), flush=True)
    write_json_atomic(out / "wise.json", report)
    print(f"wise: {len(exports)} exports in {out}" + (f"; curves in {out / 'plots'}" if points else ""))
    return 0
