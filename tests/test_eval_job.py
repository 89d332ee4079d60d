"""The evaluation job end to end on hand-written tiny shards and the random-init tiny model (ft-tiny-vit).

Cost on one core: ~15 s to import open_clip + build the model once, ~1-3 s per run_eval on 13 items of 32 px
(5 runs + one tiny task export);
the 2-process test (accelerate launch, gloo) ~30-60 s and is marked `distributed`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fashiontune.config import load_config
from fashiontune.eval import embed as E
from fashiontune.eval.config import EvalConfig
from fashiontune.metrics.retrieval import rank_metrics, retrieval_ranks, same_product_ranks

ROOT = Path(__file__).resolve().parents[1]
COLORS = ["red", "blue", "green"]
TAGS = ["cotton", "denim", "striped"]


def item(i: int) -> dict:
    """13 items: products of 2 views (group p0..), some identical captions, some empty, missing labels."""
    caption = ["", "red dress", "blue shirt", "red dress"][i % 4] if i % 5 else f"unique item {i}"
    labels = {"color": COLORS[i % 3], "tags": sorted({TAGS[i % 3], TAGS[(i * 7) % 3]})}
    if i % 6 == 5:
        del labels["color"]  # a missing single-label value
    return {"key": f"it{i:03d}", "group": f"p{i // 2}", "caption": caption, "labels": labels}


def write_shards(root: Path, layout: dict[str, list[int]], image_px: int = 32) -> Path:
    """Shards in the format of shards/README.md, written with webdataset's TarWriter + a manifest."""
    import webdataset as wds
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    splits, i, counts = {}, 0, {"color": {}, "tags": {}}
    for split, sizes in layout.items():
        (root / split).mkdir(exist_ok=True)
        entries = []
        for s, size in enumerate(sizes):
            name = f"{split}/shard-{s:06d}.tar"
            with wds.TarWriter(str(root / name)) as tw:
                for _ in range(size):
                    it = item(i)
                    img = Image.fromarray(rng.integers(0, 255, (image_px, image_px, 3), dtype=np.uint8))
                    buf = io.BytesIO()
                    img.save(buf, format="JPEG")
                    meta = {"id": it["key"], "group_id": it["group"], "split": split, "labels": it["labels"]}
                    tw.write({"__key__": it["key"], "jpg": buf.getvalue(), "txt": it["caption"],
                              "json": json.dumps(meta).encode()})
                    for f, v in it["labels"].items():
                        for x in v if isinstance(v, list) else [v]:
                            counts[f][x] = counts[f].get(x, 0) + 1
                    i += 1
            data = (root / name).read_bytes()
            entries.append({"name": name, "count": size, "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
        splits[split] = {"count": sum(sizes), "shards": entries}
    manifest = {
        "format": "fashiontune-shards", "builder_version": 1, "source": "handwritten", "input": "", "params": {},
        "splits": splits,
        "labels": {"color": {"multi": False, "vocab": COLORS, "counts": counts["color"]},
                   "tags": {"multi": True, "vocab": TAGS, "counts": counts["tags"]}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    # 13 test items in uneven shards (5, 1, 7): with batch_size 3 that is 5 batches, not divisible by 2 ranks
    return write_shards(tmp_path_factory.mktemp("shards"), {"val": [4], "test": [5, 1, 7]})


def cfg_for(shards: Path, out: Path, *extra: str) -> EvalConfig:
    return load_config(EvalConfig, ROOT / "configs/eval/tiny.yaml",
                       [f"data.shards={shards}", f"out_dir={out}", "data.batch_size=3", *extra])


def strip(res: dict) -> dict:
    """Results without what legitimately differs between runs (timings, cache flag, paths, world size)."""
    return {k: v for k, v in res.items() if k not in ("seconds", "embeddings_cached", "config", "config_hash",
                                                       "world_size", "plots")}


def test_batch_range_partitions_every_item_once():
    for total in (0, 1, 7, 13, 100):
        for bs in (1, 3, 8):
            for world in (1, 2, 3, 5):
                ranges = [E.batch_range(total, bs, r, world) for r in range(world)]
                got = [i for s, e in ranges for i in range(s, e)]
                assert got == list(range(total)), (total, bs, world)
                assert all(s % bs == 0 for s, e in ranges if e > s)  # batches aligned globally


def test_run_eval_writes_results_plots_and_cache(shards, tmp_path):
    from fashiontune.eval.run import run_eval

    cfg = cfg_for(shards, tmp_path / "a")
    res = run_eval(cfg)
    out = tmp_path / "a"
    assert res["items"] == 13 and json.loads((out / "results.json").read_text())["items"] == 13
    assert set(res["retrieval"]) == {"t2i", "i2t", "i2i"}  # products of 2 views: image -> image too
    assert set(res["category"]) == {"color", "tags"}
    assert set(res["classification"]) == {"color/zero_shot", "tags/zero_shot"}
    assert res["classification"]["color/zero_shot"]["items"] == 13 - 2  # items 5 and 11 lack a color
    for p in res["plots"]:
        assert Path(p).read_bytes()[:4] == b"\x89PNG"
    assert (out / "plots" / "topk_t2i.png").is_file() and (out / "plots" / "confusion_color_zero_shot.png").is_file()
    assert "retrieval" in (out / "results.txt").read_text()
    # the cache holds the split in manifest order, and the metrics follow from it (exact recomputation)
    keys = json.loads((out / "embeddings" / "items.json").read_text())["keys"]
    assert keys == [f"it{i:03d}" for i in range(4, 17)]  # the val split holds it000..it003
    img, txt = np.load(out / "embeddings/image.npy"), np.load(out / "embeddings/text.npy")
    assert img.shape[0] == txt.shape[0] == 13 and np.allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-5)
    items = [item(i) for i in range(4, 17)]
    img = img / np.linalg.norm(img, axis=1, keepdims=True)  # raw image features are cached (for heads)
    ranks = retrieval_ranks(torch.from_numpy(img), torch.from_numpy(txt), [x["group"] for x in items],
                            [x["caption"] for x in items], k=50, device="cpu")
    assert res["retrieval"]["t2i"] == rank_metrics(ranks["t2i"].first_rank, (1, 5, 10, 50))
    assert np.array_equal(np.load(out / "ranks_i2t.npy"), ranks["i2t"].first_rank.numpy())
    same = same_product_ranks(torch.from_numpy(img), [x["group"] for x in items], k=50, device="cpu")
    assert res["retrieval"]["i2i"] == rank_metrics(same.first_rank, (1, 5, 10, 50))
    assert res["retrieval"]["i2i"]["queries"] == 6  # p2..p7 have 2 test images (p8 one): the first queries


def test_cached_embeddings_give_same_results_without_reembedding(shards, tmp_path, monkeypatch):
    from fashiontune.eval import run as R

    cfg = cfg_for(shards, tmp_path / "c", "data.split=val")
    fresh = R.run_eval(cfg)
    assert fresh["embeddings_cached"] is False

    def no_embedding(*a, **k):
        raise AssertionError("re-embedded although the cache matches")

    monkeypatch.setattr(R, "_embed", no_embedding)
    again = R.run_eval(cfg)
    assert again["embeddings_cached"] is True and strip(again) == strip(fresh)
    # a different model (image size) invalidates the cache: it must embed again
    with pytest.raises(AssertionError, match="re-embedded"):
        R.run_eval(cfg_for(shards, tmp_path / "c", "data.split=val", "model.image_size=32"))


def test_decode_workers_keep_the_order(shards, tmp_path):
    """data.num_workers=2: each worker decodes a contiguous run of batches, the rank restores the item order,
    so the embedded split is the same, in the same order, bit for bit, as with no workers."""
    from fashiontune.eval.run import run_eval

    a = run_eval(cfg_for(shards, tmp_path / "w0", "plots.grid_queries=0", "data.num_workers=0"))
    b = run_eval(cfg_for(shards, tmp_path / "w2", "plots.grid_queries=0", "data.num_workers=2"))
    assert strip(a) == strip(b)
    for f in ("items.json", "image.npy"):
        assert (tmp_path / "w0/embeddings" / f).read_bytes() == (tmp_path / "w2/embeddings" / f).read_bytes()


def test_bf16_embedding_is_close_to_fp32_and_scored_in_fp32(shards, tmp_path):
    from fashiontune.eval.run import run_eval

    args = ("data.split=val", "plots.grid_queries=0")
    run_eval(cfg_for(shards, tmp_path / "fp32", *args, "precision=fp32"))
    run_eval(cfg_for(shards, tmp_path / "bf16", *args, "precision=bf16"))
    a, b = (np.load(tmp_path / d / "embeddings/image.npy") for d in ("fp32", "bf16"))
    assert a.dtype == b.dtype == np.float32  # autocast output is cast back: scoring input is fp32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert not np.array_equal(a, b) and cos.min() > 0.99


def test_cli_runs_and_names_a_bad_key(shards, tmp_path, capsys):
    from fashiontune.cli import main

    args = ["eval", "--config", str(ROOT / "configs/eval/tiny.yaml"), f"data.shards={shards}", "data.split=val",
            f"out_dir={tmp_path / 'cli'}", "plots.grid_queries=0"]
    assert main(args) == 0
    assert "retrieval (full corpus" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli/results.json").read_text())["items"] == 4
    assert main([*args, "retrieval.kss=[1]"]) == 2
    assert "Did you mean 'retrieval.ks'" in capsys.readouterr().err
    assert main([*args, "model.checkpoint=/nonexistent/export"]) == 2
    assert "model.checkpoint=/nonexistent/export: no such file or directory" in capsys.readouterr().err


def test_manifest_count_mismatch_is_an_error_naming_the_shard(shards, tmp_path):
    from fashiontune.eval.run import run_eval

    bad = tmp_path / "bad"
    bad.mkdir()
    m = json.loads((shards / "manifest.json").read_text())
    m["splits"]["val"]["shards"][0]["count"] = 5
    m["splits"]["val"]["count"] = 5
    (bad / "manifest.json").write_text(json.dumps(m))
    (bad / "val").symlink_to(shards / "val")
    from fashiontune.data.manifest import ManifestError
    from fashiontune.data.samples import ShardDataError

    with pytest.raises(ShardDataError, match=r"shard-000000.tar: manifest.json says 5 samples, the tar holds 4"):
        run_eval(cfg_for(bad, tmp_path / "o", "data.split=val", "cache=false"))
    with pytest.raises(ManifestError, match="no split 'nope'.*data.split"):
        run_eval(cfg_for(shards, tmp_path / "o", "data.split=nope"))


@pytest.mark.parametrize("task_name,field,backbone", [("classify", "color", "open_clip"), ("labeltext", "color", "open_clip"),
                                                      ("multilabel", "tags", "open_clip"), ("classify", "color", "timm")])
def test_exported_heads_are_scored_like_the_task_predicts(shards, tmp_path, task_name, field, backbone):
    """Train-side export (fashiontune.tasks at image_size 32: linear head, label-prompt head, multi-label head,
    and a linear head on an image-only timm backbone) -> eval with model.checkpoint=<export>: the report equals the one computed from the task module's own
    outputs on the decoded test images (multi-label at the threshold exported with the head)."""
    from PIL import Image

    from fashiontune.data.samples import iter_range
    from fashiontune.eval.run import run_eval
    from fashiontune.metrics.classification import multi_label_report, single_label_report
    from fashiontune.models import ModelConfig, load_clip
    from fashiontune.tasks import build_task
    from fashiontune.tasks.config import TaskConfig

    manifest = json.loads((shards / "manifest.json").read_text())
    torch.manual_seed(1)
    loaded = load_clip(ModelConfig(name="ft-tiny-vit", image_size=32, backbone=backbone, timm_name="resnet18"))
    task = build_task(TaskConfig(name=task_name, field=field), loaded, manifest)
    task.export(tmp_path / "export")
    res = run_eval(cfg_for(shards, tmp_path / "ev", f"model.checkpoint={tmp_path / 'export'}", "plots.grid_queries=0"))
    rep = res["classification"][f"{field}/{task_name}"]
    assert set(res["retrieval"]) == ({"i2i"} if backbone == "timm" else {"t2i", "i2t", "i2i"})  # image-only: i2i
    vocab = manifest["labels"][field]["vocab"]
    scores, truth = [], []
    task.module.eval()
    for _, sample in iter_range(E.eval_shards(manifest, shards, "test"), 0, 13):
        _, _, _, labels = E.parse_sample(sample)
        with Image.open(io.BytesIO(sample["jpg"])) as im, torch.no_grad():
            scores.append(task.module(loaded.preprocess_val(im.convert("RGB")).unsqueeze(0))[field][0].numpy())
        value = labels.get(field)
        truth.append([int(v in value) for v in vocab] if field == "tags" else
                     (vocab.index(value) if value is not None else -1))
    if field == "tags":
        probs = 1 / (1 + np.exp(-np.array(scores)))
        ref = multi_label_report(np.array(truth), probs, vocab, threshold=task.thresholds[field])
        keys = ("micro_f1", "macro_f1", "mAP", "exact_match")
    else:
        ref = single_label_report(np.array(truth), np.array(scores), vocab)
        keys = ("accuracy", "macro_f1", "weighted_f1")
        assert (tmp_path / f"ev/plots/confusion_{field}_{task_name}.png").is_file()
    assert rep["items"] == ref["items"] == (13 if field == "tags" else 11)
    for k in keys:
        assert rep[k] == pytest.approx(ref[k], abs=1e-6), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~60 s: two fresh interpreters import torch + open_clip
@pytest.mark.distributed
def test_two_processes_give_the_same_results_as_one(shards, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 jobs/eval.py` on CPU (torchrun underneath, gloo) vs one process: identical embeddings
    (bit for bit: batches are globally aligned) and identical metrics, with 13 items in 5 batches of 3."""
    from fashiontune.eval.run import run_eval

    one = run_eval(cfg_for(shards, tmp_path / "one", "cache=false"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(ROOT / "jobs/eval.py"), "--config", str(ROOT / "configs/eval/tiny.yaml"),
           f"data.shards={shards}", f"out_dir={tmp_path / 'two'}", "data.batch_size=3", "cache=false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["world_size"] == 2 and two["items"] == 13
    assert strip(two) == json.loads(json.dumps(strip(one)))
    for f in ("image.npy", "text.npy", "prompts.color.npy"):
        assert np.array_equal(np.load(tmp_path / "one/embeddings" / f), np.load(tmp_path / "two/embeddings" / f))
    assert "retrieval" in proc.stdout


def test_the_whole_corpus_is_every_split_in_manifest_order(shards, tmp_path):
    """data.split=all (the leaderboard's documents: every item of the dataset) embeds val then test, 17 items,
    the same as naming both splits; the test split's own embeddings are the tail of it (batches aligned)."""
    from fashiontune.eval.run import run_eval

    whole = run_eval(cfg_for(shards, tmp_path / "all", "data.split=all", "data.batch_size=4"))
    named = run_eval(cfg_for(shards, tmp_path / "named", "data.split=val,test", "data.batch_size=4"))
    assert whole["items"] == named["items"] == 17
    keys = json.loads((tmp_path / "all" / "embeddings" / "items.json").read_text())["keys"]
    assert keys == [f"it{i:03d}" for i in range(17)]
    assert strip(whole)["retrieval"] == strip(named)["retrieval"]
    assert np.array_equal(np.load(tmp_path / "all/embeddings/image.npy"), np.load(tmp_path / "named/embeddings/image.npy"))
    with pytest.raises(Exception, match="no split 'nope'"):
        run_eval(cfg_for(shards, tmp_path / "bad", "data.split=test,nope"))
