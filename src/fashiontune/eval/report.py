"""The printed summary table of an evaluation (also written to results.txt)."""

from __future__ import annotations


def _f(x) -> str:
    return "-" if x is None else (f"{x:.4f}" if isinstance(x, float) else str(x))


_IR_ORDER = ("Recall", "P", "NDCG", "MAP", "MRR")


def ir_table(blocks: dict[str, dict]) -> list[str]:
    """One row per task / direction, one column per metric (Recall@K.. P@K.. NDCG@K.. MAP@K.. MRR@10)."""
    keys = {k for m in blocks.values() for k in m if "@" in k}
    cols = sorted(keys, key=lambda k: (_IR_ORDER.index(k.split("@")[0]) if k.split("@")[0] in _IR_ORDER else 9,
                                       int(k.split("@")[1]) if k.split("@")[1].isdigit() else 0))
    w = max([len(t) for t in blocks] + [10]) + 2
    out = [f"{'task':<{w}}{'queries':>8}" + "".join(f"{c:>10}" for c in cols)]
    for t, m in blocks.items():
        out.append(f"{t:<{w}}{_f(m.get('queries')):>8}" + "".join(f"{_f(m.get(c)):>10}" for c in cols))
    return out


def model_label(config: dict) -> str:
    """Which model a results.json scored, in words: the trained export, or the named model and its weights."""
    m = config.get("model") or {}
    if m.get("checkpoint"):
        return f"the model at {m['checkpoint']}"
    name = m.get("timm_name") if m.get("backbone") == "timm" else m.get("name")
    return f"{name or 'the model'} ({'weights ' + m['pretrained'] if m.get('pretrained') else 'random init, untrained'})"


def format_table(results: dict) -> str:
    cached = " (cached embeddings)" if results.get("embeddings_cached") else ""
    model = model_label(results.get("config") or {})
    lines = [f"evaluation of {model} on split {results.get('split')!r}: {results.get('items')} items{cached}"]
    ret = results.get("retrieval") or {}
    if ret:
        ks = [k for k in next(iter(ret.values())) if k.startswith("R@")]
        cols = ks + ["mrr", "mean_rank", "median_rank"]
        # results.json keeps the keys R@K / mrr; printed as Hit@K so nobody reads them as BEIR recall
        heads = ["Hit@" + k[2:] for k in ks] + ["hit_mrr", "mean_rank", "median_rank"]
        lines += ["", "retrieval (full corpus; Hit@K = share of queries with ANY relevant item in the top K)",
                  f"{'direction':<10}" + "".join(f"{c:>12}" for c in heads)]
        for d, m in ret.items():
            lines.append(f"{d:<10}" + "".join(f"{_f(m.get(c)):>12}" for c in cols))
    blocks = results.get("ir") or {}
    if blocks:
        lines += ["", ("BEIR / trec_eval metrics (the public leaderboard's: Recall@K = relevant found in top K / all "
                       "relevant; MRR over the top 10)"), *ir_table(blocks)]
    cat = results.get("category") or {}
    if cat:
        keys = sorted({k for c in cat.values() for k in c.get("mean", {})}, key=lambda k: (k[0] != "P", len(k), k))
        lines += ["", "category -> product (macro mean over label values with items)",
                  f"{'field':<22}{'labels':>8}" + "".join(f"{k:>10}" for k in keys)]
        for f, c in cat.items():
            lines.append(f"{f:<22}{c.get('labels_with_items', 0):>8}"
                         + "".join(f"{_f(c.get('mean', {}).get(k)):>10}" for k in keys))
    cls = results.get("classification") or {}
    if cls:
        lines += ["", "classification",
                  f"{'field/method':<32}{'items':>7}{'acc':>9}{'top5':>9}{'macroF1':>9}{'microF1':>9}{'wF1':>9}{'mAP':>9}"]
        for name, r in cls.items():
            top = next((v for k, v in r.items() if k.startswith("top") and k.endswith("_accuracy")), None)
            acc = r.get("accuracy", r.get("exact_match"))
            lines.append(f"{name:<32}{r.get('items', 0):>7}{_f(acc):>9}{_f(top):>9}{_f(r.get('macro_f1')):>9}"
                         f"{_f(r.get('micro_f1')):>9}{_f(r.get('weighted_f1')):>9}{_f(r.get('mAP')):>9}")
        if any("exact_match" in r for r in cls.values()):
            lines.append("(multi-label rows: acc = exact-match accuracy)")
    lines += [f"note: {n}" for n in results.get("notes") or []]
    return "\n".join(lines)
