"""The one metrics library: training-time validation (each task's `evaluate`, via tasks/metrics.py) and
`fashiontune eval` compute every shared number with these functions, so a run's validation and the eval job
on the same split and checkpoint agree (tests/test_metrics_agree.py).

- `classification`: single-label and multi-label reports (scikit-learn's averaging rules) and the one
  threshold-tuning algorithm. Arguments in scikit-learn's order: (y_true, y_score, ...).
- `topk`: exact top-K and first-relevant ranks over a full corpus in query chunks. The one tie rule: on equal
  scores the LOWER candidate index ranks first (the same rule as argmax and top-k accuracy).
- `retrieval`: relevance (same group or identical non-empty caption), hit-rate style R@K / MRR / ranks from
  first-relevant ranks, and category-to-product P@K.

Leaderboard metrics (BEIR / trec_eval: Recall@K = relevant found in the top K / all relevant, nDCG@K,
MRR@10) belong in a new module here (e.g. `ir.py`) that consumes `topk.RankResult` and a relevance function;
they are different numbers from the hit-rate R@K of `retrieval` and must be named apart.
"""
