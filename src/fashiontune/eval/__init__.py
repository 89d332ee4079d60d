"""Evaluation: full-corpus retrieval (exact chunked top-K), category-to-product precision, classification.

Library entry point: `fashiontune.eval.run.run_eval(EvalConfig) -> dict`. The metrics themselves live in
fashiontune.metrics (shared with training-time validation, usable on any embeddings); this package embeds a
split (embed.py, through data/samples.py's shard reader), applies exported heads (heads.py) and reports.
"""
