"""Same-product positives vs plain CLIP loss on a synthetic multi-view catalogue, equal steps, several seeds.

Products are 3 horizontal stripes of 8 colours (512 products); a product's views differ by a random crop
(60-100% of the side), a vertical shift, a colour gain per channel and pixel noise; each view has its own
phrasing of the product's caption ("a red, blue and cyan striped item", "stripes of red, blue and cyan", ...), as
DeepFashion-MM's per-image captions are, or (third corpus) every view the product's one caption, as template
captions are. Training batches are formed as `data.views_per_group: K` forms them (fashiontune.data.groups,
over the items in shard order, a product's views one after another): each batch holds runs of K views of a
product (K=8, batch 32: 4 products, so every row has 7 same-product "negatives" under plain CLIP). The
reference: the same corpus with K=1 (a product's views in different batches; CLIP only).

Each objective trains the same initial tiny ViT CLIP (ft-tiny-vit, 32 px, random init) for the same steps
and batches; then every view of the held-out products is embedded and scored over the full corpus with the
training eval's metrics (tasks/metrics.retrieval: hit rate, a hit = any view / caption of the same product):
Hit@1 and Hit@10, both directions averaged, and image -> image over the In-shop split (each product's
1st, 3rd, ... view queries the other views and every other product's: i2i Hit@1 / Hit@10). Printed: mean
± std over seeds per objective, and the paired difference to clip. Control: a corpus with one view per product (as many training images as products allow,
448 by default; the same test products), where the objectives are the same loss and must tie.

    python bench/contrastive.py [--seeds 3] [--first-seed 0] [--steps 100] [--batch 32] [--views 8] [--products 96]
                                [--test-products 64] [--views-per-batch 8] [--window 512] [--lr 1e-3]
                                [--only TEXT] [--json out.json]

With one caption per product the multi-positive (supcon) loss IS the CLIP loss (identical texts have identical
embeddings, so the per-positive mean of log-probabilities sums to CLIP's; tests/test_contrastive_objectives.py
checks it): it must tie there exactly, and only `mask` (fewer negatives) or per-view captions can differ.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics

import torch

from fashiontune.data.groups import group_batched

COLOURS = {"red": (1.5, -1, -1), "green": (-1, 1.5, -1), "blue": (-1, -1, 1.5), "yellow": (1.5, 1.5, -1),
           "cyan": (-1, 1.5, 1.5), "magenta": (1.5, -1, 1.5), "white": (1.5, 1.5, 1.5), "black": (-1, -1, -1)}
NAMES = list(COLOURS)
PALETTE = torch.tensor([COLOURS[n] for n in NAMES], dtype=torch.float32)
METRICS = ("Hit@1", "Hit@10", "i2i Hit@1", "i2i Hit@10")
OBJECTIVES = {"clip": {}, "group-supcon": {"positives": "group"},
              "group-mask": {"positives": "group", "group_loss": "mask"}}


def split_products(n_train: int, n_test: int) -> tuple[list[tuple], list[tuple]]:
    combos = list(itertools.product(range(len(NAMES)), repeat=3))
    random.Random(0).shuffle(combos)  # the same products in every run and seed
    return combos[n_test:n_test + n_train], combos[:n_test]  # the same test products for every corpus


def view(product: tuple, g: torch.Generator, size: int = 32) -> torch.Tensor:
    """One photo of `product`: a random crop (60-100% of the side, anywhere), a vertical shift, a colour gain
    per channel (0.6-1.4) and pixel noise: views of one product differ as catalogue photos do."""
    x = torch.empty(3, size, size)
    bands = torch.linspace(0, size, 4).round().long().tolist()
    for colour, lo, hi in zip(product, bands, bands[1:]):
        x[:, lo:hi] = PALETTE[colour][:, None, None]
    side = int(torch.randint(int(0.6 * size), size + 1, (1,), generator=g))
    top, left = (int(torch.randint(0, size - side + 1, (1,), generator=g)) for _ in range(2))
    x = torch.nn.functional.interpolate(x[None, :, top:top + side, left:left + side], size=(size, size))[0]
    shift = int(torch.randint(-3, 4, (1,), generator=g))
    gain = 0.6 + 0.8 * torch.rand(3, 1, 1, generator=g)
    return torch.roll(x, shift, dims=1) * gain + 0.5 * torch.randn(x.shape, generator=g)


PHRASES = ["a {}, {} and {} striped item", "stripes of {}, {} and {}", "{} on top, {} in the middle, {} below",
           "striped garment: {} / {} / {}", "product with {}, {}, {} bands", "{}-{}-{} stripes",
           "colours {}, {} and {} in stripes", "a shirt striped {}, {}, {}"]


def corpus(products: list[tuple], views: int, seed: int, paraphrase: bool = False) -> list[dict]:
    """Items in shard order: each product's views one after another. paraphrase: view v's caption is phrased
    its own way (as DeepFashion-MM's per-image captions are), else every view has the product's one caption."""
    g = torch.Generator().manual_seed(seed)
    return [{"image": view(p, g), "group_id": "-".join(map(str, p)), "key": f"{'-'.join(map(str, p))}/{v}",
             "caption": PHRASES[v % len(PHRASES) if paraphrase else 0].format(*(NAMES[c] for c in p))}
            for p in products for v in range(views)]


def batches(items: list[dict], views_per_batch: int, batch: int, window: int, rng: random.Random):
    """Endless batches, epoch after epoch. views_per_batch K > 0: the library's data.views_per_group order
    (fashiontune.data.groups) over the items in shard order, a product's views one after another: each batch
    holds runs of K views of a product, so plain CLIP meets K - 1 same-product negatives per row; K = 1 keeps
    a product's views in different batches. K = 0: a full shuffle each epoch (views meet by chance)."""
    stream = (it for _ in itertools.count() for it in (
        group_batched(items, views_per_batch, batch, window, rng, lambda it: it["group_id"]) if views_per_batch
        else rng.sample(items, len(items))))
    while True:
        yield [next(stream) for _ in range(batch)]


def collate(items: list[dict], tokenizer) -> dict:
    captions = [it["caption"] for it in items]
    return {"image": torch.stack([it["image"] for it in items]), "text": tokenizer(captions), "caption": captions,
            "group_id": [it["group_id"] for it in items], "key": [it["key"] for it in items]}


def train_and_eval(objective: dict, train: list[dict], test: list[dict], views_per_batch: int, a: argparse.Namespace,
                   seed: int) -> dict:
    from fashiontune.models import ModelConfig, load_clip
    from fashiontune.tasks import ContrastiveConfig, TaskConfig, TaskName, build_task
    from fashiontune.train.backend import LocalBackend
    from fashiontune.train.step import forward_backward

    torch.manual_seed(seed)
    loaded = load_clip(ModelConfig(name="ft-tiny-vit", image_size=32))
    task = build_task(TaskConfig(name=TaskName.contrastive, contrastive=ContrastiveConfig(**objective)), loaded, {})
    opt = torch.optim.AdamW([p for p in task.module.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    stream, same = batches(train, views_per_batch, a.batch, a.window, random.Random(seed)), []
    for _ in range(a.steps):
        items = next(stream)
        same.append(a.batch - len({it["group_id"] for it in items}))  # rows whose product is already in the batch
        forward_backward(task, LocalBackend(task.module), [collate(items, loaded.tokenizer)])
        opt.step()
        opt.zero_grad(set_to_none=True)
    res = task.evaluate([collate(test[i:i + 256], loaded.tokenizer) for i in range(0, len(test), 256)])
    return {"Hit@1": res["mean_R@1"], "Hit@10": res["mean_R@10"], "i2i Hit@1": res["i2i_R@1"],
            "i2i Hit@10": res["i2i_R@10"], "same_product_rows": statistics.mean(same)}


def compare(views: int, n_products: int, paraphrase: bool, views_per_batch: int, objectives: list[str],
            a: argparse.Namespace) -> dict:
    train_p, test_p = split_products(n_products, a.test_products)
    out: dict = {name: [] for name in objectives}
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        train, test = corpus(train_p, views, 100 + seed, paraphrase), corpus(test_p, views, 200 + seed, paraphrase)
        for name in objectives:
            out[name].append(train_and_eval(OBJECTIVES[name], train, test, views_per_batch, a, seed))
            print(f"  views={views} seed={seed} {name:13s} {out[name][-1]}", flush=True)
    return out


def summary(runs: dict) -> dict:
    def ms(xs):
        xs = [x for x in xs if not math.isnan(x)]  # i2i is NaN on the one-view corpus: no product has two views
        if not xs:
            return {"mean": float("nan"), "std": float("nan")}
        return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}
    table = {}
    for name, rs in runs.items():
        table[name] = {m: ms([r[m] for r in rs]) for m in METRICS}
        if name != "clip" and "clip" in runs:
            for m in METRICS:
                table[name][f"{m} - clip"] = ms([r[m] - c[m] for r, c in zip(rs, runs["clip"])])
    return table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--products", type=int, default=96, help="training products (of 512)")
    p.add_argument("--test-products", type=int, default=64)
    p.add_argument("--views-per-batch", type=int, default=8,
                   help="data.views_per_group K of the multi-view runs; 0 = a full shuffle each epoch")
    p.add_argument("--window", type=int, default=512, help="items the grouping reorders within (shuffle_buffer)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--only", default="", help="run only the corpora whose label holds this text")
    p.add_argument("--json", default="")
    return p


def main() -> None:
    a = parser().parse_args()
    result = {"args": vars(a)}
    one_view_products = min(a.products * a.views, len(NAMES) ** 3 - a.test_products)  # images, up to all products left
    k, every = a.views_per_batch, list(OBJECTIVES)
    order = f"{k} views per batch" if k else "full shuffle"
    corpora = {f"{a.views} views, a caption per view, {order}": (a.views, a.products, True, k, every),
               f"{a.views} views, a caption per view, views apart (1 per batch)":
                   (a.views, a.products, True, 1, ["clip"]),
               f"{a.views} views, one caption per product, {order}": (a.views, a.products, False, k, every),
               f"one view ({one_view_products} products, control)": (1, one_view_products, False, k, every)}
    for label, (views, n, paraphrase, per_batch, objectives) in corpora.items():
        if a.only and a.only not in label:
            continue
        runs = compare(views, n, paraphrase, per_batch, objectives, a)
        result[label] = {"runs": runs, "summary": summary(runs)}
        print(f"{label} ({a.steps} steps x {a.batch}, {a.seeds} seeds; same-product rows per batch "
              f"{runs['clip'][0]['same_product_rows']:.1f}):")
        for name, row in result[label]["summary"].items():
            cells = (f"{m} {v['mean']:+.3f}±{v['std']:.3f}" if "clip" in m else f"{m} {v['mean']:.3f}±{v['std']:.3f}"
                     for m, v in row.items())
            print(f"  {name:13s} " + "  ".join(cells), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
