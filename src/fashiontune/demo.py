"""`fashiontune demo`: the whole product on a built-in default, on CPU, in minutes.

synthetic Kaggle + DeepFashion-MultiModal corpora (with their real quirks) -> shards -> verify ->
train a tiny CLIP (softmax classification on Kaggle sub-categories; caption contrastive on DeepFashion)
-> full-corpus evaluation of both -> one results table (also written to <out>/results.md) -> a search index of
each catalogue (and of the untrained DeepFashion model, for the app's compare view) -> the `fashiontune serve`
command that opens them in the browser.
Where the real Fashion-MNIST is installed (Debian's dataset-fashion-mnist), a third study trains on real product
photos (the first --fmnist-train images) and is scored on the full official test split: the "Real data" section.

Every stage is the same library call the CLI and the SLURM jobs make; only the configs are tiny.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# (corpus format, train experiment config, its overrides, label fields the evaluation reports).
# Both studies use the tiny ResNet tower: from random init on 2 CPU cores it learns these corpora within the
# demo's budget where the tiny ViT stays near chance (measured: kagl val accuracy 0.97 vs 0.6 at 4 epochs;
# deepfashion val R@1 0.18 vs 0.02 at 20 epochs).
STUDIES = (
    ("kagl", "configs/tiny-kagl-softmax.yaml", ["model.name=ft-tiny-rn"], ["subCategory", "articleType", "baseColour"]),
    ("deepfashion-mm", "configs/tiny-deepfashion-contrastive.yaml", ["model.name=ft-tiny-rn", "loop.epochs=20"],
     ["category", "sleeve_length", "pattern_upper"]),
)
COMPARE_STUDY = "deepfashion-mm"  # the caption-retrieval study: served fine-tuned vs untrained side by side

# Real images, when installed: softmax head on the 10 classes (tests/test_real_fmnist.py measures the same setup).
FMNIST_STUDY = ("fashion-mnist", "configs/tiny-kagl-softmax.yaml",
                ["name=fmnist-softmax", "model.name=ft-tiny-vit", "model.image_size=32", "task.field=label",
                 "loop.epochs=2", "data.batch_size=64"], ["label", "group"])
# The official benchmark's published test accuracies (full 60k train; DATASETS.md), for context.
FMNIST_PUBLISHED = {"MLPClassifier (benchmark)": 0.877, "SVC, best classic model (benchmark)": 0.897}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo", help="output root (corpora, shards, runs, results.md)")
    p.add_argument("--n", type=int, default=600, help="images per synthetic corpus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=0, help="override the experiments' epochs (0 = as configured)")
    p.add_argument("--fmnist-train", type=int, default=6000,
                   help="real Fashion-MNIST train images for the real-data study (0 = skip it; it runs only where "
                        "dataset-fashion-mnist is installed)")


def _stage(name: str) -> float:
    print(f"\n== {name}", flush=True)
    return time.perf_counter()


def _shards(fmt: str, root: Path, n: int, seed: int) -> Path:
    from fashiontune.config import load_config
    from fashiontune.shards.build import build_shards, summary
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.shards.verify import verify
    from fashiontune.synth import generate

    corpus = generate(fmt, root / "corpus" / fmt, n=n, seed=seed, quirk_rate=0.02)
    out = root / "shards" / fmt
    cfg = load_config(ShardBuildConfig, None, [
        f"source={fmt}", f"input={corpus}", f"out={out}", "image_size=64", "shard_size=100",
        "splits=train=0.7,val=0.15,test=0.15", "progress=false",
    ])
    manifest = build_shards(cfg)
    print(summary(manifest))
    report = verify(out)
    if not report.ok:
        raise SystemExit(f"demo: shards in {out} failed verification: {report.problems}")
    print(f"verify: {out} OK")
    return out


def _fmnist_shards(root: Path, n_train: int) -> Path:
    """The first n_train real train images and the whole official test split -> shards."""
    from fashiontune.shards.build import build_shards, summary
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.sources.fashion_mnist import installed_dir, write_subset

    inp = write_subset(installed_dir(), root / "corpus" / "fashion-mnist", n_train)
    out = root / "shards" / "fashion-mnist"
    manifest = build_shards(ShardBuildConfig(source="fashion-mnist", input=str(inp), out=str(out), image_size=28,
                                             shard_size=2000, splits="train=0.9,val=0.1,test=0", progress=False))
    print(summary(manifest))
    return out


def _train(config: str, extra: list[str], shards: Path, root: Path, epochs: int) -> dict:
    from fashiontune.train.config import load_train_config
    from fashiontune.train.loop import run_training

    overrides = [f"data.shards={shards}", f"out_dir={root / 'runs'}", *extra]
    if epochs:
        overrides.append(f"loop.epochs={epochs}")
    cfg = load_train_config(config, overrides)
    return {"run_dir": str(cfg.run_dir), "results": run_training(cfg)}


def _eval(out: Path, shards: Path, fields: list[str], model: list[str]) -> dict:
    from fashiontune.config import load_config
    from fashiontune.eval.config import EvalConfig
    from fashiontune.eval.run import run_eval

    cfg = load_config(EvalConfig, "configs/eval/trained.yaml", [
        f"name={out.parent.name}", f"data.shards={shards}", "data.split=test", "data.num_workers=0",
        f"out_dir={out}", f"data.label_fields=[{','.join(fields)}]", *model,
    ])
    return run_eval(cfg)


def _index(out: Path, shards: Path, model: list[str], results: Path | None = None) -> dict:
    """The whole catalogue (every split) indexed for `fashiontune serve`."""
    from fashiontune.config import load_config
    from fashiontune.index.build import build_index
    from fashiontune.index.config import IndexConfig

    extra = [f"results={results}"] if results is not None else []
    return build_index(load_config(IndexConfig, None, [f"out={out}", f"data.shards={shards}", "data.split=all",
                                                       "data.num_workers=0", *model, *extra]))


def _baseline_rows(fmt: str, trained: dict, before: dict, after: dict, manifest: dict) -> list[str]:
    """Fine-tuned against a baseline on the same full test split: the majority class for the softmax head
    (an untrained head has no meaning), the same architecture at random init for retrieval."""
    rows = []
    for name, rep in (after.get("classification") or {}).items():
        if name.endswith("/classify"):
            field = name.split("/")[0]
            counts = manifest["labels"][field]["split_counts"]["test"]
            majority = max(counts.values()) / max(1, sum(counts.values()))
            rows.append(f"| {fmt} | {field} accuracy (softmax head) | {majority:.3f} (majority class) "
                        f"| **{rep['accuracy']:.3f}** |")
    # retrieval only where the study trained the image-text alignment (a softmax head leaves it untouched)
    retrieval = after.get("retrieval") if trained["results"].get("task") == "contrastive" else {}
    for direction, m in (retrieval or {}).items():
        b = (before.get("retrieval") or {}).get(direction, {})
        for key in ("R@1", "R@10", "mrr"):
            n = m.get("queries", after["items"])  # i2i: the In-shop split's query images
            rows.append(f"| {fmt} | {direction} {key} (N={n}) | {b.get(key, float('nan')):.3f} (random init) "
                        f"| **{m[key]:.3f}** |")
    return rows


def _section(fmt: str, config: str, trained: dict, eval_table: str) -> str:
    r = trained["results"]
    val = {k: v for k, v in (r.get("final") or {}).items() if isinstance(v, (int, float))}
    head = (f"### {fmt}: {Path(config).stem}  (run: {trained['run_dir']})\n"
            f"trained {r.get('step')} steps in {r.get('time_s', 0):.0f} s, skipped non-finite steps: "
            f"{r.get('skipped_steps', 0)}; final validation: "
            + ", ".join(f"{k}={v:.4f}" for k, v in sorted(val.items())))
    return head + "\n\n```\n" + eval_table + "\n```"


def _studies(args: argparse.Namespace) -> list[tuple]:
    from fashiontune.sources.fashion_mnist import installed_dir

    real = args.fmnist_train > 0 and installed_dir() is not None
    if args.fmnist_train > 0 and not real:
        print("demo: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): synthetic corpora only")
    return [*STUDIES, *([FMNIST_STUDY] if real else [])]


def _study(fmt: str, config: str, extra: list[str], fields: list[str], root: Path, args) -> tuple[dict, dict, dict, Path]:
    """shards -> train -> the untrained and the fine-tuned model on the full test split."""
    t = _stage(f"{fmt}: {'real images' if fmt == 'fashion-mnist' else 'synthetic corpus'} -> shards")
    shards = _fmnist_shards(root, args.fmnist_train) if fmt == "fashion-mnist" else _shards(fmt, root, args.n, args.seed)
    print(f"({time.perf_counter() - t:.0f} s)")
    t = _stage(f"{fmt}: train ({config} {' '.join(extra)})")
    trained = _train(config, extra, shards, root, args.epochs)
    print(f"({time.perf_counter() - t:.0f} s)")
    run_dir = Path(trained["run_dir"])
    model = [o for o in extra if o.startswith("model.")]
    _stage(f"{fmt}: BASELINE - the same architecture at random init (untrained), full test split")
    before = _eval(run_dir / "eval-untrained", shards, fields, [*model, "model.pretrained=''", "model.checkpoint=''"])
    t = _stage(f"{fmt}: FINE-TUNED - the trained export ({run_dir / 'export'}), full test split")
    after = _eval(run_dir / "eval-test", shards, fields, [f"model.checkpoint={run_dir / 'export'}"])
    print(f"({time.perf_counter() - t:.0f} s)")
    return trained, before, after, shards


def _real_data(trained: dict, after: dict, manifest: dict) -> str:
    """results.md's "Real data" table: our Fashion-MNIST test accuracy beside the benchmark's published ones."""
    acc = after["classification"]["label/classify"]["accuracy"]
    n = manifest["splits"]["train"]["count"]
    r = trained["results"]
    ours = (f"| fashiontune ft-tiny-vit 32 px, random init, {r.get('step')} steps on {n} train images "
            f"({r.get('time_s', 0):.0f} s on this machine) | **{acc:.3f}** |")
    rows = [ours,
            *(f"| {name}, all 60,000 train images | {v:.3f} |" for name, v in FMNIST_PUBLISHED.items()),
            "| chance (10 balanced classes) | 0.100 |"]
    return ("## Real data: Fashion-MNIST, full official test split (10,000 images)\n\n| model | test accuracy |\n"
            "|---|---|\n" + "\n".join(rows))


def run(args: argparse.Namespace) -> int:
    from fashiontune.eval.report import format_table
    from fashiontune.shards.manifest import load_manifest

    root = Path(args.out)
    t0 = time.perf_counter()
    sections, rows, real, indexes = [], [], [], []
    for fmt, config, extra, fields in _studies(args):
        trained, before, after, shards = _study(fmt, config, extra, fields, root, args)
        manifest = load_manifest(shards)
        rows += _baseline_rows(fmt, trained, before, after, manifest)
        sections.append(_section(fmt, config, trained, format_table(after)))
        if fmt == "fashion-mnist":
            real.append(_real_data(trained, after, manifest))
        t = _stage(f"{fmt}: index the whole catalogue for `fashiontune serve`")
        run_dir = Path(trained["run_dir"])
        indexes.append(root / "index" / fmt)
        _index(indexes[-1], shards, [f"model.checkpoint={run_dir / 'export'}"], run_dir / "eval-test" / "results.json")
        if fmt == COMPARE_STUDY:  # caption retrieval once more at random init: the compare view, before vs after
            model = [o for o in extra if o.startswith("model.")]
            compare = (indexes[-1], root / "index" / f"{fmt}-untrained")
            _index(compare[1], shards, [*model, "model.pretrained=''", "model.checkpoint=''"])
        print(f"({time.perf_counter() - t:.0f} s)")
    summary = "\n".join(["| corpus | metric (full test split) | baseline | fine-tuned |", "|---|---|---|---|", *rows])
    text = "\n\n".join([summary, *real, *sections])
    (root / "results.md").write_text(text + "\n")
    (root / "demo.json").write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1)}) + "\n")
    print("\n" + "\n\n".join([summary, *real]))
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; everything is under {root}/ "
          "(results.md, runs/*/plots, runs/*/eval-*/, index/)")
    print("\nsearch and classify in the browser (then open http://127.0.0.1:8000/):")
    for ix in indexes:
        print(f"  fashiontune serve {ix}")
    print(f"  fashiontune serve {compare[0]} {compare[1]}    # fine-tuned vs untrained, side by side")
    return 0
