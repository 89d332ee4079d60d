"""Evaluation: full-corpus retrieval (exact chunked top-K), category-to-product precision, classification.

Library entry point: `fashiontune.eval.run.run_eval(EvalConfig) -> dict`; metrics core in topk.py,
retrieval.py and classification.py (pure torch / numpy, usable on any embeddings).
"""
