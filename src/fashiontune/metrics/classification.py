"""Classification metrics from scores: the one implementation behind training-time validation and the eval job.

Arguments follow scikit-learn's order, (y_true, y_score, ...), and scikit-learn computes every number it has a
reference for, with its defaults for averaging (`zero_division=0`: a class never predicted has precision 0,
one never true has recall 0).

Single-label (y_true: N class indices, -1 = label missing, ignored; y_score: N x C logits or probabilities):
accuracy; top-k accuracy; macro / micro / weighted F1, macro precision / recall (scikit-learn's `labels=None`:
macro means run over the classes that occur in the targets OR the predictions); per-class P / R / F1 /
support and the confusion matrix (rows = true, columns = predicted) over all C classes. The prediction is the
argmax, the lower class index on equal scores. Top-k is ours, not `top_k_accuracy_score`: that one orders tied
scores by a reversed stable sort (the HIGHER class index first), and fashiontune has one tie rule everywhere
(argmax, top-k, retrieval ranks): on equal scores the lower index ranks first.

Multi-label (y_true: N x C in {0, 1}; y_score: N x C): prediction = score >= threshold (a scalar or one per
class). Micro / macro F1 over ALL C classes (scikit-learn's rule for indicator targets: a class with no
positives and no predictions scores 0); mAP = mean over the classes with >= 1 positive of scikit-learn's
`average_precision_score` (tied scores enter together; a class without positives has no AP and is counted,
not averaged); exact match = scikit-learn's subset accuracy.

Threshold tuning (`tune_threshold`, one algorithm): the threshold with the best F1 on the given data, found
exactly (not on a grid), see its docstring.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

TUNE_METRICS = ("macro_f1", "micro_f1")  # what tune_threshold can maximise


def top_k_accuracy(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    """Share of items whose class is among the k best scores (ties: the lower class index first)."""
    topk = np.argsort(-y_score, axis=1, kind="stable")[:, :k]
    return float(np.mean((topk == y_true[:, None]).any(1)))


def single_label_report(y_true: np.ndarray, y_score: np.ndarray, class_names: Sequence[str], top_k: int = 5) -> dict:
    """y_true: N class indices (-1 = missing: ignored); y_score: N x C. Keys: items, accuracy,
    top{min(top_k, C)}_accuracy, macro/micro/weighted_f1, macro_precision/recall, per_class, confusion_matrix."""
    y_score, y_true = np.asarray(y_score), np.asarray(y_true)
    n_classes = len(class_names)
    if y_score.ndim != 2 or y_score.shape[1] != n_classes or y_score.shape[0] != y_true.shape[0]:
        raise ValueError(f"scores {y_score.shape} must be N x {n_classes} for {y_true.shape[0]} targets")
    m = y_true >= 0
    y_score, y_true = y_score[m], y_true[m]
    if y_true.size == 0:
        return {"items": 0}
    y_pred = y_score.argmax(1)  # first maximum: the lower index on ties
    classes = np.arange(n_classes)
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    macro_p, macro_r, macro_f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    kk = min(top_k, n_classes)
    return {
        "items": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        f"top{kk}_accuracy": top_k_accuracy(y_true, y_score, kk),
        "macro_f1": float(macro_f),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "macro_precision": float(macro_p),
        "macro_recall": float(macro_r),
        "per_class": {
            name: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]), "support": int(support[c])}
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """scikit-learn's step-wise AP of one class (tied scores enter together); NaN when there are no positives."""
    y = np.asarray(y_true).astype(bool)
    return float(average_precision_score(y, y_score)) if y.any() else float("nan")


