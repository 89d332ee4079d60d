"""Classification reports from scores (numpy; everything derives from one confusion matrix or one sort).

Single-label: accuracy, top-5 accuracy, macro / micro / weighted F1, per-class precision / recall / F1 /
support, confusion matrix (rows = true, columns = predicted). Items with target -1 (label missing) are
ignored. A class with no predictions has precision 0 and one with no support recall 0 (scikit-learn's
zero_division=0); macro means are over classes that occur in targets or predictions (scikit-learn's
`labels=None` behaviour); weighted F1 weights by support.

Multi-label: micro / macro F1 at a threshold, mAP (mean over classes with >= 1 positive of scikit-learn's
step-wise average precision), exact-match accuracy (all labels right), per-class table. Rows of all -1 or
all 0 with a `labelled` mask False are ignored.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        r = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)
    return p, r, f


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def single_label_report(
    scores: np.ndarray, y_true: np.ndarray, class_names: Sequence[str], top_k: int = 5
) -> dict:
    """scores: N x C (logits or probabilities); y_true: N class indices, -1 = missing (ignored)."""
    scores, y_true = np.asarray(scores), np.asarray(y_true)
    n_classes = len(class_names)
    if scores.ndim != 2 or scores.shape[1] != n_classes or scores.shape[0] != y_true.shape[0]:
        raise ValueError(f"scores {scores.shape} must be N x {n_classes} for {y_true.shape[0]} targets")
    m = y_true >= 0
    scores, y_true = scores[m], y_true[m]
    if y_true.size == 0:
        return {"items": 0}
    y_pred = scores.argmax(1)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    support = cm.sum(1)
    p, r, f = _prf(tp, fp, fn)
    present = (support + cm.sum(0)) > 0
    kk = min(top_k, n_classes)
    # top-k by score; stable ordering so ties resolve identically everywhere (lower class index first)
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
    micro_p, micro_r, micro_f = _prf(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))
    return {
        "items": int(y_true.size),
        "accuracy": float(np.mean(y_pred == y_true)),
        f"top{kk}_accuracy": float(np.mean((topk == y_true[:, None]).any(1))),
        "macro_f1": float(f[present].mean()),
        "micro_f1": float(micro_f[0]),
        "weighted_f1": float((f * support).sum() / support.sum()),
        "macro_precision": float(p[present].mean()),
        "macro_recall": float(r[present].mean()),
        "per_class": {
            name: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]), "support": int(support[c])}
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
    }


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Step-wise AP = sum_n (R_n - R_{n-1}) P_n over distinct score thresholds (scikit-learn's definition:
    tied scores enter together). NaN when there are no positives."""
    pos = np.asarray(positives, dtype=bool)
    n_pos = pos.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    s, y = np.asarray(scores)[order], pos[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # end index of each group of equal scores
    tp = np.cumsum(y)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multi_label_report(
    scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str], threshold: float | np.ndarray = 0.5,
    labelled: np.ndarray | None = None,
) -> dict:
    """scores: N x C (probabilities, or logits with a matching threshold); targets: N x C in {0,1}.
    threshold: a scalar or one per class (see tune_threshold). labelled: N bool, rows to evaluate
    (default: all)."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets).astype(bool)
    if scores.shape != targets.shape or scores.shape[1] != len(class_names):
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be N x {len(class_names)}")
    if labelled is not None:
        scores, targets = scores[labelled], targets[labelled]
    if targets.shape[0] == 0:
        return {"items": 0}
    pred = scores >= np.asarray(threshold)
    tp = (pred & targets).sum(0).astype(np.float64)
    fp = (pred & ~targets).sum(0).astype(np.float64)
    fn = (~pred & targets).sum(0).astype(np.float64)
    p, r, f = _prf(tp, fp, fn)
    _, _, micro_f = _prf(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True))
    ap = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(targets.shape[1])])
    support = targets.sum(0)
    return {
        "items": int(targets.shape[0]),
        "micro_f1": float(micro_f[0]),
        "macro_f1": float(f.mean()),
        "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "exact_match": float((pred == targets).all(1).mean()),
        "threshold": np.asarray(threshold).tolist(),
        "per_class": {
            name: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]),
                   "ap": None if np.isnan(ap[c]) else float(ap[c]), "support": int(support[c])}
            for c, name in enumerate(class_names)
        },
    }


def _best_f1_threshold(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Threshold t maximising F1 of (s >= t) against y, exactly over all distinct scores. Returns (t, f1)."""
    n_pos = y.sum()
    if n_pos == 0:
        return float("inf"), 0.0  # never predict a class that has no positives
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    predicted = last_of_tie + 1
    f1 = 2 * tp / (predicted + n_pos)
    best = int(np.argmax(f1))  # first maximum: the highest threshold among equals (fewest positives)
    return float(s[last_of_tie[best]]), float(f1[best])


def tune_threshold(scores: np.ndarray, targets: np.ndarray, per_class: bool = False) -> float | np.ndarray:
    """Threshold(s) with the best F1 on validation data: one global threshold maximising micro F1, or one per
    class maximising that class's F1. Apply with multi_label_report(..., threshold=...)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(targets).astype(bool)
    if per_class:
        return np.array([_best_f1_threshold(s[:, c], y[:, c])[0] for c in range(s.shape[1])])
    return _best_f1_threshold(s.ravel(), y.ravel())[0]
