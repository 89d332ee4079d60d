"""The shard pipeline end to end on tiny shards (8 px JPEGs written with webdataset's TarWriter).

Cost on 2 shared cores: the `distributed` tests start real DataLoader worker processes (~1-2 s each);
everything here together stays well under a minute.
"""

from __future__ import annotations

import collections
import io
import json
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image
from torchvision import transforms

from fashiontune.data import DataConfig, EpochMode, make_loader, measure_loader_throughput

TO_TENSOR = transforms.ToTensor()
# random crops + flips: augmentations must be a function of (seed, epoch, key) only
RANDOM_AUG = transforms.Compose([transforms.RandomResizedCrop(6, scale=(0.3, 1.0)), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor()])


def _jpg(i: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    im = Image.new("RGB", (size, size), ((i * 37) % 256, (i * 11) % 256, 128))
    im.paste((255, 255, 255), (0, 0, size // 2, size * 3 // 8))  # a corner block: crops and flips change pixels
    im.save(buf, format="JPEG")
    return buf.getvalue()


def write_shards(root: Path, shard_counts: list[int], label_of=None, split="train", size: int = 8,
                 views: int = 2) -> Path:
    """A shard directory in the documented format (shards/README.md): tars + manifest.json; `views`
    consecutive items share a group_id (a product's views)."""
    label_of = label_of or (lambda i: {"category": ["a", "b", "c"][i % 3]})
    (root / split).mkdir(parents=True, exist_ok=True)
    shards, counts, idx = [], collections.Counter(), 0
    for s, n in enumerate(shard_counts):
        name = f"{split}/shard-{s:06d}.tar"
        with wds.TarWriter(str(root / name)) as w:
            for _ in range(n):
                labels = label_of(idx)
                counts.update(v for v in labels.values() if isinstance(v, str))
                meta = {"id": f"s{idx:04d}", "group_id": f"g{idx // views}", "split": split, "labels": labels}
                w.write({"__key__": f"s{idx:04d}", "jpg": _jpg(idx, size), "txt": f"item {idx}", "json": json.dumps(meta)})
                idx += 1
        shards.append({"name": name, "count": n, "bytes": 0, "sha256": ""})
    vocab = sorted(counts)
    manifest = {
        "format": "fashiontune-shards", "builder_version": 1, "source": "test",
        "splits": {split: {"count": idx, "shards": shards}},
        "labels": {"category": {"multi": False, "vocab": vocab, "counts": dict(counts),
                                "split_counts": {split: dict(counts)}}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("uneven"), [7, 3, 12, 5, 9])  # 36 samples, 5 uneven shards


@pytest.fixture(scope="module")
def few(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("few"), [6, 5])  # 11 samples, 2 shards < 2 ranks x 2 workers


def cfg(shards: Path, **kw) -> DataConfig:
    base = dict(shards=str(shards), batch_size=4, workers=0, shuffle_buffer=8, seed=3)
    base.update(kw)
    return DataConfig(**base)


def keys_of(loader, valid_only=True) -> list[str]:
    out = []
    for b in loader:
        out += [k for k, v in zip(b["key"], b["valid"].tolist()) if v or not valid_only]
    return out


def all_ranks(c: DataConfig, world: int, epoch: int = 0, train: bool = True, transform=TO_TENSOR) -> list:
    loaders = [make_loader(c, train=train, transform=transform, rank=r, world_size=world) for r in range(world)]
    for ld in loaders:
        ld.set_epoch(epoch)
    return loaders


def test_batch_follows_the_contract(uneven):
    import open_clip

    tok = open_clip.get_tokenizer("RN50")
    ld = make_loader(cfg(uneven), train=True, transform=TO_TENSOR, tokenizer=tok)
    b = next(iter(ld))
    assert b["image"].dtype == torch.float32 and b["image"].shape == (4, 3, 8, 8)
    assert b["text"].dtype == torch.long and b["text"].shape == (4, 77)
    assert b["labels"]["category"].dtype == torch.long and b["labels"]["category"].shape == (4,)
    assert len(b["key"]) == len(b["group_id"]) == 4 and b["valid"].all()
    # labels are the manifest's indices of what the sample's json says
    for k, y in zip(b["key"], b["labels"]["category"].tolist()):
        assert ["a", "b", "c"][y] == ["a", "b", "c"][int(k[1:]) % 3]
    assert b["group_id"][0] == f"g{int(b['key'][0][1:]) // 2}"


@pytest.mark.parametrize("name,n,world", [("uneven", 36, 1), ("uneven", 36, 2), ("uneven", 36, 3), ("few", 11, 12)])
def test_exact_epoch_in_process(request, name, n, world):
    loaders = all_ranks(cfg(request.getfixturevalue(name)), world)
    seen = [k for ld in loaders for k in keys_of(ld)]
    assert sorted(seen) == [f"s{i:04d}" for i in range(n)]
    assert len({len(ld) for ld in loaders}) == 1  # even_batches: every rank steps the same number of times
    # more ranks than samples: a rank with nothing to read still steps, on padding only
    assert all(sum(1 for _ in ld) == len(ld) for ld in loaders)


@pytest.mark.distributed
@pytest.mark.parametrize("shards_fixture", ["uneven", "few"])
def test_exact_epoch_two_ranks_two_workers(request, shards_fixture):
    root = request.getfixturevalue(shards_fixture)
    n = 36 if shards_fixture == "uneven" else 11
    for epoch in (0, 1):
        loaders = all_ranks(cfg(root, workers=2, batch_size=2), 2, epoch)
        per_rank = [keys_of(ld) for ld in loaders]
        seen = [k for ks in per_rank for k in ks]
        assert len(seen) == n and sorted(seen) == [f"s{i:04d}" for i in range(n)]  # each exactly once
        for ld, ks in zip(loaders, per_rank):
            assert len(ks) == ld.rank_samples
            assert sum(1 for _ in ld) == len(ld) == max(ld.rank_batches)  # padded to the same count


def test_uneven_ranks_are_padded_with_invalid_batches(few):
    # 11 samples, 3 ranks, batch 2: ranks hold 3/4/4 samples -> 2/2/2 batches; with batch 4 -> 1/1/1.
    # 11 samples, 2 ranks x 1 worker, batch 5: 5 / 6 samples -> 1 / 2 batches: rank 0 gets one padding batch.
    loaders = all_ranks(cfg(few, batch_size=5), 2)
    assert [ld.rank_batches for ld in loaders][0] == [1, 2]
    batches = list(loaders[0])
    assert len(batches) == 2 and batches[0]["valid"].all() and not batches[1]["valid"].any()
    unpadded = make_loader(cfg(few, batch_size=5, even_batches=False), train=True, transform=TO_TENSOR,
                           rank=0, world_size=2)
    assert len(unpadded) == 1 and len(list(unpadded)) == 1


def test_drop_last_gives_only_full_batches(uneven):
    ld = make_loader(cfg(uneven, drop_last=True, batch_size=5), train=True, transform=TO_TENSOR)
    sizes = [len(b["key"]) for b in ld]
    assert sizes == [5] * 7 and len(ld) == 7


def test_resampled_gives_the_fixed_count(uneven):
    c = cfg(uneven, epoch_mode=EpochMode.resampled, samples_per_epoch=50, batch_size=4)
    loaders = all_ranks(c, 2)
    for ld in loaders:
        batches = list(ld)
        assert len(batches) == len(ld) == 7  # ceil(50 / (2 * 4))
        assert all(len(b["key"]) == 4 for b in batches)
    assert keys_of(loaders[0]) != keys_of(loaders[1])  # ranks draw differently


def test_shuffle_differs_per_epoch_and_repeats_for_a_seed(uneven):
    def order(seed, epoch):
        ld = make_loader(cfg(uneven, seed=seed), train=True, transform=TO_TENSOR)
        ld.set_epoch(epoch)
        return keys_of(ld)

    e0 = order(3, 0)
    assert e0 == order(3, 0)
    assert e0 != order(3, 1) and sorted(e0) == sorted(order(3, 1))
    assert e0 != order(4, 0)
    val = make_loader(cfg(uneven, val_split="train"), train=False, transform=TO_TENSOR)
    assert keys_of(val) == [f"s{i:04d}" for i in range(36)]  # validation: unshuffled manifest order


def test_balanced_sampling_evens_out_a_skewed_field(tmp_path):
    # 80% "a", 15% "b", 5% "c"
    skew = lambda i: {"category": "a" if i % 20 < 16 else ("b" if i % 20 < 19 else "c")}  # noqa: E731
    root = write_shards(tmp_path, [100, 100], skew)
    c = cfg(root, epoch_mode=EpochMode.resampled, samples_per_epoch=300, batch_size=20, shuffle_buffer=50,
            balance_field="category")
    ld = make_loader(c, train=True, transform=TO_TENSOR)
    counts = collections.Counter()
    for b in ld:
        counts.update(b["labels"]["category"].tolist())
    total = sum(counts.values())
    assert total == 300
    for cls in range(3):  # uniform would be 100 each; binomial sd ~ 8
        assert abs(counts[cls] - 100) < 35, counts
    unbalanced = make_loader(cfg(root, epoch_mode=EpochMode.resampled, samples_per_epoch=300, batch_size=20),
                             train=True, transform=TO_TENSOR)
    assert collections.Counter(y for b in unbalanced for y in b["labels"]["category"].tolist())[0] > 200


def _fingerprint(b: dict) -> tuple:
    return tuple(b["key"]), tuple(round(float(x), 4) for x in b["image"].flatten(1).sum(1))


def _resume_check(c: DataConfig, world: int = 1, rank: int = 0, epoch: int = 1) -> None:
    make = lambda: make_loader(c, train=True, transform=RANDOM_AUG, rank=rank, world_size=world)  # noqa: E731
    full = make()
    full.set_epoch(epoch)
    ref = [_fingerprint(b) for b in full]  # keys and augmented pixels
    assert full.state_dict()["batches"] == len(full)
    for k in range(len(ref) + 1):
        first = make()
        first.set_epoch(epoch)
        it = iter(first)
        head = [_fingerprint(next(it)) for _ in range(k)]
        state = first.state_dict()
        del it
        again = make()
        again.load_state_dict(state)
        again.set_epoch(epoch)  # what the loop does; keeps the loaded position
        assert head + [_fingerprint(b) for b in again] == ref, f"resume after {k} batches"


def test_augmentation_depends_on_seed_epoch_key_only(uneven):
    def images(world, epoch, workers=0):
        out = {}
        for ld in all_ranks(cfg(uneven, workers=workers), world, epoch, transform=RANDOM_AUG):
            for b in ld:
                out.update(zip(b["key"], b["image"]))
        return out

    a = images(1, 0)
    b, c = images(3, 0), images(1, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)  # another rank layout: the same crops
    assert sum(not torch.equal(a[k], c[k]) for k in a) > len(a) // 2  # another epoch: other crops


def test_in_process_reading_leaves_the_training_rng_alone(uneven):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    keys_of(make_loader(cfg(uneven), train=True, transform=RANDOM_AUG))  # workers=0: runs in this process
    assert torch.equal(torch.rand(3), expected)


def test_resume_in_process(uneven):
    _resume_check(cfg(uneven, batch_size=5))
    _resume_check(cfg(uneven, epoch_mode=EpochMode.resampled, samples_per_epoch=30, batch_size=4), world=2, rank=1)


def test_resume_into_padding(few):
    _resume_check(cfg(few, batch_size=5), world=2, rank=0)  # 1 real batch + 1 padding batch


@pytest.mark.distributed
def test_resume_with_workers(uneven):
    # 2 workers x uneven batch counts (rank 1 of 2: 18 samples -> 9 + 9, batch 4 -> 3 + 3 batches, partial ends)
    _resume_check(cfg(uneven, batch_size=4, workers=2, epoch_mode=EpochMode.exact), world=2, rank=1)


def test_resume_rejects_another_plan(uneven):
    ld = make_loader(cfg(uneven), train=True, transform=TO_TENSOR, rank=0, world_size=2)
    state = {"epoch": 0, "batches": 1, "plan": {**ld.state_dict()["plan"], "world_size": 4}}
    with pytest.raises(ValueError, match="same data config"):
        ld.load_state_dict(state)
    ld.load_state_dict(state, strict=False)
    assert ld.state_dict()["epoch"] == 0 and len(keys_of(ld)) == ld.rank_samples


def test_manifest_count_mismatch_is_an_error(tmp_path):
    root = write_shards(tmp_path, [4, 4])
    m = json.loads((root / "manifest.json").read_text())
    m["splits"]["train"]["shards"][0]["count"] = 5
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(Exception, match="shard-000000.tar.*manifest.json"):
        keys_of(make_loader(cfg(root, shuffle_shards=False), train=True, transform=TO_TENSOR))


def test_undecodable_image_names_shard_and_key(tmp_path):
    (tmp_path / "train").mkdir()
    with wds.TarWriter(str(tmp_path / "train/shard-000000.tar")) as w:
        w.write({"__key__": "bad1", "jpg": b"not a jpeg", "txt": "", "json": json.dumps({"labels": {}})})
    manifest = {"format": "fashiontune-shards", "builder_version": 1, "labels": {},
                "splits": {"train": {"count": 1, "shards": [{"name": "train/shard-000000.tar", "count": 1}]}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"shard-000000.tar: sample 'bad1': the .jpg does not decode.*shards verify"):
        keys_of(make_loader(cfg(tmp_path), train=True, transform=TO_TENSOR))


def test_missing_split_names_the_choices(uneven):
    with pytest.raises(ValueError, match="no split 'val'.*train"):
        make_loader(cfg(uneven), train=False, transform=TO_TENSOR)


def test_measure_loader_throughput(uneven):
    r = measure_loader_throughput(make_loader(cfg(uneven), train=True, transform=TO_TENSOR), warmup_batches=1)
    assert r["batches"] == 8 and r["samples"] == 32 and r["samples_per_s"] > 0


def test_jpeg_draft_size_follows_the_transform(tmp_path):
    from fashiontune.data.stream import draft_size

    rrc = transforms.Compose([transforms.RandomResizedCrop(16, scale=(0.25, 1.0)), transforms.ToTensor()])
    assert draft_size(rrc) == 32  # a quarter of the area needs twice the side
    assert draft_size(transforms.Compose([transforms.Resize(24), transforms.CenterCrop(24)])) == 24
    assert draft_size(TO_TENSOR) is None  # unknown first step: decode in full
    assert draft_size(transforms.Compose([transforms.CenterCrop(24), transforms.ToTensor()])) is None
    # 64 px shards, a 16 px model: the training loader decodes at 1/4 scale (16 px), the same pictures
    root = write_shards(tmp_path, [8], size=64)
    resize = transforms.Compose([transforms.Resize(16), transforms.CenterCrop(16), transforms.ToTensor()])
    seen = {}
    for draft in (False, True):
        ld = make_loader(cfg(root, jpeg_draft=draft, shuffle_buffer=0), train=True, transform=resize)
        seen[draft] = next(iter(ld))["image"]
        assert (ld.collate.draft == 16) is draft
    assert seen[True].shape == seen[False].shape == (4, 3, 16, 16)
    assert 0 < (seen[True] - seen[False]).abs().mean() < 0.03  # another downscaling filter, same content
    val = make_loader(cfg(root, val_split="train"), train=False, transform=rrc)
    assert val.collate.draft is None  # validation decodes in full, like the eval job


def test_throughput_command(uneven, capsys):
    from fashiontune.data.__main__ import main

    assert main([str(uneven), "--workers", "0", "--batches", "3", "batch_size=4"]) == 0
    assert "ft-tiny-vit train transform, batch 4, workers=0:" in capsys.readouterr().out


# --------------------------------------------------------------------------- the one shard reader (data/samples.py)
def test_reader_matches_webdataset_on_a_good_shard(tmp_path):
    from fashiontune.data.samples import iter_tar

    root = write_shards(tmp_path, [7])
    tar = root / "train/shard-000000.tar"
    ours = [{k: v for k, v in s.items() if k != "__url__"} for s in iter_tar(tar)]
    theirs = [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
              for s in wds.WebDataset(str(tar), shardshuffle=False)]
    assert ours == theirs and len(ours) == 7


FAULT_SEED, FAULT_POINTS = 0, 24  # per test: seeded cut points / flipped bytes


def test_reader_never_loses_samples_silently_on_a_cut_tar(tmp_path):
    """A tar cut at any of FAULT_POINTS seeded byte offsets: ShardDataError naming the shard and the fix, or
    (cut inside the trailing zero padding) every sample intact."""
    import random

    from fashiontune.data.samples import ShardDataError, iter_tar

    root = write_shards(tmp_path, [6])
    data = (root / "train/shard-000000.tar").read_bytes()
    full = list(iter_tar(root / "train/shard-000000.tar"))
    bad = root / "train/cut.tar"
    rng = random.Random(FAULT_SEED)
    cuts = sorted(rng.randrange(len(data)) for _ in range(FAULT_POINTS)) + [0, 100, len(data) - 512 * 4]
    errors = 0
    for cut in cuts:
        bad.write_bytes(data[:cut])
        try:
            got = list(iter_tar(bad))
        except ShardDataError as e:
            errors += 1
            assert str(bad) in str(e) and "fashiontune shards verify" in str(e)
            continue
        assert got == [{**s, "__url__": str(bad)} for s in full], f"cut at {cut} of {len(data)} lost samples silently"
    assert errors >= len(cuts) // 2  # most cuts land in the samples, not in the padding


def test_reader_never_changes_the_sample_list_on_a_flipped_byte(tmp_path):
    """FAULT_POINTS seeded single-byte flips: an error naming the shard, or the same samples (a flip inside a
    member's data is not the reader's to see: `fashiontune shards verify` checks the sha256)."""
    import random

    from fashiontune.data.samples import ShardDataError, iter_tar

    root = write_shards(tmp_path, [6])
    data = (root / "train/shard-000000.tar").read_bytes()
    keys = [s["__key__"] for s in iter_tar(root / "train/shard-000000.tar")]
    bad = root / "train/flipped.tar"
    rng = random.Random(FAULT_SEED + 1)
    for _ in range(FAULT_POINTS):
        b = bytearray(data)
        at = rng.randrange(len(b))
        b[at] ^= 0xFF
        bad.write_bytes(bytes(b))
        try:
            got = [(s["__key__"], sorted(s)) for s in iter_tar(bad)]
        except ShardDataError as e:
            assert str(bad) in str(e)
            continue
        assert [k for k, _ in got] == keys and all(m == sorted(["__key__", "__url__", "jpg", "json", "txt"])
                                                   for _, m in got), f"flip at {at}"


def test_decode_errors_name_shard_key_and_fix(tmp_path):
    from fashiontune.data.samples import ShardDataError, decode_rgb, sample_caption, sample_meta

    s = {"__key__": "k1", "__url__": str(tmp_path / "train/shard-000003.tar"), "jpg": b"\xff\xd8garbage",
         "json": b"{not json", "txt": b"r\xf6t"}
    for fn, what in ((decode_rgb, ".jpg does not decode"), (sample_meta, ".json does not parse"),
                     (sample_caption, ".txt is not UTF-8")):
        with pytest.raises(ShardDataError, match=rf"shard-000003.tar: sample 'k1': .*\{what}.*shards verify"):
            fn(s)
    with pytest.raises(ShardDataError, match="sample 'k2' has no .jpg member"):
        decode_rgb({"__key__": "k2", "__url__": "x.tar"})
