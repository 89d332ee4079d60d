"""Label encoding from the manifest's vocabularies and the data config checks (in-memory, < 1 s)."""

import pytest
import torch

from fashiontune.config import ConfigError, load_config
from fashiontune.data import DataConfig, EpochMode, ManifestError, build_encoders
from fashiontune.data.balance import ClassBalancer
from fashiontune.data.plan import exact_slot_counts, round_robin_position

MANIFEST = {
    "source": "test",
    "splits": {"train": {"count": 10, "shards": []}},
    "labels": {
        "color": {"multi": False, "vocab": ["blue", "red"], "counts": {"blue": 3, "red": 6},
                  "split_counts": {"train": {"blue": 3, "red": 6}}},
        "tags": {"multi": True, "vocab": ["a", "b", "c"], "counts": {"a": 5, "b": 2, "c": 1}},
    },
}


def test_single_label_indices_missing_and_unknown_are_minus_one():
    enc = build_encoders(MANIFEST, ["color"])["color"]
    out = enc.encode(["red", "blue", None, "green"])
    assert out.dtype == torch.long and out.tolist() == [1, 0, -1, -1]
    assert enc.decode(1) == "red" and enc.decode(-1) is None


def test_multi_label_multi_hot_with_missing_and_scalar():
    enc = build_encoders(MANIFEST, ["tags"])["tags"]
    out = enc.encode([["c", "a"], None, "b", ["zzz"], []])
    assert out.dtype == torch.float32 and out.shape == (5, 3)
    assert out.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]]


def test_vocab_comes_from_manifest_and_bad_fields_are_named():
    encs = build_encoders(MANIFEST)  # all fields, manifest order of vocab kept
    assert list(encs) == ["color", "tags"] and encs["tags"].vocab == ["a", "b", "c"]
    with pytest.raises(ManifestError, match="'colour'.*color"):
        build_encoders(MANIFEST, ["colour"])
    with pytest.raises(ValueError, match="single-label"):
        encs["color"].encode([["red", "blue"]])


def test_balancer_acceptance_is_inverse_frequency():
    b = ClassBalancer(MANIFEST, "color", "train", power=1.0)
    # counts: blue 3, red 6, missing 10-9=1 -> rarest is "missing" with 1
    assert b.probability({"color": "red"}) == pytest.approx(1 / 6)
    assert b.probability({"color": "blue"}) == pytest.approx(1 / 3)
    assert b.probability({}) == pytest.approx(1.0)
    m = ClassBalancer(MANIFEST, "tags", "train")
    assert m.probability({"tags": ["a", "c"]}) == pytest.approx(1.0)  # rarest label wins
    assert m.probability({"tags": ["a"]}) == pytest.approx(1 / 5)


def test_config_yaml_and_cross_checks(tmp_path):
    for path in ["configs/data/default.yaml", "configs/data/balanced.yaml", "configs/data/multinode.yaml"]:
        cfg = load_config(DataConfig, path).validate(path)
        assert cfg.batch_size >= 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("balance_field: color\nepoch_mode: exact\n")
    with pytest.raises(ConfigError, match="epoch_mode=resampled"):
        load_config(DataConfig, bad).validate(str(bad))
    with pytest.raises(ConfigError, match="epoch_mode"):
        load_config(DataConfig, None, ["epoch_mode=sometimes"])
    assert load_config(DataConfig, None, ["epoch_mode=resampled"]).epoch_mode == EpochMode.resampled


@pytest.mark.parametrize("total,world,workers", [(10, 2, 2), (3, 2, 2), (101, 3, 4), (7, 1, 1)])
def test_exact_slots_cover_everything_evenly(total, world, workers):
    counts = exact_slot_counts(total, world, workers)
    flat = [c for row in counts for c in row]
    assert sum(flat) == total and max(flat) - min(flat) <= 1
    per_rank = [sum(r) for r in counts]
    assert max(per_rank) - min(per_rank) <= 1


def _simulate_round_robin(counts):
    rem, order = list(counts), []
    while any(rem):
        for w in range(len(rem)):
            if rem[w]:
                rem[w] -= 1
                order.append(w)
    return order


@pytest.mark.parametrize("counts", [[3, 3], [3, 1, 2], [0, 4, 1], [5, 5, 4, 1]])
def test_round_robin_position_matches_a_replay(counts):
    order = _simulate_round_robin(counts)
    for k in range(len(order) + 1):
        taken, nxt = round_robin_position(counts, k)
        assert taken == [order[:k].count(w) for w in range(len(counts))]
        if k < len(order):
            # a loader restarted with worker j playing (j + nxt) % n continues with the same worker sequence
            rem = [c - t for c, t in zip(counts, taken)]
            rotated = [rem[(j + nxt) % len(counts)] for j in range(len(counts))]
            resumed = [(j + nxt) % len(counts) for j in _simulate_round_robin(rotated)]
            assert resumed == order[k:]
