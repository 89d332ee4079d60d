"""One served index: its items, faiss index, label prompts, eval results and (loaded on first use) the model
that embeds queries and uploads. Every file it reads is named by the index directory the server was started
with; clients only pass item ids and positions, which are looked up, never used as paths."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fashiontune.errors import UserError
from fashiontune.index import faiss_index as F
from fashiontune.index.build import FORMAT
from fashiontune.index.locate import read_image_bytes
from fashiontune.serve.batching import Batcher

CPU = torch.device("cpu")  # the app embeds single uploads and small text batches: no GPU needed
TEXT_BATCH = 32  # most queries run in one text-search batch
BATCH_WORKERS = 2  # batches computed at once: one per core of the 2-core machine it was measured on
ZERO_SHOT_SCALE = 100.0  # CLIP's logit scale: softmax(100 * cosine) over a field's label prompts


@dataclass
class Hit:
    pos: int
    score: float


class Catalogue:
    def __init__(self, index_dir: str | Path, slot: int = 0):
        from fashiontune.config import load_config
        from fashiontune.index.config import IndexConfig

        self.dir, self.slot = Path(index_dir), slot
        self.info = _read_info(self.dir)
        self.cfg = load_config(IndexConfig, self.dir / "config.yaml")
        with open(self.dir / "items.jsonl", encoding="utf-8") as f:
            self.items = [json.loads(line) for line in f]
        self.positions = {it["id"]: i for i, it in enumerate(self.items)}
        self.vectors = F.normalise(np.load(self.dir / "embeddings" / "image.npy"))
        self.prompts = {f: np.load(p) for f in self.info["fields"]
                        if (p := self.dir / "embeddings" / f"prompts.{f}.npy").is_file()}
        self.results = json.loads((self.dir / "results.json").read_text()) if self.info.get("results") else None
        self.shards = Path(self.info["shards"])
        self.name = self.dir.name
        self._index = None
        self._model = None  # (LoadedModel, heads or None), built on first query
        self.reranker = None  # serve/rerank.Reranker: text search re-ordered by a cross-encoder (attach_reranker)
        self._lock = threading.Lock()  # the model is loaded once; forwards run concurrently (inference only)
        self._text_batcher = Batcher(self._search_texts, max_batch=TEXT_BATCH, workers=BATCH_WORKERS,
                                     name=f"text-search-{slot}")

    def __len__(self) -> int:
        return len(self.items)

    # ------------------------------------------------------------------ search
    @property
    def index(self):
        if self._index is None:
            import faiss

            self._index = faiss.read_index(str(self.dir / "faiss.index"))
            F.tune(self._index, self.info["kind"], self.cfg.approx)
        return self._index

    def search(self, query: np.ndarray, k: int, exclude: int = -1) -> list[Hit]:
        """Top-k items for one normalised 1 x d query (inner product = cosine), best first."""
        return self.search_many(query, [k], exclude)[0]

    def search_many(self, queries: np.ndarray, ks: Sequence[int], exclude: int = -1) -> list[list[Hit]]:
        """Top-ks[i] items for each normalised row of `queries`, in one faiss call (it scans the catalogue once
        for the whole batch)."""
        kmax = min(max(ks), len(self))
        scores, idx = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), kmax + (exclude >= 0))
        out = []
        for row_s, row_i, k in zip(scores, idx, ks):
            hits = [Hit(int(i), float(s)) for s, i in zip(row_s, row_i) if i >= 0 and i != exclude]
            out.append(hits[:k])
        return out

    def search_text(self, text: str, k: int) -> list[Hit]:
        """Text search as the app runs it: concurrent requests are encoded and searched together (batching.py)."""
        self._require_text()
        return self._text_batcher.submit((text, k))

    async def search_text_async(self, text: str, k: int) -> list[Hit]:
        self._require_text()
        return await self._text_batcher.submit_async((text, k))

    def _search_texts(self, batch: Sequence[tuple[str, int]]) -> list[list[Hit]]:
        texts, ks = [t for t, _ in batch], [k for _, k in batch]
        if self.reranker is not None:
            return self.reranker.search_texts(self, texts, ks)
        return self.search_many(self.text_queries(texts), ks)

    def attach_reranker(self, cfg) -> None:
        """Re-rank text search with the cross-encoder of `cfg.model` (a RerankEvalConfig), checked against this
        index at once (serve/rerank.py)."""
        from fashiontune.serve.rerank import Reranker

        self.reranker = Reranker(self, cfg)

    def rerank_info(self) -> dict | None:
        """The API's `reranked` field of a text search: {"model", "k"}, or None (the dual encoder's order)."""
        return None if self.reranker is None else self.reranker.describe(len(self))

    def text_query(self, text: str) -> np.ndarray:
        return self.text_queries([text])

    def text_queries(self, texts: Sequence[str]) -> np.ndarray:
        from fashiontune.eval.protocol import embed_texts

        loaded, _ = self.model()
        self._require_text()
        return embed_texts(loaded, texts, CPU, self._precision())

    def _require_text(self) -> None:
        if not self.info.get("has_text"):
            raise UserError(f"model {self.info['model']} has no text tower: search by image instead")

    def image_features(self, image) -> np.ndarray:
        """1 x d raw image features of a PIL RGB image (the index's embedding transform)."""
        from fashiontune.eval.embed import embed_images

        loaded, _ = self.model()
        return embed_images(loaded, [image], CPU, self._precision())

    # ------------------------------------------------------------------ classify
    def classify(self, image) -> dict:
        """Per label field: {"multi", "methods": {method: {"labels", "probs", "predicted"}}} from the exported
        heads (as the eval job applies them) and from zero-shot label prompts."""
        from fashiontune.eval.heads import head_logits

        feats = self.image_features(image)
        _, heads = self.model()
        out = {}
        for field, spec in self.info["fields"].items():
            methods = {}
            if heads is not None and field in heads[1].get("fields", {}):
                hspec = heads[1]["fields"][field]
                logits = head_logits(heads[0], hspec, feats)[0]
                methods[heads[1].get("task", "head")] = _probabilities(logits, hspec["vocab"], hspec.get("multi", False),
                                                                       hspec.get("threshold"))
            if field in self.prompts and len(self.prompts[field]):
                cos = F.normalise(feats)[0] @ self.prompts[field].T
                methods["zero_shot"] = _probabilities(ZERO_SHOT_SCALE * cos, spec["vocab"], False, None)
            out[field] = {"multi": spec["multi"], "methods": methods}
        return out

    # ------------------------------------------------------------------ items
    def item_json(self, pos: int, score: float | None = None) -> dict:
        it = self.items[pos]
        out = {"id": it["id"], "group": it["group"], "caption": it["caption"], "labels": it["labels"],
               "thumbnail": f"/thumb/{self.slot}/{pos}.jpg"}
        if score is not None:
            out["score"] = round(score, 6)
        return out

    def image_bytes(self, pos: int) -> bytes:
        """The item's JPEG as the shard stores it (already resized by the shard builder), read by byte offset."""
        return read_image_bytes(self.shards, self.items[pos])

    def describe(self) -> dict:
        """GET /api/models: what is served, and the per-class metrics of the model's eval results."""
        keep = ("items", "dim", "kind", "approx", "recall@10", "split", "has_text", "model", "fields")
        return {"slot": self.slot, "name": self.name, **{k: self.info.get(k) for k in keep},
                "rerank": self.rerank_info(), "metrics": _per_class(self.results)}

    # ------------------------------------------------------------------ model
    def model(self):
        with self._lock:
            if self._model is None:
                from fashiontune.eval.heads import load_export_heads
                from fashiontune.eval.model import load_eval_model

                torch.manual_seed(self.cfg.seed)  # random-init models: the weights the index was built with
                loaded, export_dir = load_eval_model(self.cfg.model)
                self._model = (loaded, load_export_heads(export_dir))
            return self._model

    def _precision(self) -> str:
        return self.cfg.precision.resolve("cpu").value


def set_threads(n: int) -> None:
    """Threads of one request's torch forward and faiss search. Measured on 2 loaded cores: one thread each is
    4-5x faster per query than two (OpenMP threads of concurrent requests fight for the same cores); the server
    gets its parallelism from concurrent requests instead."""
    import faiss

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def _read_info(index_dir: Path) -> dict:
    path = index_dir / "index.json"
    if not path.is_file():
        raise UserError(f"{index_dir}: no index.json (not an index, or its build did not finish); build it with "
                        f"`fashiontune index build --model EXPORT --shards DIR --out {index_dir}`.")
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); build the index again.") from e
    if info.get("format") != FORMAT:
        raise UserError(f"{path}: format {info.get('format')!r} is not {FORMAT!r}; build the index again.")
    return info


