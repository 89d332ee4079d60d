"""`run_eval(cfg)`: embed a split on all ranks (or load the cached embeddings), then score on rank 0.

Reads top to bottom: output dir -> manifest -> embeddings (cache | embed + gather + save) -> retrieval ->
category-to-product -> classification -> plots -> results.json + printed table.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from fashiontune.config import config_hash, save_config, to_dict
from fashiontune.data.samples import ShardDataError, decode_rgb, iter_range
from fashiontune.eval import embed as E
from fashiontune.eval import protocol as P
from fashiontune.eval.config import EvalConfig
from fashiontune.eval.heads import head_logits, load_export_heads
from fashiontune.eval.plots import confusion_png, topk_grid_png
from fashiontune.eval.report import format_table
from fashiontune.metrics.classification import multi_label_report, single_label_report, tune_threshold
from fashiontune.metrics.retrieval import category_metrics, rank_metrics, retrieval_ranks, same_product_ranks
from fashiontune.shards.errors import ManifestError
from fashiontune.shards.manifest import load_manifest

log = logging.getLogger(__name__)


def dist_state():
    from accelerate import PartialState

    # cpu=True lets accelerate see a torchrun / `accelerate launch --multi_gpu` env on a GPU-less machine as
    # MULTI_CPU (gloo); without it such ranks would each think they are alone.
    return PartialState(cpu=not torch.cuda.is_available())


def out_dir(cfg: EvalConfig) -> Path:
    return Path(cfg.out_dir or f"runs/{cfg.name}/eval-{cfg.data.split}")


def label_fields(cfg: EvalConfig, manifest: dict) -> dict[str, dict]:
    labels = manifest.get("labels", {})
    names = cfg.data.label_fields or sorted(labels)
    unknown = [f for f in names if f not in labels]
    if unknown:
        raise ManifestError(
            f"{cfg.data.shards}/manifest.json has no label field(s) {unknown}; it has {sorted(labels)}. "
            "Fix data.label_fields (empty = all)."
        )
    return {f: labels[f] for f in names}


def device_of(state) -> torch.device:
    return state.device if state.device.type == "cuda" else torch.device("cpu")


def cache_fingerprint(cfg: EvalConfig, manifest: dict, fields: dict, model_fp, device_type: str) -> dict:
    """What the cached embeddings depend on. The precision is the RESOLVED one (auto = bf16 on CUDA, fp32 on
    CPU): a CPU fp32 cache is not reused by a GPU bf16 run, nor the other way round."""
    return {"features": "raw-image/normalised-text", "model": model_fp, "shards": str(Path(cfg.data.shards).resolve()),
            "split": cfg.data.split,
            "split_shards": [manifest["splits"].get(n, {}).get("shards") for n in E.split_names(manifest, cfg.data.split)],
            "precision": cfg.precision.resolve(device_type).value, "templates": list(cfg.category.templates),
            "fields": sorted(fields)}


def _embed(cfg: EvalConfig, manifest: dict, fields: dict, state) -> E.Corpus | None:
    """The split's corpus on rank 0; None on the other ranks (they embed their part and hand it to rank 0)."""
    from fashiontune.data.workers import resolve_pin_memory, resolve_workers
    from fashiontune.eval.model import load_eval_model

    shards_dir = Path(cfg.data.shards)
    shards = E.eval_shards(manifest, shards_dir, cfg.data.split)
    total = E.split_count(manifest, cfg.data.split)
    torch.manual_seed(cfg.seed)  # random-init models: every rank (and every run) builds the same weights
    loaded, _ = load_eval_model(cfg.model)
    device = device_of(state)
    precision = cfg.precision.resolve(device.type).value
    bs, world = cfg.data.batch_size, state.num_processes
    start, end = E.batch_range(total, bs, state.process_index, world)
    workers = resolve_workers(cfg.data.num_workers, "data.num_workers")
    pin = device.type == "cuda" and resolve_pin_memory(cfg.data.pin_memory, "data.pin_memory")
    local = E.embed_range(loaded, shards, start, end, bs, workers, device, precision, pin_memory=pin)
    counts = [e - s for s, e in (E.batch_range(total, bs, r, world) for r in range(world))]
    merged = E.gather_ranks(local, state, counts)
    if merged is None:
        return None
    n = len(merged["key"])
    if n != total or merged["index"] != list(range(total)):
        raise ShardDataError(f"embedded {n} items of split {cfg.data.split!r}, manifest.json says {total}")
    if len(set(merged["key"])) != n:
        raise ShardDataError(f"{shards_dir}: duplicate __key__ values in split {cfg.data.split!r}; rebuild the shards.")
    prompts = {}
    has_text = merged["text"] is not None
    if has_text and (cfg.category.enabled or cfg.classification.zero_shot):
        for f, spec in fields.items():
            prompts[f] = E.embed_prompts(loaded, spec["vocab"], cfg.category.templates, device, precision)
    return E.Corpus(merged["key"], merged["group_id"], merged["caption"], merged["labels"],
                    merged["image"].numpy(), merged["text"].numpy() if has_text else None, prompts)


