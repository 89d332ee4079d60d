"""`make demo` stays true: the whole chain on a tiny corpus (~1 min on 2 cores; +~1 min for the real-data study
where Fashion-MNIST is installed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_the_whole_chain(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "fashiontune", "demo", "--out", str(out), "--n", "160",
                           "--epochs", "1", "--fmnist-train", "1000"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (out / "results.md").read_text()
    assert "subCategory/classify" in text and "t2i" in text and "i2t" in text
    assert "| kagl | subCategory accuracy (softmax head) |" in text and "(random init)" in text
    for run in ("tiny-kagl-softmax", "tiny-deepfashion-contrastive"):
        results = json.loads((out / "runs" / run / "eval-test" / "results.json").read_text())
        manifest = json.loads((out / "shards" / ("kagl" if "kagl" in run else "deepfashion-mm") / "manifest.json").read_text())
        assert results["items"] == manifest["splits"]["test"]["count"]  # the whole split, not a batch
        assert (out / "runs" / run / "export" / "open_clip_pytorch_model.bin").is_file()
        assert list((out / "runs" / run / "plots").glob("*.png"))
        assert (out / "runs" / run / "eval-untrained" / "results.json").is_file()  # the baseline column
    # each table says which model it scored, and the fine-tuned one is printed once (by its eval job)
    assert proc.stdout.count("evaluation of the model at ") == proc.stdout.count("FINE-TUNED")
    assert proc.stdout.count("random init, untrained) on split") == proc.stdout.count("BASELINE")
    from fashiontune.sources.fashion_mnist import installed_dir

    if installed_dir() is not None:  # the real-data study: the full official test split
        assert "## Real data: Fashion-MNIST" in text and "| fashion-mnist | label accuracy (softmax head) |" in text
        results = json.loads((out / "runs" / "fmnist-softmax" / "eval-test" / "results.json").read_text())
        assert results["items"] == 10_000
    # the demo ends with a search index of each catalogue and the command that serves it
    for fmt in ("kagl", "deepfashion-mm", "deepfashion-mm-untrained"):
        info = json.loads((out / "index" / fmt / "index.json").read_text())
        manifest = json.loads((out / "shards" / fmt.removesuffix("-untrained") / "manifest.json").read_text())
        assert info["items"] == sum(s["count"] for s in manifest["splits"].values())  # every split: the catalogue
    assert f"fashiontune serve {out / 'index' / 'kagl'}" in proc.stdout
    assert f"fashiontune serve {out / 'index' / 'deepfashion-mm'} {out / 'index' / 'deepfashion-mm-untrained'}" in proc.stdout