def _probabilities(logits: np.ndarray, vocab: list[str], multi: bool, threshold) -> dict:
    """Labels by probability (softmax over a single-label field, sigmoid per label of a multi-label one), with the
    model's own decision: the top class, or every label at or above the exported threshold."""
    z = np.asarray(logits, dtype=np.float64)
    if multi:
        p = 1 / (1 + np.exp(-z))
        thr = np.broadcast_to(np.asarray(0.5 if threshold is None else threshold, dtype=np.float64), p.shape)
        predicted = [vocab[i] for i in np.flatnonzero(p >= thr)]
    else:
        e = np.exp(z - z.max())
        p = e / e.sum()
        predicted = [vocab[int(p.argmax())]]
    order = np.argsort(-p, kind="stable")
    return {"labels": [vocab[i] for i in order], "probs": [round(float(p[i]), 6) for i in order], "predicted": predicted}


def _per_class(results: dict | None) -> dict:
    """{"<field>/<method>": {"summary": {...}, "per_class": {label: {precision, recall, f1, support}}}}."""
    out = {}
    for name, rep in ((results or {}).get("classification") or {}).items():
        if isinstance(rep, dict) and "per_class" in rep:
            out[name] = {"summary": {k: v for k, v in rep.items() if isinstance(v, (int, float))},
                         "per_class": rep["per_class"]}
    return out
