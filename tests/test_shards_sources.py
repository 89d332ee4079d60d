"""Every source end to end through the CLI: synthetic corpus with quirks on -> build -> verify -> every
listed item is in exactly one place: a shard, or errors.jsonl with a reason. Cost: ~1 s per source.
"""

import csv
import json
from pathlib import Path

import pytest

from fashiontune.cli import main
from fashiontune.records import Skip
from fashiontune.shards.manifest import load_manifest
from fashiontune.shards.testing import read_samples
from fashiontune.sources import get_source
from fashiontune.synth import FORMATS, generate, load_quirks

IMAGE_ERRORS = {"missing_image", "truncated_image", "corrupt_image", "undecodable_image"}


def build(source: str, inp: Path, out: Path) -> dict:
    rc = main(["shards", "build", "--source", source, "--input", str(inp), "--out", str(out), "--image-size", "32",
               "--shard-size", "8", "--workers", "1", "--max-bad-fraction", "0.5", "--quiet"])
    assert rc == 0
    assert main(["shards", "verify", str(out)]) == 0
    return load_manifest(out)


def shard_samples(out: Path) -> dict[str, dict]:
    return {k: v["json"] for k, v in read_samples(out).items()}


def account(source: str, inp: Path, out: Path, m: dict):
    """Every listed item is written or has an error line; nothing twice, nothing lost."""
    listed = list(get_source(source).iter_records(inp))
    samples = shard_samples(out)
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert all(e["reason"] and e["id"] is not None for e in errors)
    assert m["items"] == {"listed": len(listed), "written": len(samples), "skipped": len(errors)}
    assert len(samples) + len(errors) == len(listed)
    err_ids = {e["id"] for e in errors}
    for r in listed:
        assert (r.id in samples) != (r.id in err_ids) or isinstance(r, Skip), f"{r.id} is in both or neither"
        if isinstance(r, Skip):
            assert r.id in err_ids
    return samples, {e["id"]: e for e in errors}


@pytest.mark.parametrize("fmt", FORMATS)
def test_synthetic_corpus_end_to_end(fmt, tmp_path):
    inp = generate(fmt, tmp_path / "corpus", 30, seed=4, quirk_rate=0.5)
    out = tmp_path / "shards"
    m = build(fmt, inp, out)
    samples, errors = account(fmt, inp, out, m)
    log = load_quirks(inp)
    outcome = log["outcome"]
    seen_kinds = set()
    for item, kinds in {**log["structural"], **log["items"]}.items():
        for kind in kinds:
            seen_kinds.add(kind)
            if outcome[kind] == "error":
                assert errors[item]["reason"] in IMAGE_ERRORS, (item, kind, errors.get(item))
            elif outcome[kind] == "row_error":  # a damaged row of the item (the item may still be written)
                assert any(e == item or e.startswith(item + "_line") for e in errors), (item, kind)
            elif outcome[kind] in ("repaired", "kept", "absent"):
                assert item in samples, f"{kind} item {item} should be in a shard; error: {errors.get(item)}"
                if kind.startswith("empty_"):
                    assert kind[len("empty_"):] not in samples[item]["labels"]
    for rel, kinds in log["files"].items():
        for kind in kinds:
            if outcome[kind] == "row_error":
                assert any(e["path"].endswith(rel) for e in errors.values()), (rel, kind)
    assert {"grayscale", "cmyk", "palette_png_alpha", "exif_rotated", "truncated"} <= seen_kinds
    # shards hold real label vocabularies, split by group without straddling
    assert m["labels"] and all(lab["vocab"] for lab in m["labels"].values() if lab["counts"])
    groups: dict[str, set] = {}
    for s in samples.values():
        groups.setdefault(s["group_id"], set()).add(s["split"])
    assert all(len(v) == 1 for v in groups.values())


def test_csv_catalogue_end_to_end(tmp_path):
    folder = generate("folder", tmp_path / "corpus", 24, seed=5, quirk_rate=0.25)
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    path = folder / "items.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "id", "group_id", "category", "tags"])
        for i, p in enumerate(images):
            tags = "plain" if i % 3 else "striped|long-sleeve"
            w.writerow([str(p.relative_to(folder)), f"a {p.parent.name} item", f"i{i}", f"g{i // 2}",
                        p.parent.name, tags])
        w.writerow(["no/such/file.jpg", "gone", "gone", "g-gone", "bags", "plain"])
        w.writerow(["too", "few"])
        w.writerow([str(images[0].relative_to(folder)), "again", "i0", "g0", "bags", "plain"])
    out = tmp_path / "shards"
    m = build("csv", path, out)
    samples, errors = account("csv", path, out, m)
    reasons = {e["reason"] for e in errors.values()}
    assert {"missing_image", "unparsable_row", "duplicate_id", "truncated_image"} <= reasons
    assert errors["gone"]["reason"] == "missing_image"
    assert m["labels"]["tags"]["multi"] is True and m["labels"]["category"]["multi"] is False
    assert sorted(samples["i0"]["labels"]["tags"]) == ["long-sleeve", "striped"]
