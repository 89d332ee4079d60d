"""Does the cross-encoder re-ranker bind colours to garments where the dual encoder cannot? (issue 14)

Corpus: drawn figures (synth/draw.py) wearing an upper and a lower garment of two different colours, captioned
"a red T-shirt and blue shorts". With --twins every caption has a TWIN: the same garments with the two
colours swapped ("a blue T-shirt and red shorts"), so both colours are in both images and only binding them
to the right garment separates the pair. Every (colour pair, upper, lower) combination occurs once per
ordering; twins always land in the same split (Record.split), so the eval corpus holds both. Each item is
drawn `--views` times (same caption: relevant to each other, as views of one product are).
The control corpus keeps ONE ordering of each pair (no twins): there the re-ranker must not hurt.

The dual encoder is trained on the same images with each caption's words in a random order (--dual-captions
bow, the default): a bag-of-words dual encoder, as web-trained CLIP effectively is, which cannot bind. A tiny
dual encoder trained from scratch on the ordered captions DOES bind here (it ranks the right image above its
twin's for 97-100% of captions, measured on this corpus): the twins are then no harder than any other pair
and a re-ranker has no binding to fix; --dual-captions ordered runs that case.

Per seed and corpus, everything goes through the product's own path:
  shards (shards.build) -> dual encoder: contrastive fine-tuning of the random-init tiny ViT CLIP
  (run_training) -> re-ranker: task.name=rerank on its frozen towers (run_training, hard negatives mined from
  its top-K) -> `fashiontune eval` (run_eval) with rerank.model=EXPORT on the val split.
Printed: text->image Hit@1 (results.json R@1) over the whole val split before / after, per seed, the paired
difference, its mean and std, and the cost per query. Timings are taken on a shared, loaded machine.

    python bench/rerank.py [--seeds 3] [--dual-steps 300] [--rerank-steps 1000] [--k 10] [--views 4]
                           [--negatives 3] [--width 64] [--layers 1] [--colours 9]
                           [--dual-captions bow|ordered] [--only twins|control] [--json out]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

COLOURS = ["Red", "Blue", "Green", "Yellow", "Black", "White", "Pink", "Brown", "Grey"]  # synth/draw.py names
UPPER = {"tshirt": "T-shirt", "shirt": "shirt", "top": "tank top"}
LOWER = {"trousers": "pants", "shorts": "shorts", "skirt": "skirt"}


def make_records(root: Path, seed: int, twins: bool, views: int, colours: int = len(COLOURS),
                 val_fraction: float = 0.34) -> list:
    """Records of the twin (or control) corpus over the first `colours` colours, images under root/images."""
    from fashiontune.records import Record
    from fashiontune.synth import draw

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    recs = []
    for p, ((a, b), up, low) in enumerate(itertools.product(itertools.combinations(COLOURS[:colours], 2), UPPER, LOWER)):
        split = "val" if rng.random() < val_fraction else "train"
        orders = [(a, b), (b, a)] if twins else [rng.choice([(a, b), (b, a)])]
        for o, (cu, cl) in enumerate(orders):
            text = f"a {cu.lower()} {UPPER[up]} and {cl.lower()} {LOWER[low]}"
            for v in range(views):
                outfit = draw.Outfit(upper=up, lower=low, upper_colour=draw.COLOURS[cu], lower_colour=draw.COLOURS[cl],
                                     sleeve=rng.choice(["short", "long"]), lower_len="long" if low == "trousers" else "medium short")
                img, _ = draw.figure(outfit, 48, 64, random.Random(f"{seed}-{p}-{o}-{v}"))
                path = root / "images" / f"p{p:04d}-{o}-{v}.png"
                img.save(path)
                recs.append(Record(id=f"p{p:04d}-{o}-{v}", group_id=f"p{p:04d}-{o}", image_path=path.relative_to(root),
                                   text=text, labels={"upper": up}, split=split))
    return recs


def bag_of_words(recs: list, seed: int) -> list:
    """The same records (images, groups, splits) with each caption's words in a random order."""
    rng = random.Random(f"bow-{seed}")
    return [dataclasses.replace(r, text=" ".join(rng.sample(r.text.split(), len(r.text.split())))) for r in recs]


def build(root: Path, seed: int, twins: bool, views: int, colours: int = len(COLOURS)) -> tuple[Path, Path]:
    """(shards, bag-of-words shards) of one corpus: the same images and splits, ordered / shuffled captions."""
    from fashiontune.shards.build import build_shards
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.shards.testing import ListSource

    recs = make_records(root / "raw", seed, twins, views, colours)
    outs = root / "shards", root / "bow-shards"
    for out, rs in zip(outs, (recs, bag_of_words(recs, seed))):
        build_shards(ShardBuildConfig(source="", input=str(root / "raw"), out=str(out), image_size=64, shard_size=128,
                                      splits="train=0.66,val=0.34", progress=False, workers=1), ListSource(rs))
    return outs


