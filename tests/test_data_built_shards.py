"""The pipeline over shards made by the real chain: synth corpus -> source adapter -> shard builder.

Cost: two ~70-item corpora at 32 px (~1 s to generate and build), in-process loaders (~1 s).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from torchvision import transforms

from fashiontune.data import DataConfig, EpochMode, make_loader, read_manifest

TF = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])


def build(tmp: Path, fmt: str, n: int) -> Path:
    from fashiontune.shards.build import build_shards
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.synth import generate

    generate(fmt, tmp / "raw", n, seed=0, image_size=32)
    build_shards(ShardBuildConfig(source=fmt, input=str(tmp / "raw"), out=str(tmp / "shards"), image_size=32,
                                  shard_size=16, workers=1, progress=False))
    return tmp / "shards"


def json_labels(shards: Path, split: str) -> dict[str, dict]:
    """key -> labels, read straight from the tars (the reference the encoded batches are checked against)."""
    out = {}
    for tar in sorted((shards / split).glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".json"):
                    out[m.name[: -len(".json")]] = json.load(t.extractfile(m))["labels"]
    return out


@pytest.fixture(scope="module")
def kagl(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("kagl"), "kagl", 80)


@pytest.fixture(scope="module")
def imat(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("imat"), "imaterialist", 60)


def test_exact_epoch_and_single_labels_on_built_kagl_shards(kagl):
    manifest = read_manifest(kagl)
    truth = json_labels(kagl, "train")
    cfg = DataConfig(shards=str(kagl), batch_size=8, workers=0, shuffle_buffer=16)
    seen = []
    for rank in range(2):
        ld = make_loader(cfg, train=True, transform=TF, fields=["subCategory", "gender"], rank=rank, world_size=2)
        for b in ld:
            assert b["image"].shape[1:] == (3, 32, 32)
            for i, key in enumerate(b["key"]):
                if not b["valid"][i]:
                    continue
                seen.append(key)
                for field in ("subCategory", "gender"):
                    y = int(b["labels"][field][i])
                    want = truth[key].get(field)
                    vocab = manifest["labels"][field]["vocab"]
                    assert (vocab[y] if y >= 0 else None) == want
    assert sorted(seen) == sorted(truth) and len(seen) == manifest["splits"]["train"]["count"]
    val = make_loader(cfg, train=False, transform=TF)  # every manifest field when none are named
    assert set(next(iter(val))["labels"]) == set(manifest["labels"])


def test_multi_hot_labels_and_balancing_on_built_imaterialist_shards(imat):
    manifest = read_manifest(imat)
    vocab = manifest["labels"]["category"]["vocab"]
    truth = json_labels(imat, "train")
    cfg = DataConfig(shards=str(imat), batch_size=8, workers=0, epoch_mode=EpochMode.resampled,
                     samples_per_epoch=40, balance_field="category", balance_power=0.5)
    ld = make_loader(cfg, train=True, transform=TF, fields=["category"])
    n = 0
    for b in ld:
        y = b["labels"]["category"]
        assert y.dtype == torch.float32 and y.shape == (8, len(vocab))
        for row, key in zip(y, b["key"]):
            assert {vocab[i] for i in row.nonzero().flatten().tolist()} == set(truth[key].get("category", []))
        n += len(b["key"])
    assert n == 40
