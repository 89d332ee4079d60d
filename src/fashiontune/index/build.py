"""`build_index(cfg)`: embed a catalogue (the eval job's embedding pass and cache, on every rank) and write

    <out>/config.yaml       the resolved IndexConfig (the app reloads the model from it)
    <out>/embeddings/       the eval cache: image.npy (raw features), text.npy, prompts.<field>.npy, items.json
    <out>/items.jsonl       per item: id, group, caption, labels, shard, offset, size (of its .jpg member)
    <out>/faiss.index       over the L2-normalised image embeddings (inner product = cosine)
    <out>/index.json        written last (marks a complete index): counts, kind, recall@10 of an approximate
                            index against the exact one, the label fields, the shard directory
    <out>/results.json      the model's eval results, when `results` is given
    <out>/tokens/image.npy  with tokens=true: the items' image patch tokens (N x P x W, fp16) for serve's re-ranker
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from fashiontune.config import save_config, to_dict
from fashiontune.errors import UserError
from fashiontune.eval import embed as E
from fashiontune.eval import run as R
from fashiontune.index import faiss_index as F
from fashiontune.index.config import IndexConfig
from fashiontune.index.locate import image_locations
from fashiontune.shards.manifest import load_manifest

FORMAT = "fashiontune-index"
VERSION = 1


def build_index(cfg: IndexConfig) -> dict:
    """Write the index directory; returns index.json's content on rank 0 ({} on the other ranks)."""
    cfg.validate()
    t0 = time.perf_counter()
    if cfg.results and not Path(cfg.results).is_file():
        raise UserError(f"results={cfg.results}: no such file; pass the model's eval results.json or leave it empty.")
    ev = cfg.as_eval()
    state = R.dist_state()
    out, shards_dir = Path(cfg.out), Path(cfg.data.shards)
    manifest = load_manifest(shards_dir)
    shards = E.eval_shards(manifest, shards_dir, cfg.data.split)
    fields = R.label_fields(ev, manifest)
    from fashiontune.eval.model import fingerprint

    model_fp = fingerprint(cfg.model)
    if state.is_main_process:
        save_config(cfg, out)
        (out / "index.json").unlink(missing_ok=True)  # a rebuild is incomplete until its own index.json lands
    corpus, cached = R.embed_or_load(ev, manifest, fields, model_fp, state, out / "embeddings")
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    t_embed = time.perf_counter() - t0
    info = write_index(out, cfg, corpus, image_locations(shards, shards_dir, corpus.keys), fields)
    info.update(embeddings_cached=cached, world_size=state.num_processes)
    if cfg.tokens:
        info["tokens"] = write_tokens(out, cfg, shards, corpus.keys)
    if cfg.results:
        shutil.copyfile(cfg.results, out / "results.json")
        info["results"] = "results.json"
    info["seconds"] = {"embed_or_load": round(t_embed, 3), "total": round(time.perf_counter() - t0, 3)}
    (out / "index.json").write_text(json.dumps(info, indent=2))
    return info


def write_index(out: Path, cfg: IndexConfig, corpus: E.Corpus, locations: list[dict], fields: dict) -> dict:
    """items.jsonl + faiss.index for an embedded corpus; returns index.json's content (the caller writes it
    last). Also bench/serve.py's way to make a big index from synthetic embeddings."""
    _write_items(out, corpus, locations)
    vectors = F.normalise(corpus.image)
    index = F.build(cfg.kind, vectors, cfg.approx)
    info = {"format": FORMAT, "version": VERSION, "items": len(corpus), "dim": int(vectors.shape[1]),
            "kind": cfg.kind, "approx": to_dict(cfg.approx) if cfg.kind != "flat" else None,
            "has_text": corpus.text is not None, "shards": str(Path(cfg.data.shards).resolve()), "split": cfg.data.split,
            "fields": {f: {"vocab": s["vocab"], "multi": bool(s.get("multi"))} for f, s in fields.items()},
            "model": cfg.model.checkpoint or cfg.model.name, "results": None}
    if cfg.kind != "flat":
        info["recall@10"] = F.recall_at_k(index, vectors, _recall_queries(corpus, vectors, cfg))
    import faiss

    faiss.write_index(index, str(out / "faiss.index"))
    return info


def write_tokens(out: Path, cfg: IndexConfig, shards: list, keys: list[str]) -> dict:
    """tokens/image.npy: the items' image patch tokens (fp16, item order) from the index's own towers, through
    the eval job's token bank (eval/rerank.embed_bank, one pass on this process); returns index.json's "tokens"."""
    import torch

    from fashiontune.data.samples import ShardDataError
    from fashiontune.eval.model import load_eval_model
    from fashiontune.eval.rerank import embed_bank
    from fashiontune.models.cross import TokenError

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)  # random-init models: the weights of the embedding pass
    loaded, _ = load_eval_model(cfg.model)
    try:
        bank = embed_bank(loaded, shards, 0, len(keys), cfg.data.batch_size, device,
                          cfg.precision.resolve(device.type).value)
    except TokenError as e:
        raise UserError(f"{cfg.out}: tokens=true: {e} Or build the index without tokens=true.") from e
    if bank.keys != keys:
        raise ShardDataError(f"{cfg.data.shards}: the token pass read the split in another order; rebuild the shards")
    (out / "tokens").mkdir(exist_ok=True)
    np.save(out / "tokens" / "image.npy", bank.image_tok.numpy())
    return {"image": "tokens/image.npy", "shape": list(bank.image_tok.shape), "dtype": "float16"}


def _write_items(out: Path, corpus: E.Corpus, locations: list[dict]) -> None:
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        for i, loc in enumerate(locations):
            row = {"id": corpus.keys[i], "group": corpus.group_ids[i], "caption": corpus.captions[i],
                   "labels": corpus.labels[i], **loc}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _recall_queries(corpus: E.Corpus, vectors: np.ndarray, cfg: IndexConfig) -> np.ndarray:
    """A seeded sample of the catalogue's caption embeddings (text search is what the app does most), or of its
    image embeddings for an image-only model."""
    pool = F.normalise(corpus.text) if corpus.text is not None else vectors
    rng = np.random.default_rng(cfg.seed)
    take = rng.choice(len(pool), size=min(len(pool), cfg.approx.recall_queries), replace=False)
    return np.ascontiguousarray(pool[np.sort(take)])


def summary(info: dict) -> str:
    """One line for the terminal (also `submit index`)."""
    recall = f", recall@10 vs exact {info['recall@10']:.3f}" if "recall@10" in info else ""
    return f"index of {info.get('items')} items ({info.get('kind')}{recall}) in {info.get('seconds', {}).get('total')} s"
