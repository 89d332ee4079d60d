"""What a task's validation logs, as flat {name: float} dicts, taken from the reports of the one metrics
library (fashiontune.metrics), so that every name means what the eval job's results.json means by it.

Training name -> eval results.json key: accuracy, macro_f1, micro_f1, mAP -> the same key of the field's
classification report; top5 -> top{min(5, C)}_accuracy; {d}_R@K -> retrieval.{d}.R@K (d = i2t / t2i);
mean_R@K = the mean of the two directions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from fashiontune.metrics.classification import multi_label_report, single_label_report, tune_threshold
from fashiontune.metrics.retrieval import rank_metrics, retrieval_ranks, same_product_ranks

# the metric names each function reports (tasks/metric_names.py declares a task's names from them)
SINGLE_LABEL = ("accuracy", "top5", "macro_f1")
MULTI_LABEL = ("micro_f1", "macro_f1", "mAP")
RETRIEVAL_KS = (1, 5, 10)

__all__ = ["MULTI_LABEL", "RETRIEVAL_KS", "SINGLE_LABEL", "multi_label", "retrieval", "single_label",
           "tune_threshold"]


def single_label(y_true: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Accuracy, top-5 and macro F1 of N x C scores (single_label_report's rules; NaN when empty)."""
    names = [str(c) for c in range(logits.shape[1])]
    rep = single_label_report(y_true, logits, names, top_k=5)
    if not rep["items"]:
        return {k: float("nan") for k in SINGLE_LABEL}
    top = f"top{min(5, logits.shape[1])}_accuracy"
    return {"accuracy": rep["accuracy"], "top5": rep[top], "macro_f1": rep["macro_f1"]}


def multi_label(y_true: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """Micro / macro F1 at `threshold` and mAP (multi_label_report's rules; NaN when empty)."""
    rep = multi_label_report(y_true, probs, [str(c) for c in range(probs.shape[1])], threshold=threshold)
    return {k: (rep[k] if rep["items"] else float("nan")) for k in MULTI_LABEL}


def retrieval(img: torch.Tensor, txt: torch.Tensor, groups: Sequence[str] | None,
              captions: Sequence[str] | None = None, ks: Sequence[int] = RETRIEVAL_KS,
              order: Sequence[int] | None = None) -> dict[str, float]:
    """Hit-rate R@K both ways over normalised embeddings (metrics.retrieval's relevance and tie rule): a hit
    is any item of the same group or with the same non-empty caption; and image -> image over the same-product
    split ("i2i_R@K", NaN when no product has two images). groups None: each item its own group;
    captions None: no caption matches. order: each row's position in the split (the batches' "index"); when
    every row has one, rows are scored in that order, the eval job's item order, so that tied scores go to
    the same item whatever the ranks and workers that read the split."""
    n = img.shape[0]
    if n == 0:
        return {}
    groups = [str(i) for i in range(n)] if groups is None else list(groups)
    captions = [""] * n if captions is None else list(captions)
    if order is not None and len(order) == n and min(order) >= 0:
        perm = sorted(range(n), key=list(order).__getitem__)
        img, txt = img[perm], txt[perm]
        groups, captions = [groups[i] for i in perm], [captions[i] for i in perm]
    ranks = retrieval_ranks(img, txt, groups, captions, k=max(ks))
    out: dict[str, float] = {}
    for d in ("i2t", "t2i"):
        m = rank_metrics(ranks[d].first_rank, ks)
        out.update({f"{d}_R@{k}": m[f"R@{k}"] for k in ks})
    for k in ks:
        out[f"mean_R@{k}"] = (out[f"i2t_R@{k}"] + out[f"t2i_R@{k}"]) / 2
    same = same_product_ranks(img, groups, k=max(ks))  # NaN where no product has two images
    m = rank_metrics(same.first_rank if same is not None else np.zeros(0), ks)
    out.update({f"i2i_R@{k}": m[f"R@{k}"] for k in ks})
    return out