def train(shards: Path, out: Path, name: str, seed: int, steps: int, *extra: str) -> Path:
    from fashiontune.train import load_train_config, run_training

    cfg = load_train_config(ROOT / "configs/tiny-deepfashion-contrastive.yaml", [
        f"data.shards={shards}", f"out_dir={out}", f"name={name}", "data.workers=0", "log.tensorboard=false",
        "checkpoint.every_steps=0", "log.plots=false", f"loop.seed={seed}", f"loop.max_steps={steps}",
        "loop.grad_accum=1", "data.batch_size=32", "log.eval_every_steps=1000000", *extra])  # validate at the end only
    run_training(cfg)
    return out / name / "export"


def one(root: Path, seed: int, twins: bool, a) -> dict:
    from fashiontune.config import load_config
    from fashiontune.eval.config import EvalConfig
    from fashiontune.eval.run import run_eval

    t0 = time.perf_counter()
    shards, bow = build(root, seed, twins, a.views, a.colours)
    dual = train(bow if a.dual_captions == "bow" else shards, root / "runs", "dual", seed, a.dual_steps)
    rr = train(shards, root / "runs", "rerank", seed, a.rerank_steps, "task.name=rerank",
               f"model.pretrained={dual / 'open_clip_pytorch_model.bin'}", f"task.rerank.mine_k={a.k}",
               f"task.rerank.negatives={a.negatives}", f"task.rerank.width={a.width}", f"task.rerank.layers={a.layers}",
               f"optim.lr={a.lr}",
               "schedule.warmup_steps=20")
    res = run_eval(load_config(EvalConfig, ROOT / "configs/eval/tiny.yaml", [
        f"data.shards={shards}", "data.split=val", f"out_dir={root / 'eval'}", f"model.checkpoint={dual}",
        f"rerank.model={rr}", f"rerank.k={a.k}", "plots.grid_queries=0", "data.num_workers=0",
        "category.enabled=false", "classification.enabled=false"]))
    b = res["rerank"]["t2i"]
    return {"seed": seed, "twins": twins, "items": res["items"], "before": b["before"]["R@1"],
            "after": b["after"]["R@1"], "hit10_before": b["before"]["R@10"], "hit10_after": b["after"]["R@10"], "mrr_before": b["before"]["mrr"], "mrr_after": b["after"]["mrr"],
            "ms_per_query": 1000 * b["seconds_per_query"], "seconds": time.perf_counter() - t0}


def _sd(x: list[float]) -> float:
    return statistics.stdev(x) if len(x) > 1 else 0.0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--dual-steps", type=int, default=300)
    ap.add_argument("--rerank-steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--colours", type=int, default=len(COLOURS), choices=range(3, len(COLOURS) + 1))
    ap.add_argument("--dual-captions", choices=["bow", "ordered"], default="bow")
    ap.add_argument("--only", choices=["twins", "control"], default=None)
    ap.add_argument("--json", default="")
    return ap


def main() -> None:
    a = parser().parse_args()
    rows = []
    corpora = [t for t in (True, False) if a.only is None or a.only == ("twins" if t else "control")]
    for seed in range(a.seeds):  # seed-major: an interrupted run still has both corpora
        for twins in corpora:
            with tempfile.TemporaryDirectory() as d:
                rows.append(one(Path(d), seed, twins, a))
            r = rows[-1]
            print(f"{'twins' if twins else 'control':8s} seed {seed}: {r['items']} val items, Hit@1 "
                  f"{r['before']:.3f} -> {r['after']:.3f}, Hit@10 {r['hit10_before']:.3f} -> {r['hit10_after']:.3f} (MRR {r['mrr_before']:.3f} -> {r['mrr_after']:.3f}), "
                  f"{r['ms_per_query']:.1f} ms/query, {r['seconds']:.0f} s", flush=True)
    print(f"\ntext->image Hit@1 on the val split, dual encoder vs re-ranked top-{a.k} ({a.dual_steps} dual / "
          f"{a.rerank_steps} re-ranker steps, re-ranker width {a.width} x {a.layers} layers; machine under load)")
    print(f"{'corpus':8s} {'seeds':>5s} {'dual':>13s} {'re-ranked':>13s} {'paired diff':>15s}")
    for name, twins in (("twins", True), ("control", False)):
        sel = [r for r in rows if r["twins"] == twins]
        if not sel:
            continue
        diff = [r["after"] - r["before"] for r in sel]
        bef, aft = [r["before"] for r in sel], [r["after"] for r in sel]
        print(f"{name:8s} {len(sel):5d} {statistics.mean(bef):6.3f} ± {_sd(bef):.3f} {statistics.mean(aft):6.3f} ± "
              f"{_sd(aft):.3f} {statistics.mean(diff):+7.3f} ± {_sd(diff):.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
