"""`fashiontune submit index` on the dev SLURM cluster: the index built by a 2-task job (each rank embeds
its part, as the eval job does) equals one built here. Cost: ~30-60 s (queue, two ranks starting torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_eval_job import write_shards

from fashiontune.launch import submit as S
from fashiontune.launch.cluster import load_cluster

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_index_job_on_slurm_equals_a_local_build(dev_cluster, tmp_path):
    from fashiontune.config import load_config
    from fashiontune.index.build import build_index
    from fashiontune.index.config import IndexConfig

    shards = write_shards(tmp_path / "shards", {"val": [4], "test": [5, 1, 7]})
    common = [f"data.shards={shards}", "model.name=ft-tiny-vit", "model.image_size=32", "data.batch_size=3",
              "data.num_workers=0", "kind=hnsw"]
    cluster = load_cluster(REPO / "configs/cluster/slurm-cpu.yaml", [f"log_dir={tmp_path}/logs"])
    sub = S.submit("index", S.load_job_config("index", None, [*common, f"out={tmp_path}/slurm"]), cluster)
    local = build_index(load_config(IndexConfig, None, [*common, f"out={tmp_path}/local"]))
    results = S.wait(sub, timeout_s=300)
    remote = json.loads((tmp_path / "slurm/index.json").read_text())
    assert S.main_result(results)["items"] == remote["items"] == local["items"] == 13
    assert remote["world_size"] == 2 and local["world_size"] == 1  # each rank embedded its part
    assert remote["recall@10"] == local["recall@10"]
    assert (tmp_path / "slurm/items.jsonl").read_text() == (tmp_path / "local/items.jsonl").read_text()
    a, b = (np.load(tmp_path / d / "embeddings/image.npy") for d in ("slurm", "local"))
    np.testing.assert_allclose(a, b, atol=1e-5)
