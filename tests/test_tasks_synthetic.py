"""Synthetic tensors for the task tests (imported by tests/test_tasks*.py; holds a few sanity tests itself).

The learnable signal: an image's top three quarters have the colour of one label and its bottom quarter
the colour of another (plus noise). The "colour" label is the dominant colour, so it can be read from the
mean colour without any spatial reasoning, and a tiny model learns it in a few dozen steps on CPU."""

from __future__ import annotations

import torch

COLOURS = {"red": (1.5, -1.0, -1.0), "green": (-1.0, 1.5, -1.0), "blue": (-1.0, -1.0, 1.5), "yellow": (1.5, 1.5, -1.0)}
NAMES = list(COLOURS)
PALETTE = torch.tensor([COLOURS[n] for n in NAMES])  # already in normalised-image units
SHAPES = ["long_sleeve", "short_sleeve", "sleeveless"]


def manifest(n_train: int = 400) -> dict:
    """A manifest with a single-label field (top colour), another single-label field (shape, 3 values)
    and a multi-label field (colours present)."""
    return {
        "source": "synthetic",
        "splits": {"train": {"count": n_train}},
        "labels": {
            "colour": {"multi": False, "vocab": NAMES, "counts": {n: n_train // 4 for n in NAMES}},
            "shape": {"multi": False, "vocab": SHAPES, "counts": {n: n_train // 3 for n in SHAPES}},
            "colours": {"multi": True, "vocab": NAMES, "counts": {n: n_train // 2 for n in NAMES}},
        },
    }


def images(top: torch.Tensor, bottom: torch.Tensor, size: int = 32, noise: float = 0.3, gen=None) -> torch.Tensor:
    b = top.shape[0]
    x = torch.empty(b, 3, size, size)
    cut = size * 3 // 4
    x[:, :, :cut] = PALETTE[top][:, :, None, None]
    x[:, :, cut:] = PALETTE[bottom][:, :, None, None]
    return x + noise * torch.randn(x.shape, generator=gen)


def batch(b: int = 16, size: int = 32, seed: int = 0, tokenizer=None, missing: float = 0.0) -> dict:
    """dominant colour = "colour" label; minority colour index % 3 = "shape" label; both = "colours"."""
    g = torch.Generator().manual_seed(seed)
    top = torch.randint(0, 4, (b,), generator=g)
    bottom = torch.randint(0, 4, (b,), generator=g)
    multi = torch.zeros(b, 4)
    multi[torch.arange(b), top] = 1.0
    multi[torch.arange(b), bottom] = 1.0
    colour, shape = top.clone(), bottom % 3
    if missing:
        drop = torch.rand(b, generator=g) < missing
        colour[drop] = -1
        drop2 = torch.rand(b, generator=g) < missing
        shape[drop2] = -1
        multi[torch.rand(b, generator=g) < missing] = -1.0
    out = {
        "image": images(top, bottom, size, gen=g),
        "labels": {"colour": colour, "shape": shape, "colours": multi},
        "key": [f"k{seed}_{i}" for i in range(b)],
        "group_id": [f"g{int(t)}{int(s)}" for t, s in zip(top, bottom)],
    }
    if tokenizer is not None:
        out["caption"] = [f"a {NAMES[int(t)]} and {NAMES[int(s)]} item" for t, s in zip(top, bottom)]
        out["text"] = tokenizer(out["caption"])
    return out


def test_batch_is_deterministic_and_encodes_labels():
    a, b = batch(8, seed=3), batch(8, seed=3)
    assert torch.equal(a["image"], b["image"])
    top = a["labels"]["colour"]
    # the top part's mean colour identifies the label
    assert torch.equal(
        (a["image"][:, :, :24].mean((2, 3))[:, None, :] - PALETTE[None]).norm(dim=2).argmin(1), top
    )
    assert (a["labels"]["colours"].sum(1) >= 1).all()


def test_missing_labels_are_minus_one():
    m = batch(64, seed=1, missing=0.5)["labels"]
    assert (m["colour"] == -1).any() and (m["colour"] >= 0).any()
    rows = (m["colours"] < 0).all(1)
    assert rows.any() and ((m["colours"][~rows] == 0) | (m["colours"][~rows] == 1)).all()
