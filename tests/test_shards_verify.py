"""`shards verify` catches truncated, modified, missing and undecodable shards, by name. Cost: ~1 s."""

import io
import json
import tarfile

import pytest

from fashiontune.cli import main
from fashiontune.shards.build import build_shards
from fashiontune.shards.config import ShardBuildConfig
from fashiontune.shards.testing import ListSource, make_corpus
from fashiontune.shards.verify import verify


@pytest.fixture
def built(tmp_path):
    root, out = tmp_path / "c", tmp_path / "o"
    recs = make_corpus(root, 24, seed=3)
    cfg = ShardBuildConfig(input=str(root), out=str(out), image_size=32, shard_size=4, workers=1, progress=False)
    return out, build_shards(cfg, ListSource(recs))


def test_clean_build_verifies(built, capsys):
    out, m = built
    rep = verify(out)
    assert rep.ok and rep.samples_checked == m["items"]["written"] == 24
    assert main(["shards", "verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out


def test_truncated_shard_is_named(built, capsys):
    out, m = built
    name = m["splits"]["train"]["shards"][1]["name"]
    p = out / name
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    rep = verify(out)
    assert not rep.ok and any(x.startswith(f"{name}: truncated") for x in rep.problems)
    assert main(["shards", "verify", str(out)]) == 1
    assert f"{name}: truncated" in capsys.readouterr().out


def test_modified_shard_is_named(built):
    out, m = built
    name = m["splits"]["train"]["shards"][0]["name"]
    p = out / name
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x01  # one bit in the middle of the shard
    p.write_bytes(bytes(data))
    rep = verify(out)
    assert f"{name}: modified (sha256 differs from the manifest)" in rep.problems


def test_missing_shard_and_undecodable_sample(built):
    out, m = built
    gone = m["splits"]["train"]["shards"][0]["name"]
    (out / gone).unlink()
    # a shard rewritten with one sample whose jpg does not decode (and the manifest "fixed" to match sizes)
    name = m["splits"]["train"]["shards"][1]["name"]
    p = out / name
    buf = io.BytesIO()
    with tarfile.open(p) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for ti in src:
            data = src.extractfile(ti).read()
            if ti.name.endswith(".jpg"):
                data = data[:40]
                ti.size = len(data)
            dst.addfile(ti, io.BytesIO(data))
    p.write_bytes(buf.getvalue())
    rep = verify(out)
    assert f"{gone}: missing" in rep.problems
    assert any(x.startswith(f"{name}: sample") and "does not decode" in x for x in rep.problems)
    assert any(x.startswith("split train:") for x in rep.problems)
    assert not verify(out, decode=False).ok  # still fails on the missing shard
    json.loads((out / "manifest.json").read_text())  # verify never touches the manifest