def _targets(corpus: E.Corpus, field: str, spec: dict) -> np.ndarray:
    """Single-label: N class indices (-1 = missing / unknown value). Multi-label: N x V multi-hot."""
    index = {v: i for i, v in enumerate(spec["vocab"])}
    values = [lab.get(field) for lab in corpus.labels]
    if spec.get("multi"):
        out = np.zeros((len(values), len(index)), dtype=np.int8)
        for r, v in enumerate(values):
            for x in v if isinstance(v, list) else ([] if v is None else [v]):
                if str(x) in index:
                    out[r, index[str(x)]] = 1
        return out
    return np.array([index.get(str(v), -1) if v is not None else -1 for v in values], dtype=np.int64)


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate; returns the results dict on rank 0 ({} on other ranks). Writes results.json, plots, cache."""
    cfg.validate()  # before any work (also for library callers and jobs/eval.py)
    t0 = time.perf_counter()
    state = dist_state()
    out = out_dir(cfg)
    cache_dir = out / "embeddings"
    # inputs first (manifest, split, label fields, model files): a mistake there leaves no output directory
    manifest = load_manifest(Path(cfg.data.shards))
    E.eval_shards(manifest, Path(cfg.data.shards), cfg.data.split)
    fields = label_fields(cfg, manifest)
    _check_task_fields(cfg, manifest)
    from fashiontune.eval.model import fingerprint

    model_fp = fingerprint(cfg.model)
    if state.is_main_process:
        save_config(cfg, out)
    corpus, cached = embed_or_load(cfg, manifest, fields, model_fp, state, cache_dir)
    t_embed = time.perf_counter() - t0
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    from fashiontune.eval.model import resolve_model_config

    results = score(cfg, corpus, fields, out, resolve_model_config(cfg.model)[1], _text_embedder(cfg, state))
    results.update(
        config_hash=config_hash(cfg), config=to_dict(cfg), split=cfg.data.split, items=len(corpus),
        world_size=state.num_processes, embeddings_cached=cached,
        seconds={"embed_or_load": round(t_embed, 3), "total": round(time.perf_counter() - t0, 3)},
    )
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    table = format_table(results)
    (out / "results.txt").write_text(table + "\n")
    print(table, flush=True)
    return results


def embed_or_load(cfg: EvalConfig, manifest: dict, fields: dict, model_fp: dict, state,
                  cache_dir: Path) -> tuple[E.Corpus | None, bool]:
    """(the split's corpus on rank 0 / None elsewhere, whether it came from the cache): the one embedding path
    of the eval job and `fashiontune index build`."""
    fp = cache_fingerprint(cfg, manifest, fields, model_fp, device_of(state).type)
    cached, why = E.cache_matches(cache_dir, fp) if cfg.cache else (False, "cache=false")
    state.wait_for_everyone()  # every rank has decided before rank 0 may overwrite the cache
    corpus = None
    if cached and state.is_main_process:
        corpus, why = E.load_cache(cache_dir, fp)
        log.info("using cached embeddings from %s", cache_dir)
    if not cached:
        log.info("embedding split %s (%s)", cfg.data.split, why)
        corpus = _embed(cfg, manifest, fields, state)  # None on ranks > 0: only rank 0 scores
        if state.is_main_process:
            E.save_cache(corpus, cache_dir, fp)
    return corpus, cached


def _check_task_fields(cfg: EvalConfig, manifest: dict) -> None:
    labels = manifest.get("labels", {})
    for i, t in enumerate(cfg.retrieval.tasks):
        if t.query != "text" and t.query not in labels:
            raise ManifestError(f"retrieval.tasks[{i}].query={t.query!r}: {cfg.data.shards}/manifest.json has no such "
                                f"label field; use text or one of {sorted(labels)}.")


def _text_embedder(cfg: EvalConfig, state):
    """texts -> N x d normalised text embeddings, loading the model on first use (label-value and qrels
    queries; caption queries reuse the cached embeddings)."""
    loaded = []

    def embed(texts: list[str]) -> np.ndarray:
        from fashiontune.eval.model import load_eval_model

        device = device_of(state)
        if not loaded:
            torch.manual_seed(cfg.seed)  # random-init models: the same weights as the embedding pass
            loaded.append(load_eval_model(cfg.model)[0])
        return P.embed_texts(loaded[0], texts, device, cfg.precision.resolve(device.type).value, cfg.data.batch_size)

    return embed


def score(cfg: EvalConfig, corpus: E.Corpus, fields: dict, out: Path, export_dir: Path | None = None,
          embed_texts=None) -> dict:
    """All metrics from embeddings (fp32) and exported heads; a model only for label-value / qrels queries
    (`embed_texts`)."""
    dev = None if cfg.retrieval.device == "auto" else cfg.retrieval.device
    kw = dict(chunk_size=cfg.retrieval.chunk_size or None, memory_budget_bytes=(cfg.retrieval.memory_budget_mb << 20) or None,
              device=dev)
    img = torch.nn.functional.normalize(torch.from_numpy(corpus.image).float(), dim=-1)
    res: dict = {"retrieval": {}, "category": {}, "classification": {}, "plots": []}
    plots = out / "plots"
    notes = res.setdefault("notes", [])
    if corpus.text is None:
        notes.append("image-only model (no text tower): no text retrieval, category-to-product or zero-shot "
                     "classification; only image -> image retrieval and exported heads are scored")
    if cfg.retrieval.enabled and corpus.text is not None and not any(corpus.captions):
        notes.append("every caption of the split is empty: no text->image / image->text retrieval")
    elif cfg.retrieval.enabled and corpus.text is not None:
        txt = torch.from_numpy(corpus.text).float()
        k = min(len(corpus), max(max(cfg.retrieval.ks), cfg.plots.grid_k, P.MRR_K, cfg.rerank.k if cfg.rerank.model else 0))
        ranks = retrieval_ranks(img, txt, corpus.group_ids, corpus.captions, k=k, **kw)
        res["retrieval"] = {d: rank_metrics(r.first_rank, cfg.retrieval.ks) for d, r in ranks.items()}
        res["ir"] = _ir_directions(ranks, corpus, cfg.retrieval.ks)
        for d, r in ranks.items():  # per-query ranks (item order = embeddings/items.json) for error analysis
            out.mkdir(parents=True, exist_ok=True)
            np.save(out / f"ranks_{d}.npy", r.first_rank.numpy())
        if cfg.rerank.model:
            res["rerank"] = _rerank(cfg, corpus, ranks, notes)
        if cfg.plots.grid_queries > 0:
            res["plots"].append(str(_grid(cfg, corpus, ranks["t2i"].topk_indices, plots / "topk_t2i.png")))
    if cfg.retrieval.enabled:
        _same_product(cfg, corpus, img, res, kw)
    if cfg.retrieval.tasks or cfg.retrieval.qrels:
        res.setdefault("ir", {}).update(_tasks(cfg, corpus, out, embed_texts, notes, kw))
    for f, spec in fields.items():
        y = _targets(corpus, f, spec)
        vocab = spec["vocab"]
        prompts = corpus.prompts.get(f)
        if cfg.category.enabled and prompts is not None:
            res["category"][f] = category_metrics(torch.from_numpy(prompts), img, y, vocab, cfg.category.ks, **kw)
        if cfg.classification.enabled and cfg.classification.zero_shot and prompts is not None:
            logits = img.numpy() @ prompts.T  # cosine similarity to each label prompt
            res["classification"][f"{f}/zero_shot"] = _classify(cfg, f, y, logits, vocab, spec, plots, res,
                                                                "zero_shot")
    exported = load_export_heads(export_dir) if cfg.classification.enabled and cfg.classification.heads else None
    if corpus.text is None and exported is None:
        notes.append("and no heads.pt was found beside model.checkpoint: nothing to classify")
    if exported is not None:
        heads, meta = exported
        for f, hspec in meta.get("fields", {}).items():
            if f not in fields:
                continue  # a field the manifest (or data.label_fields) does not have
            # targets in the HEAD's vocabulary (by name), so heads trained on another build still line up
            spec = {"vocab": hspec["vocab"], "multi": hspec.get("multi", False)}
            y = _targets(corpus, f, spec)
            logits = head_logits(heads, hspec, corpus.image)
            if spec["multi"]:
                logits = torch.sigmoid(torch.from_numpy(logits)).numpy()  # probabilities, as training computes them
            thr = hspec.get("threshold")
            res["classification"][f"{f}/{meta.get('task', 'head')}"] = _classify(
                cfg, f, y, logits, spec["vocab"], spec, plots, res, meta.get("task", "head"), threshold=thr)
    return res


def _same_product(cfg: EvalConfig, corpus: E.Corpus, img: torch.Tensor, res: dict, kw: dict) -> None:
    """results.json retrieval["i2i"]: image -> image over the In-shop split (metrics.retrieval), when some
    product has two images."""
    same = same_product_ranks(img, corpus.group_ids, k=min(len(corpus), max(cfg.retrieval.ks)), **kw)
    if same is None:
        return
    res["retrieval"]["i2i"] = rank_metrics(same.first_rank, cfg.retrieval.ks)
    res["notes"].append(f"i2i: image -> image, same product: {len(same.first_rank)} query images (each product's "
                        f"1st, 3rd, ... image) over a gallery of the {len(corpus) - len(same.first_rank)} others "
                        "(DeepFashion In-shop's protocol)")


def _rerank(cfg: EvalConfig, corpus: E.Corpus, ranks: dict, notes: list) -> dict:
    """Every retrieval metric before and after re-ordering each query's exact top-k with the cross-encoder."""
    from fashiontune.eval import rerank as R
    from fashiontune.eval.model import load_eval_model
    from fashiontune.models.cross import load_reranker

    device = torch.device(cfg.retrieval.device if cfg.retrieval.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    cross, _ = load_reranker(cfg.rerank.model)
    loaded, _ = load_eval_model(type(cfg.model)(checkpoint=cfg.rerank.model))
    shards = E.eval_shards(load_manifest(Path(cfg.data.shards)), Path(cfg.data.shards), cfg.data.split)
    t0 = time.perf_counter()
    bank = R.embed_bank(loaded, shards, 0, len(corpus), cfg.data.batch_size, device,
                        cfg.precision.resolve(device.type).value)
    if bank.keys != corpus.keys:
        raise ShardDataError(f"{cfg.data.shards}: the re-ranker's pass read the split in another order; rebuild the shards")
    t_tokens = time.perf_counter() - t0
    out = R.rerank_block(cross.to(device), bank, ranks, cfg.rerank.k, cfg.retrieval.ks, cfg.rerank.pairs_per_batch)
    k = min(cfg.rerank.k, len(corpus))
    notes.append(f"rerank: each query's exact top-{k} re-ordered by {cfg.rerank.model}; items outside the top-{k} "
                 "keep their dual-encoder rank (so R@K for K > k can only change through the top-k)")
    for d, block in out.items():
        print(f"fashiontune eval: rerank {d}: R@1 {block['before']['R@1']:.4f} -> {block['after']['R@1']:.4f}, "
              f"{1000 * block['seconds_per_query']:.2f} ms per query ({block['queries']} queries x {block['k']} "
              f"candidates; token pass {t_tokens:.1f} s for {len(corpus)} items). Items outside the top-{k} keep "
              "their dual-encoder rank.", flush=True)
        block["token_pass_seconds"] = t_tokens
    return out


def _ir_directions(ranks: dict, corpus: E.Corpus, ks) -> dict:
    """BEIR/trec_eval metrics of text->image and image->text, from the same top-K (relevance is symmetric)."""
    from fashiontune.metrics.ir import IRRun

    qrels = P.pair_qrels(corpus.group_ids, corpus.captions)
    return {d: {**P.ir_block(IRRun.from_rank(r, len(corpus)), qrels, ks), "docs": len(corpus)} for d, r in ranks.items()}


def _tasks(cfg: EvalConfig, corpus: E.Corpus, out: Path, embed_texts, notes: list, kw: dict) -> dict:
    """The Marqo-style tasks and the qrels file's task; each query set's ground truth lands in qrels/<task>.json."""
    r = cfg.retrieval
    if corpus.text is None:
        notes.append("image-only model: retrieval.tasks / retrieval.qrels need a text tower; not scored")
        return {}
    jobs = [(t.name, t.image_weight, t.text_weight,
             lambda t=t: P.derived_queries(corpus, t.query, t.max_queries, cfg.seed, t.pattern)) for t in r.tasks]
    if r.qrels:
        jobs.append(("qrels", r.qrels_image_weight, r.qrels_text_weight, lambda: P.read_qrels(r.qrels, corpus.keys)))
    res = {}
    for name, wi, wt, make in jobs:
        q = make()
        if not q.texts:
            notes.append(f"task {name}: no query values in this split (nothing scored)")
            continue
        res[name] = P.score_task(corpus, q, P.query_embeddings(corpus, q.texts, embed_texts), wi, wt, r.ks, **kw)
        if name != "qrels":
            P.write_beir_qrels(out / "qrels" / f"{name}.json", q, corpus.keys)
        else:
            res[name]["file"] = r.qrels
            if q.unknown:
                notes.append(f"qrels: {res[name]['unknown_doc_ids']} doc id(s) of {r.qrels} are not item keys of "
                             "this split: left out of the relevance sets (see unknown_doc_ids)")
    return res


def _classify(cfg, field, y, scores, vocab, spec, plots: Path, res, method: str, threshold=None) -> dict:
    if spec.get("multi"):
        labelled = y.any(1)
        thr = cfg.classification.multi_label_threshold
        source = "config"
        if thr < 0 and threshold is not None:
            thr, source = threshold, "exported with the heads (tuned on validation in training)"
        elif thr < 0:
            thr, source = tune_threshold(y[labelled], scores[labelled]), "tuned on this split (optimistic)"
        rep = multi_label_report(y, scores, vocab, threshold=thr, labelled=labelled)
        rep["threshold_source"] = source
        return rep
    rep = single_label_report(y, scores, vocab)
    if rep.get("items") and len(vocab) <= cfg.classification.max_confusion_classes:
        res["plots"].append(str(confusion_png(rep["confusion_matrix"], vocab, plots / f"confusion_{field}_{method}.png",
                                              title=f"{field} ({method}), acc {rep['accuracy']:.3f}")))
    return rep


def _grid(cfg: EvalConfig, corpus: E.Corpus, topk: torch.Tensor, path: Path) -> Path:
    """Top-K images for a few text queries spread over the split; images re-read from the shards."""
    n = len(corpus)
    pool = [i for i, c in enumerate(corpus.captions) if c] or list(range(n))  # prefer queries with text
    qs = sorted({pool[int(i)] for i in np.linspace(0, len(pool) - 1, min(cfg.plots.grid_queries, len(pool)))})
    k = min(cfg.plots.grid_k, topk.shape[1])
    want = {int(j) for q in qs for j in topk[q, :k]}
    shards = E.eval_shards(load_manifest(Path(cfg.data.shards)), Path(cfg.data.shards), cfg.data.split)
    images = {}
    for g, sample in iter_range(shards, min(want), max(want) + 1):  # opens only the shards in that range
        if g in want:
            images[g] = decode_rgb(sample)
            images[g].thumbnail((128, 128))
    rows = []
    for q in qs:
        hits = []
        for j in topk[q, :k].tolist():
            relevant = corpus.group_ids[j] == corpus.group_ids[q] or (
                corpus.captions[j] == corpus.captions[q] != "")
            hits.append((images.get(j), corpus.captions[j], relevant))
        rows.append((corpus.captions[q] or f"<empty caption, {corpus.keys[q]}>", hits))
    return topk_grid_png(rows, path, title=f"text -> image top-{k} ({cfg.data.split}, N={n}); green = relevant")
