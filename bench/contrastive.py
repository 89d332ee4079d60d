"""Same-product positives vs plain CLIP loss on a synthetic multi-view catalogue, equal steps, several seeds.

Products are 3 horizontal stripes of 8 colours (512 products); a product's views differ by a vertical shift,
a colour gain and pixel noise; every view of a product has the same caption ("a red, blue and cyan striped
item"), as template captions do; or (second corpus) each view its own phrasing of it, as DeepFashion-MM's
per-image captions are. Training batches come in the order grouped shards give (DeepFashion-MM
writes a product's views one after another) through a small shuffle buffer, so a batch holds several views
of one product: the regime where plain CLIP takes them as negatives. `--buffer 0` shuffles the whole corpus.

Each objective trains the same initial tiny ViT CLIP (ft-tiny-vit, 32 px, random init) for the same steps
and batches; then every view of the held-out products is embedded and scored over the full corpus with the
training eval's metrics (tasks/metrics.retrieval: hit rate, a hit = any view / caption of the same product):
Hit@1 and Hit@10, both directions averaged. Printed: mean ± std over seeds per objective, and the paired
difference to clip. Controls: the one-caption corpus, and a corpus with one view per product (distinct
captions; as many training images as products allow, 448 by default; the same test products), where the
objectives are the same loss and must tie.

    python bench/contrastive.py [--seeds 3] [--steps 60] [--batch 32] [--views 8] [--products 96]
                                [--test-products 64] [--buffer 16] [--lr 1e-3] [--only TEXT] [--json out.json]

With one caption per product the multi-positive (supcon) loss IS the CLIP loss (identical texts have identical
embeddings, so the per-positive mean of log-probabilities sums to CLIP's; tests/test_contrastive_objectives.py
checks it): it must tie there exactly, and only `mask` (fewer negatives) or per-view captions can differ.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics

import torch

COLOURS = {"red": (1.5, -1, -1), "green": (-1, 1.5, -1), "blue": (-1, -1, 1.5), "yellow": (1.5, 1.5, -1),
           "cyan": (-1, 1.5, 1.5), "magenta": (1.5, -1, 1.5), "white": (1.5, 1.5, 1.5), "black": (-1, -1, -1)}
NAMES = list(COLOURS)
PALETTE = torch.tensor([COLOURS[n] for n in NAMES], dtype=torch.float32)
OBJECTIVES = {"clip": {}, "group-supcon": {"positives": "group"},
              "group-mask": {"positives": "group", "group_loss": "mask"}}


def split_products(n_train: int, n_test: int) -> tuple[list[tuple], list[tuple]]:
    combos = list(itertools.product(range(len(NAMES)), repeat=3))
    random.Random(0).shuffle(combos)  # the same products in every run and seed
    return combos[n_test:n_test + n_train], combos[:n_test]  # the same test products for every corpus


def view(product: tuple, g: torch.Generator, size: int = 32) -> torch.Tensor:
    x = torch.empty(3, size, size)
    bands = torch.linspace(0, size, 4).round().long().tolist()
    for colour, lo, hi in zip(product, bands, bands[1:]):
        x[:, lo:hi] = PALETTE[colour][:, None, None]
    shift = int(torch.randint(-3, 4, (1,), generator=g))
    gain = 0.8 + 0.4 * torch.rand(3, 1, 1, generator=g)
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


def buffered(items: list[dict], buffer: int, rng: random.Random):
    """An endless stream in shard order through a shuffle buffer (webdataset's shuffle); buffer 0 = a full
    shuffle each epoch."""
    while True:
        if buffer <= 0:
            yield from rng.sample(items, len(items))
            continue
        buf: list[dict] = []
        for it in items:
            buf.append(it)
            if len(buf) >= buffer:
                yield buf.pop(rng.randrange(len(buf)))
        while buf:
            yield buf.pop(rng.randrange(len(buf)))


def collate(items: list[dict], tokenizer) -> dict:
    captions = [it["caption"] for it in items]
    return {"image": torch.stack([it["image"] for it in items]), "text": tokenizer(captions), "caption": captions,
            "group_id": [it["group_id"] for it in items], "key": [it["key"] for it in items]}


def train_and_eval(objective: dict, train: list[dict], test: list[dict], a: argparse.Namespace, seed: int) -> dict:
    from fashiontune.models import ModelConfig, load_clip
    from fashiontune.tasks import ContrastiveConfig, TaskConfig, TaskName, build_task
    from fashiontune.train.backend import LocalBackend
    from fashiontune.train.step import forward_backward

    torch.manual_seed(seed)
    loaded = load_clip(ModelConfig(name="ft-tiny-vit", image_size=32))
    task = build_task(TaskConfig(name=TaskName.contrastive, contrastive=ContrastiveConfig(**objective)), loaded, {})
    opt = torch.optim.AdamW([p for p in task.module.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    stream, same = buffered(train, a.buffer, random.Random(seed)), []
    for _ in range(a.steps):
        items = [next(stream) for _ in range(a.batch)]
        same.append(a.batch - len({it["group_id"] for it in items}))  # rows whose product is already in the batch
        forward_backward(task, LocalBackend(task.module), [collate(items, loaded.tokenizer)])
        opt.step()
        opt.zero_grad(set_to_none=True)
    res = task.evaluate([collate(test[i:i + 256], loaded.tokenizer) for i in range(0, len(test), 256)])
    return {"Hit@1": res["mean_R@1"], "Hit@10": res["mean_R@10"], "same_product_rows": statistics.mean(same)}


def compare(views: int, n_products: int, paraphrase: bool, a: argparse.Namespace) -> dict:
    train_p, test_p = split_products(n_products, a.test_products)
    out: dict = {name: [] for name in OBJECTIVES}
    for seed in range(a.seeds):
        train, test = corpus(train_p, views, 100 + seed, paraphrase), corpus(test_p, views, 200 + seed, paraphrase)
        for name, obj in OBJECTIVES.items():
            out[name].append(train_and_eval(obj, train, test, a, seed))
            print(f"  views={views} seed={seed} {name:13s} {out[name][-1]}", flush=True)
    return out


def summary(runs: dict) -> dict:
    def ms(xs):
        return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}
    table = {}
    for name, rs in runs.items():
        table[name] = {m: ms([r[m] for r in rs]) for m in ("Hit@1", "Hit@10")}
        if name != "clip":
            for m in ("Hit@1", "Hit@10"):
                table[name][f"{m} - clip"] = ms([r[m] - c[m] for r, c in zip(rs, runs["clip"])])
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--products", type=int, default=96, help="training products (of 512)")
    p.add_argument("--test-products", type=int, default=64)
    p.add_argument("--buffer", type=int, default=16, help="shuffle buffer in items; 0 = full shuffle")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--only", default="", help="run only the corpora whose label holds this text")
    p.add_argument("--json", default="")
    a = p.parse_args()
    result = {"args": vars(a)}
    one_view_products = min(a.products * a.views, len(NAMES) ** 3 - a.test_products)  # images, up to all products left
    corpora = {"multi-view, one caption": (a.views, a.products, False),
               "multi-view, paraphrased captions": (a.views, a.products, True),
               "one view": (1, one_view_products, False)}
    for label, (views, n, paraphrase) in corpora.items():
        if a.only and a.only not in label:
            continue
        runs = compare(views, n, paraphrase, a)
        result[label] = {"runs": runs, "summary": summary(runs)}
        print(f"{label} ({views} views/product, buffer {a.buffer}, {a.steps} steps x {a.batch}, "
              f"{a.seeds} seeds; same-product rows per batch {runs['clip'][0]['same_product_rows']:.1f}):")
        for name, row in result[label]["summary"].items():
            print(f"  {name:13s} " + "  ".join(f"{m} {v['mean']:+.3f}±{v['std']:.3f}" if "clip" in m else
                                               f"{m} {v['mean']:.3f}±{v['std']:.3f}" for m, v in row.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
