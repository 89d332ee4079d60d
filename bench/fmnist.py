"""Real images: Fashion-MNIST test accuracy of a tiny model from random init (`fashiontune train` + `fashiontune
eval` on the full official test split) against an MLP on raw pixels (scikit-learn's MLPClassifier, the
benchmark's own MLP family) trained on the same images in the same run, and the official benchmark's
published numbers for context.

    python bench/fmnist.py [--train 60000] [--epochs 1] [--model ft-tiny-vit] [--image-size 32] [--batch 128]
                           [--input /usr/share/datasets/fashion-mnist] [--out /tmp/ft-fmnist]

Needs Debian's dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`). Its
/usr/share/doc/dataset-fashion-mnist/benchmark/baselines.json is the benchmark's parameter grid (which
classifiers and settings were run), not its scores: the scores below are the published ones (zalandoresearch/
fashion-mnist benchmark table, also in DATASETS.md). Prints one markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

BASELINES_JSON = Path("/usr/share/doc/dataset-fashion-mnist/benchmark/baselines.json")
PUBLISHED = {"SVC (C=10, rbf), best classic model": 0.897, "MLPClassifier (100,), relu": 0.877}


def shards(a: argparse.Namespace) -> Path:
    from fashiontune.shards.build import build_shards
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.sources.fashion_mnist import write_subset

    inp = write_subset(Path(a.input), a.out / "corpus", n_train=a.train)
    out = a.out / "shards"
    if not (out / "manifest.json").is_file():
        build_shards(ShardBuildConfig(source="fashion-mnist", input=str(inp), out=str(out), image_size=28,
                                      shard_size=5000, splits="train=0.95,val=0.05,test=0", progress=False))
    return out


def ours(a: argparse.Namespace, shard_dir: Path) -> dict:
    from fashiontune.config import load_config
    from fashiontune.eval.config import EvalConfig
    from fashiontune.eval.run import run_eval
    from fashiontune.train import load_train_config, run_training

    cfg = load_train_config("configs/tiny-kagl-softmax.yaml", [
        "name=bench-fmnist", f"out_dir={a.out}/runs", f"model.name={a.model}", f"model.image_size={a.image_size}",
        f"data.shards={shard_dir}", f"data.batch_size={a.batch}", "task.field=label", f"loop.epochs={a.epochs}",
        "checkpoint.every_steps=0", "log.progress=false", "log.tensorboard=false", "log.every_steps=100"])
    t0 = time.perf_counter()
    run_training(cfg)
    train_s = time.perf_counter() - t0
    ev = load_config(EvalConfig, "configs/eval/trained.yaml", [
        "name=bench-fmnist", f"data.shards={shard_dir}", "data.split=test", f"out_dir={a.out}/eval",
        f"model.checkpoint={cfg.run_dir / 'export'}", "retrieval.enabled=false", "category.enabled=false",
        "classification.zero_shot=false", "plots.grid_queries=0", "cache=false"])
    res = run_eval(ev)
    return {"accuracy": res["classification"]["label/classify"]["accuracy"], "train_s": train_s,
            "items": res["items"]}


def mlp(a: argparse.Namespace) -> dict:
    """The peer: sklearn's MLP (100 hidden, relu, adam) on standardised raw pixels of the same train images."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    from fashiontune.sources.fashion_mnist import FashionMnistSource
    from fashiontune.sources.idx import IMAGES, LABELS, read_idx

    src, root = FashionMnistSource(), Path(a.input)
    x, y, xt, yt = (read_idx(src.find(root, f"{p}-{k}"), m) for p in ("train", "t10k")
                    for k, m in (("images-idx3-ubyte", IMAGES), ("labels-idx1-ubyte", LABELS)))
    x, y = x[: a.train].reshape(len(x[: a.train]), -1), y[: a.train]
    scaler = StandardScaler().fit(x)
    t0 = time.perf_counter()
    clf = MLPClassifier(hidden_layer_sizes=(100,), max_iter=a.mlp_iter, random_state=0).fit(scaler.transform(x), y)
    train_s = time.perf_counter() - t0
    acc = float((clf.predict(scaler.transform(xt.reshape(len(xt), -1))) == yt).mean())
    return {"accuracy": acc, "train_s": train_s, "items": len(yt)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=60000, help="train images (the first N of the 60,000)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--model", default="ft-tiny-vit")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--mlp-iter", type=int, default=30, help="MLP epochs (sklearn max_iter)")
    p.add_argument("--input", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", type=Path, default=Path("/tmp/ft-fmnist"))
    a = p.parse_args()
    t0 = time.perf_counter()
    shard_dir = shards(a)
    build_s = time.perf_counter() - t0
    us, peer = ours(a, shard_dir), mlp(a)
    grid = sorted(json.loads(BASELINES_JSON.read_text())["classifiers"]) if BASELINES_JSON.is_file() else []
    print(f"\nFashion-MNIST, first {a.train} train images (95/5 train/val), full official test split "
          f"({us['items']} images); shards built in {build_s:.0f} s\n")
    print("| model | test accuracy | train time |\n|---|---|---|")
    print(f"| fashiontune {a.model} at {a.image_size} px, random init, {a.epochs} epoch(s), softmax head "
          f"| **{us['accuracy']:.3f}** | {us['train_s']:.0f} s |")
    print(f"| scikit-learn MLPClassifier (100,) on raw pixels, same images, same run | {peer['accuracy']:.3f} "
          f"| {peer['train_s']:.0f} s |")
    for name, acc in PUBLISHED.items():
        print(f"| published benchmark: {name} (full 60k) | {acc:.3f} | - |")
    print(f"\nratio ours / MLP (same run): {us['accuracy'] / peer['accuracy']:.3f}")
    if grid:
        print(f"baselines.json grid ({BASELINES_JSON}): {len(grid)} classifier families: {', '.join(grid)}")


if __name__ == "__main__":
    main()