def multi_label_report(
    y_true: np.ndarray, y_score: np.ndarray, class_names: Sequence[str], threshold: float | np.ndarray = 0.5,
    labelled: np.ndarray | None = None,
) -> dict:
    """y_true: N x C in {0,1}; y_score: N x C (probabilities, or logits with a matching threshold).
    threshold: a scalar or one per class (see tune_threshold). labelled: N bool, rows to evaluate (default all).
    Keys: items, micro_f1, macro_f1, mAP, exact_match, threshold, per_class."""
    y_score, y_true = np.asarray(y_score, dtype=np.float64), np.asarray(y_true).astype(bool)
    if y_score.shape != y_true.shape or y_score.shape[1] != len(class_names):
        raise ValueError(f"scores {y_score.shape} and targets {y_true.shape} must both be N x {len(class_names)}")
    if labelled is not None:
        y_score, y_true = y_score[labelled], y_true[labelled]
    if y_true.shape[0] == 0:
        return {"items": 0}
    pred = y_score >= np.asarray(threshold)
    p, r, f, support = precision_recall_fscore_support(y_true, pred, average=None, zero_division=0)
    ap = np.array([average_precision(y_true[:, c], y_score[:, c]) for c in range(y_true.shape[1])])
    return {
        "items": int(y_true.shape[0]),
        "micro_f1": float(f1_score(y_true, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
        "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "exact_match": float(accuracy_score(y_true, pred)),
        "threshold": np.asarray(threshold).tolist(),
        "per_class": {
            name: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]),
                   "ap": None if np.isnan(ap[c]) else float(ap[c]), "support": int(support[c])}
            for c, name in enumerate(class_names)
        },
    }


def tune_threshold(
    y_true: np.ndarray, y_score: np.ndarray, metric: str = "micro_f1", per_class: bool = False
) -> float | np.ndarray:
    """The decision threshold with the best `metric` (micro or macro F1, as multi_label_report computes them)
    on this data: one global threshold, or with per_class one per class maximising that class's F1 (which
    maximises macro F1). Apply with multi_label_report(..., threshold=...).

    Exact, not on a grid: an F1-optimal threshold always sits at the score of a positive (raising the
    threshold up to the next positive's score keeps every true positive and drops false ones), so only those
    scores are tried. Among equally good ones the highest wins (fewest positives predicted). The returned
    value is the midpoint between that score and the next lower score of the data, so that recomputing the
    same scores with a last-bit difference (another batch size, another process) predicts the same items.
    No positive at all: +inf (never predict the class).
    """
    if metric not in TUNE_METRICS:
        raise ValueError(f"tune_threshold(metric={metric!r}): use one of {TUNE_METRICS}")
    y, s = np.asarray(y_true).astype(bool), np.asarray(y_score, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 2:
        raise ValueError(f"targets {y.shape} and scores {s.shape} must both be N x C")
    if per_class:
        return np.array([_best_threshold(y[:, [c]], s[:, [c]], "micro_f1") for c in range(s.shape[1])])
    return _best_threshold(y, s, metric)


def _best_threshold(y: np.ndarray, s: np.ndarray, metric: str) -> float:
    cand = np.unique(s[y])[::-1]  # distinct scores of positives, highest first
    if cand.size == 0:
        return float("inf")
    tp_sum, fp_sum, fn_sum, f1_sum = (np.zeros(cand.size) for _ in range(4))
    for c in range(s.shape[1]):  # one class at a time: memory O(candidates), never candidates x classes
        all_c, pos_c = np.sort(s[:, c]), np.sort(s[y[:, c], c])
        predicted = all_c.size - np.searchsorted(all_c, cand, side="left")  # scores >= each candidate
        tp = pos_c.size - np.searchsorted(pos_c, cand, side="left")
        fp, fn = predicted - tp, pos_c.size - tp
        tp_sum, fp_sum, fn_sum = tp_sum + tp, fp_sum + fp, fn_sum + fn
        denom = 2 * tp + fp + fn
        f1_sum += np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    if metric == "micro_f1":
        score = 2 * tp_sum / np.maximum(2 * tp_sum + fp_sum + fn_sum, 1)
    else:
        score = f1_sum / s.shape[1]
    best = cand[int(np.argmax(score))]  # first maximum: the highest threshold among equals
    below = s[s < best]
    return float((best + below.max()) / 2) if below.size else float(best)
