"""Classification metrics on gathered predictions (numpy / sklearn; no collectives here)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score, f1_score

# the metric names each function reports (tasks/metric_names.py declares a task's names from them)
SINGLE_LABEL = ("accuracy", "top5", "macro_f1")
MULTI_LABEL = ("micro_f1", "macro_f1", "mAP")
RETRIEVAL_KS = (1, 5, 10)


def single_label(y_true: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Accuracy, top-5 (top-k with k = min(5, classes)) and macro F1 over the classes present in y_true."""
    if len(y_true) == 0:
        return {"accuracy": float("nan"), "top5": float("nan"), "macro_f1": float("nan")}
    y_pred = logits.argmax(1)
    k = min(5, logits.shape[1])
    topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "top5": float((topk == y_true[:, None]).any(1).mean()),
        "macro_f1": float(f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)),
    }


def multi_label(y_true: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """Micro / macro F1 at `threshold` and mAP; macro averages skip classes with no positive in y_true."""
    if len(y_true) == 0:
        return {"micro_f1": float("nan"), "macro_f1": float("nan"), "mAP": float("nan")}
    y_pred = (probs >= threshold).astype(np.int64)
    has_pos = y_true.sum(0) > 0
    out = {
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true[:, has_pos], y_pred[:, has_pos], average="macro", zero_division=0))
        if has_pos.any()
        else float("nan"),
        "mAP": float(average_precision_score(y_true[:, has_pos], probs[:, has_pos], average="macro"))
        if has_pos.any()
        else float("nan"),
    }
    return out


def tune_threshold(y_true: np.ndarray, probs: np.ndarray, metric: str = "macro_f1") -> float:
    """The single decision threshold (grid 0.05..0.95) that maximises `metric` on these predictions."""
    if metric not in ("macro_f1", "micro_f1"):
        raise ValueError(f"task.multilabel.tune_metric={metric!r}: use 'macro_f1' or 'micro_f1'.")
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    scores = [multi_label(y_true, probs, t)[metric] for t in grid]
    return float(grid[int(np.nanargmax(scores))]) if not np.all(np.isnan(scores)) else 0.5


def retrieval(img: torch.Tensor, txt: torch.Tensor, groups: list[str] | None, ks=RETRIEVAL_KS) -> dict[str, float]:
    """Recall@K both ways over normalised embeddings; a hit is any item of the same group (else same index)."""
    n = img.shape[0]
    if n == 0:
        return {}
    if groups is None:
        gid = torch.arange(n)
    else:
        _, gid = np.unique(np.asarray(groups), return_inverse=True)
        gid = torch.as_tensor(gid)
    out: dict[str, float] = {}
    for name, q, d in (("i2t", img, txt), ("t2i", txt, img)):
        best_rank = torch.empty(n, dtype=torch.long)
        for s in range(0, n, 1024):  # chunked: never an n×n matrix at once
            sims = q[s : s + 1024] @ d.T
            rel = gid[s : s + 1024, None] == gid[None, :]
            top_rel = sims.masked_fill(~rel, float("-inf")).max(1, keepdim=True).values
            best_rank[s : s + 1024] = (sims > top_rel).sum(1)  # items strictly better than the best relevant one
        for k in ks:
            out[f"{name}_R@{k}"] = float((best_rank < k).float().mean())
    for k in ks:
        out[f"mean_R@{k}"] = (out[f"i2t_R@{k}"] + out[f"t2i_R@{k}"]) / 2
    return out
