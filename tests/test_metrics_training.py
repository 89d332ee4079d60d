"""Training-time validation (tasks/metrics.py) reports the eval job's numbers on the same predictions, exactly
where the two used to disagree: macro-F1's class set, multi-label macro-F1 with a class without positives,
R@K with tied scores and identical captions across products, the threshold tuner's argument order.
(The end-to-end version, through a real run and `fashiontune eval`, is tests/test_metrics_agree.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fashiontune.metrics.classification import multi_label_report, single_label_report, tune_threshold
from fashiontune.metrics.retrieval import retrieval_metrics
from fashiontune.tasks import metrics as M


def test_single_label_macro_f1_over_classes_in_targets_or_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)  # classes 4 and 5 never occur in the targets
    scores = rng.normal(size=(60, 6))
    scores[:5, 5] = 10.0  # ... but class 5 is predicted
    rep = single_label_report(y, scores, list("abcdef"))
    ours = M.single_label(y, scores)
    assert ours["macro_f1"] == rep["macro_f1"] and ours["accuracy"] == rep["accuracy"]
    assert ours["top5"] == rep["top5_accuracy"]
    from sklearn.metrics import f1_score

    old = f1_score(y, scores.argmax(1), labels=np.unique(y), average="macro", zero_division=0)
    assert ours["macro_f1"] != pytest.approx(old)  # the case tells the two rules apart


def test_multi_label_macro_f1_counts_classes_without_positives():
    rng = np.random.default_rng(1)
    y = (rng.random((80, 5)) < 0.4).astype(int)
    y[:, 4] = 0
    probs = np.clip(0.4 * y + 0.6 * rng.random((80, 5)), 0, 1)
    t = tune_threshold(y, probs, metric="macro_f1")
    ours = M.multi_label(y, probs, t)
    rep = multi_label_report(y, probs, list("abcde"), threshold=t)
    assert {k: ours[k] for k in ("micro_f1", "macro_f1", "mAP")} == {k: rep[k] for k in ("micro_f1", "macro_f1", "mAP")}
    from sklearn.metrics import f1_score

    assert ours["macro_f1"] == pytest.approx(f1_score(y, probs >= t, average="macro", zero_division=0))
    assert ours["macro_f1"] != pytest.approx(f1_score(y[:, :4], probs[:, :4] >= t, average="macro", zero_division=0))


def test_tuned_threshold_is_the_best_macro_f1_and_survives_last_bit_noise():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(2)
    y = (rng.random((100, 4)) < 0.3).astype(int)
    s = np.round(0.3 * y + 0.7 * rng.random((100, 4)), 2).astype(np.float32)
    t = tune_threshold(y, s, metric="macro_f1")
    best = max(f1_score(y, s >= g, average="macro", zero_division=0) for g in np.unique(s))
    assert f1_score(y, s >= t, average="macro", zero_division=0) == pytest.approx(best)
    noisy = np.nextafter(s, np.float32(-1))  # every score one float32 step lower: the same predictions
    assert ((noisy >= t) == (s >= t)).all()


def test_retrieval_ties_and_identical_captions_agree_with_eval():
    g = torch.Generator().manual_seed(3)
    n = 40
    img = torch.randint(-1, 2, (n, 3), generator=g).float()  # few distinct values: many tied scores
    txt = torch.randint(-1, 2, (n, 3), generator=g).float()
    groups = [f"p{i // 2}" for i in range(n)]
    captions = [f"c{i % 7}" if i % 3 else "" for i in range(n)]  # identical captions across products
    ref = retrieval_metrics(img, txt, groups, captions, ks=(1, 5, 10), device="cpu")
    perm = torch.randperm(n, generator=g).tolist()  # rows as other ranks / workers might gather them
    ours = M.retrieval(img[perm], txt[perm], [groups[i] for i in perm], [captions[i] for i in perm], order=perm)
    for d in ("i2t", "t2i"):
        for k in (1, 5, 10):
            assert ours[f"{d}_R@{k}"] == ref[d][f"R@{k}"], (d, k)
    group_only = M.retrieval(img, txt, groups, None)
    assert any(group_only[f"{d}_R@{k}"] != ours[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
