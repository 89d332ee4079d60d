"""The fashion-mnist source on small IDX files in the real download's format: the official split kept (every
t10k item is `test`, nothing else is), pixels and labels carried into the shards, bad files named in clear
errors. Cost: ~3 s."""

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashiontune.cli import main
from fashiontune.shards.errors import BuildError
from fashiontune.shards.manifest import load_manifest
from fashiontune.shards.testing import read_samples
from fashiontune.sources import SourceError, get_source
from fashiontune.sources.fashion_mnist import CLASSES
from fashiontune.sources.idx import write_idx


def corpus(root: Path, n_train: int = 40, n_test: int = 12, gz: bool = True) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", np.arange(n, dtype=np.uint8) % 10)
    return root


def build(inp: Path, out: Path, *extra: str) -> int:
    return main(["shards", "build", "--source", "fashion-mnist", "--input", str(inp), "--out", str(out),
                 "--image-size", "28", "--shard-size", "16", "--workers", "1", "--quiet", *extra])


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_official_split_kept_and_pixels_carried(tmp_path, gz):
    inp = corpus(tmp_path / "fm", gz=gz)
    assert build(inp, tmp_path / "out") == 0
    assert main(["shards", "verify", str(tmp_path / "out")]) == 0  # every image decodes, counts and hashes match
    m = load_manifest(tmp_path / "out")
    assert m["params"]["fixed_splits"] == ["test"]
    assert m["splits"]["test"]["count"] == 12
    assert m["splits"]["train"]["count"] + m["splits"]["val"]["count"] == 40 and m["splits"]["val"]["count"] > 0
    samples = read_samples(tmp_path / "out")
    by_split = {}
    for key, s in samples.items():
        by_split.setdefault(s["json"]["split"], set()).add(key)
    assert by_split["test"] == {f"t10k-{i:05d}" for i in range(12)}
    assert all(k.startswith("train-") for k in by_split["train"] | by_split["val"])
    s = samples["t10k-00003"]
    with tarfile.open(tmp_path / "out" / s["split"] / s["shard"]) as tf:
        s.update({ext: tf.extractfile(f"t10k-00003.{ext}").read() for ext in ("jpg", "txt")})
    assert s["json"]["labels"] == {"group": "dress", "label": "Dress", "worn": ["lower-body", "upper-body"]}
    assert s["txt"] == b"a photo of a Dress."
    images = np.frombuffer(gzip.decompress((inp / "t10k-images-idx3-ubyte.gz").read_bytes()) if gz else
                           (inp / "t10k-images-idx3-ubyte").read_bytes(), np.uint8, offset=16).reshape(12, 28, 28)
    got = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("L"), dtype=np.float64)
    assert got.shape == (28, 28)
    assert np.abs(got - images[3]).mean() < 12  # JPEG at quality 90 of noise: close, not exact
    assert np.abs(got - images[4]).mean() > 50  # and not some other image


def test_classes_are_the_official_names():
    assert CLASSES[0] == "T-shirt/top" and CLASSES[9] == "Ankle boot" and len(CLASSES) == 10


def damage(inp: Path, how: str) -> Path:
    p = inp / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(p.read_bytes())
    if how == "magic":
        (inp / "train-labels-idx1-ubyte.gz").rename(tmp := inp / "x")
        p.rename(inp / "train-labels-idx1-ubyte.gz")
        tmp.rename(p)  # images and labels swapped: the wrong magic in both
        return p
    if how == "truncated":
        p.write_bytes(gzip.compress(data[:-100]))
    elif how == "cut-gzip":
        p.write_bytes(p.read_bytes()[:-300])
    elif how == "count":
        write_idx(inp / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8))
        return inp / "train-labels-idx1-ubyte.gz"
    return p


@pytest.mark.parametrize("how, words", [
    ("magic", ["magic number 2049, expected 2051"]),
    ("truncated", ["truncated", "31360 bytes"]),
    ("cut-gzip", ["cannot read"]),
    ("count", ["39 labels", "40 images"]),
])
def test_bad_idx_files_are_clear_errors_naming_the_file(tmp_path, how, words):
    inp = corpus(tmp_path / "fm")
    bad = damage(inp, how)
    with pytest.raises(SourceError) as e:
        list(get_source("fashion-mnist").iter_records(inp))
    assert str(bad) in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    assert build(inp, tmp_path / "out") == 2  # the CLI: one line, exit 2


def test_missing_file_names_it_and_the_package(tmp_path):
    inp = corpus(tmp_path / "fm")
    (inp / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SourceError, match="t10k-labels-idx1-ubyte.*dataset-fashion-mnist"):
        list(get_source("fashion-mnist").iter_records(inp))


def test_fixed_split_must_be_among_the_splits(tmp_path):
    inp = corpus(tmp_path / "fm")
    with pytest.raises(BuildError, match="fixes the split.*test.*--splits train=0.9,val=0.1,test=0"):
        from fashiontune.shards.build import build_shards
        from fashiontune.shards.config import ShardBuildConfig

        build_shards(ShardBuildConfig(source="fashion-mnist", input=str(inp), out=str(tmp_path / "o"),
                                      splits="train=0.9,val=0.1", workers=1, progress=False))
    # test=0 is fine: its fraction is ignored, the dataset decides
    assert build(inp, tmp_path / "out", "--splits", "train=0.9,val=0.1,test=0") == 0
    assert load_manifest(tmp_path / "out")["splits"]["test"]["count"] == 12


def test_csv_split_column_fixes_the_split_too(tmp_path):
    """The same contract in the csv source: a `split` column names the split a dataset defines for a row."""

    rows = ["image,caption,split,category"]
    for i in range(30):
        Image.new("RGB", (16, 16), (i * 8, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,item {i},{'test' if i < 6 else ''},c{i % 3}")
    (tmp_path / "items.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["shards", "build", "--source", "csv", "--input", str(tmp_path), "--out", str(out), "--workers", "1",
                 "--shard-size", "8", "--quiet"]) == 0
    m = load_manifest(out)
    assert m["splits"]["test"]["count"] == 6 and m["params"]["fixed_splits"] == ["test"]
    assert "split" not in m["labels"]  # a reserved column, not a label field
    assert {k for k, s in read_samples(out).items() if s["json"]["split"] == "test"} == {f"{i}_png" for i in range(6)}
