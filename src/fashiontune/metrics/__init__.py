"""The one metrics library: training-time validation (each task's `evaluate`, via tasks/metrics.py) and
`fashiontune eval` compute every shared number with these functions, so a run's validation and the eval job
on the same split and checkpoint agree (tests/test_metrics_agree.py).

- `classification`: single-label and multi-label reports (scikit-learn's averaging rules) and the one
  threshold-tuning algorithm. Arguments in scikit-learn's order: (y_true, y_score, ...).
- `topk`: exact top-K and first-relevant ranks over a full corpus in query chunks. The one tie rule: on equal
  scores the LOWER candidate index ranks first (the same rule as argmax and top-k accuracy).
- `retrieval`: relevance (same group or identical non-empty caption), HIT RATES from first-relevant ranks
  (results.json key "R@K", printed as Hit@K: share of queries with ANY relevant item in the top K; "mrr":
  first hit, no cutoff; mean / median rank), and category-to-product P@K.
- `ir`: the public leaderboard's metrics, BEIR's `EvaluateRetrieval` / trec_eval (pytrec_eval) semantics, from
  a top-K run (`topk_run`, one chunked pass) and graded judgments (qrels): Recall@K = relevant found in the top
  K / ALL relevant of the query, P@K, NDCG@K, MAP@K, MRR@10; plus BEIR-shape ({qid: {docid: rel}}) converters.
  Recall@K and Hit@K are different numbers whenever a query has several relevant items (Recall@K <= Hit@K).
"""
