"""Across nodes on the simulated multi-node SLURM cluster (`start.sh --nodes 3`: node01..node03 are network
namespaces with their own address and hostname on one machine; SLURM_CONF=/etc/slurm-multi/slurm.conf).

Every job takes 2 nodes x 2 tasks (configs/cluster/slurm-multinode.yaml); the third node lets a requeued or
node-failed job come back on another node order. What runs across "hosts" here is real: SLURM's placement,
ranks from SLURM_PROCID/SLURM_NODEID, the rendezvous at the first host of SLURM_JOB_NODELIST resolved by name,
gloo over the bridge between namespaces, checkpoints written by ranks on two nodes. What it cannot show:
separate filesystems or memory, GPUs, NCCL, real network bandwidth.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_slurm_train_eval import _flat

from fashiontune.cli import main
from fashiontune.launch import devcluster
from fashiontune.launch import submit as S
from fashiontune.launch import testing as T
from fashiontune.launch.cluster import load_cluster
from fashiontune.launch.devcluster import MULTI_CONF
from fashiontune.train.testing import FAULT_TRACE_ENV

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "configs/cluster/slurm-multinode.yaml"
CONFIG = REPO / "configs/tiny-kagl-softmax.yaml"
STEPS, EVERY, TOL = 9, 3, 1e-4
ZERO2 = ["dist.strategy=deepspeed", f"dist.deepspeed_config={REPO / 'configs/deepspeed/zero2.json'}"]
pytestmark = pytest.mark.multinode


@pytest.fixture(scope="module")
def multi(multinode_cluster):
    """SLURM_CONF names the multi-node cluster for this module only (the one-node tests use the default)."""
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = MULTI_CONF
    yield multinode_cluster
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def _srun(*argv: str, timeout: float = 60) -> str:
    p = subprocess.run(["srun", *argv], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def _node_states() -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True).stdout
    return [line.split()[1] for line in sorted(out.splitlines()) if line.strip()]


def test_stop_tears_down_what_start_made_and_start_is_idempotent(multi):
    """First in the module: it takes the cluster down and up again (nothing else runs on it)."""
    stop = subprocess.run(["bash", str(REPO / "slurm/dev-cluster/stop.sh"), "--nodes"], capture_output=True,
                          text=True)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "ftnode" not in netns and "node01" not in Path("/etc/hosts").read_text()
    assert subprocess.run(["ip", "link", "show", "ftmbr0"], capture_output=True).returncode != 0  # bridge gone
    for _ in range(2):  # from nothing, then again: "already up"
        c = devcluster.start(nodes=3)
        assert c.ok, c.output
    assert "already up" in c.output
    T.wait_until("every node idle", lambda: _node_states() == ["idle"] * 3, 60)
    assert "10.77.0.12 node02" in Path("/etc/hosts").read_text()


def test_nodes_are_separate_hosts_that_reach_each_other_by_name(multi):
    T.wait_until("every node idle", lambda: _node_states() == ["idle"] * 3, 60)
    code = ("import os, socket; s = socket.create_connection(('node01', 6918), timeout=5); "
            "print(os.environ['SLURM_PROCID'], socket.gethostname(), socket.gethostbyname(socket.gethostname()), "
            "s.getsockname()[0])")
    lines = sorted(_srun("-N2", "-n2", "--ntasks-per-node=1", "python3", "-c", code).split("\n"))[1:]
    # each task on its own host and address; from node02, node01's slurmd answered at its own address
    assert lines == ["0 node01 10.77.0.11 10.77.0.11", "1 node02 10.77.0.12 10.77.0.12"]


def test_smoke_job_two_nodes_by_two_tasks_through_the_cli(multi, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["submit", "smoke", "--cluster", str(CLUSTER), f"cluster.log_dir={tmp_path}/logs",
               f"run_dir={run}", "steps=10", "step_s=0.0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    res = json.loads((run / "results.json").read_text())
    assert res["world_size"] == 4 and res["acc"] == res["expected_acc"]
    start = json.loads((run / "starts.jsonl").read_text().splitlines()[0])
    job_id = start["job_id"]
    assert int(job_id) >= 700000  # the multi-node cluster's ids, never the one-node cluster's
    assert start["master"] == f"node01:{20000 + int(job_id) % 20000}"  # first host of SLURM_JOB_NODELIST
    hosts = {}
    for k in range(4):
        log = (tmp_path / f"logs/{job_id}/{job_id}_{k}_log.out").read_text()
        m = re.search(r"rank=(\d).* node_rank=(\d).* host=(\S+)", log)
        hosts[int(m.group(1))] = (int(m.group(2)), m.group(3))
    assert hosts == {0: (0, "node01"), 1: (0, "node01"), 2: (1, "node02"), 3: (1, "node02")}



def test_shard_array_spreads_over_two_nodes_and_merges_like_a_local_build(multi, tmp_path):
    """Each array task asks for a whole node's CPUs (4): started in one scheduling pass on an idle cluster (an
    earlier job may still be completing), the two tasks take two nodes."""
    from fashiontune.shards.build import build_shards
    from fashiontune.shards.config import ShardBuildConfig
    from fashiontune.synth import generate

    corpus = generate("kagl", tmp_path / "corpus", 40, seed=0, image_size=32)
    common = ["source=kagl", f"input={corpus}", "shard_size=5", "image_size=32", "workers=1", "progress=false"]
    local = build_shards(ShardBuildConfig(source="kagl", input=str(corpus), out=str(tmp_path / "local"),
                                          shard_size=5, image_size=32, workers=1, progress=False))
    cluster = load_cluster(CLUSTER, [f"log_dir={tmp_path}/logs", "cpus_per_task=4"])
    cfg = S.load_job_config("shards", None, [f"out={tmp_path}/array", "num_jobs=2", *common])
    T.wait_until("every node idle", lambda: _node_states() == ["idle"] * 3, 120)
    sub = S.submit("shards", cfg, cluster)
    results = S.wait(sub, timeout_s=240)
    assert results[-1][0] == local == json.loads((tmp_path / "array/manifest.json").read_text())
    hosts = [re.search(r"\[fashiontune\] job=shards .* host=(\S+)", j.stdout() or "").group(1) for j in sub.jobs]
    assert len(set(hosts)) == 2, hosts  # one task per node

# -- training across nodes: DDP 2 nodes x 2 tasks == 1 process; preemption and a dead node on the way ---------
def _common(shards: Path, out: Path, name: str) -> list[str]:
    """Global batch 16 = 4 ranks x batch 4, or 1 process x 4 workers x batch 4 x grad_accum 4 (the data plan's
    slots are (rank, worker): both runs read the same 4 contiguous ranges; tests/test_train_distributed.py)."""
    return [f"data.shards={shards}", f"out_dir={out}", f"name={name}", "data.batch_size=4",
            "data.shuffle_shards=false", "data.shuffle_buffer=0", f"loop.max_steps={STEPS}",
            f"checkpoint.every_steps={EVERY}", "checkpoint.export_best=false", "log.every_steps=1",
            "log.tensorboard=false", "log.plots=false", "log.progress=false"]


def _job_cfg(shards: Path, out: Path, name: str, *extra: str):
    return S.load_job_config("train", str(CONFIG), [*_common(shards, out, name), "data.workers=0", *extra])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(run / "export/open_clip_pytorch_model.bin", map_location="cpu", weights_only=True)
    sd.update({f"head.{k}": v for k, v in torch.load(run / "export/heads.pt", weights_only=True).items()})
    return sd


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _rank0_hosts(log_dir: Path, job_id: str) -> list[str]:
    """The host of global rank 0 in each run of a (requeued) job, from its task log (appended per run)."""
    log = (log_dir / job_id / f"{job_id}_0_log.out").read_text()
    return re.findall(r"\[fashiontune\] job=train .* host=(\S+)", log)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from fashiontune.train.testing import build_tiny_shards

    return build_tiny_shards("kagl", tmp_path_factory.mktemp("kagl"), n=300)


def _sbatch_train_template(shards: Path, root: Path) -> str:
    """slurm/train.sbatch on 2 CPU nodes: 2 processes per node (GPUS_PER_NODE), DDP over gloo."""
    env = {**os.environ, "SETUP": f"source {REPO}/.venv/bin/activate", "GPUS_PER_NODE": "2", "STRATEGY": "ddp",
           "CONFIG": str(CONFIG), "OVERRIDES": " ".join([*_common(shards, root, "tpl"), "data.workers=0"])}
    p = subprocess.run(["sbatch", "--parsable", "--partition=multi", "--nodes=2", "--gpus-per-node=0",
                        "--cpus-per-task=2", "--oversubscribe", "--mem=1G", "--time=30",
                        f"--output={root}/tpl-%j.out", "slurm/train.sbatch"],
                       cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return p.stdout.strip().split(";")[0]


@pytest.fixture(scope="module")
def trained(multi, shards, tmp_path_factory):
    """2-node x 2-task jobs side by side (each node advertises 4 CPUs: two such jobs share a node), and the
    1-process reference and a local eval in this process meanwhile:
    - "plain": DDP, uninterrupted; then an eval job of its export across 2 nodes;
    - "zero2": DeepSpeed ZeRO-2 (gloo), uninterrupted;
    - "tpl": DDP through slurm/train.sbatch (one `accelerate launch` per node, --machine_rank = SLURM_NODEID);
    - "faulty": DDP, preempted (USR2) right after its step-3 checkpoint, held there by the fault trace FIFO until
      SLURM shows the requeue; node01 is drained (until the next hold), so its second run lands on node[02-03]
      (rank 0 on the node that held ranks 2-3). Held again after its step-6 checkpoint (once the other jobs are done), its batch
      node (node02: slurmd, batch shell, ranks) is killed: SLURM marks the node down, the job NODE_FAILs and is
      requeued, and the third run (node[01,03]) finishes."""
    from fashiontune.config import load_config
    from fashiontune.eval.config import EvalConfig
    from fashiontune.eval.run import run_eval
    from fashiontune.train import load_train_config, run_training

    root = tmp_path_factory.mktemp("multi-train")
    cluster = load_cluster(CLUSTER, [f"log_dir={root}/logs"])
    t0 = time.monotonic()
    subs = {"plain": S.submit("train", _job_cfg(shards, root, "plain"), cluster),
            "zero2": S.submit("train", _job_cfg(shards, root, "zero2", *ZERO2), cluster)}
    tpl = _sbatch_train_template(shards, root)
    trace = T.TraceFifo(root / "trace.fifo")
    os.environ[FAULT_TRACE_ENV] = str(trace.path)  # sbatch passes the environment at submission
    try:
        subs["faulty"] = S.submit("train", _job_cfg(shards, root, "faulty"), cluster)
    finally:
        del os.environ[FAULT_TRACE_ENV]
    job_id = subs["faulty"].jobs[0].job_id
    times, results, killed = {}, {}, ""

    def done(name: str) -> None:
        results[name] = S.wait(subs[name], timeout_s=600)
        times[name] = round(time.monotonic() - t0, 1)

    try:
        run_training(load_train_config(CONFIG, [*_common(shards, root, "ref"), "data.workers=4",
                                                "loop.grad_accum=4"]))
        times["ref"] = round(time.monotonic() - t0, 1)
        trace.wait_for(f"saved {EVERY}", 420)
        trace.hold()  # every rank blocks at its next fault point: still running when the signal lands
        T.usr2(job_id)  # preemption
        T.wait_until(f"job {job_id} requeued", lambda: T.restarts(job_id) >= 1, 300)
        T.set_node_state("node01", "drain")  # the rerun must take node[02-03]
        seen = len(trace.read())
        trace.release()  # (the first run's rank 0 has exited: its other ranks cannot complete another save)
        done("plain")
        evals = [f"model.checkpoint={root}/plain/export", f"data.shards={shards}", "data.split=val",
                 "plots.grid_queries=0"]
        subs["eval"] = S.submit("eval", S.load_job_config("eval", None, [*evals, f"out_dir={root}/eval-multi"]),
                                cluster)
        results["eval-local"] = run_eval(load_config(EvalConfig, None, [*evals, f"out_dir={root}/eval-local"]))
        trace.wait_for(f"saved {2 * EVERY}", 420, since=seen)  # the second run's step-6 checkpoint is complete
        trace.hold()
        T.set_node_state("node01", "resume")  # the rerun is placed: node01 may take work again
        done("zero2")
        done("eval")
        times["template"] = T.wait_final_state(tpl, 600), round(time.monotonic() - t0, 1)
        killed = T.job_info(job_id)["BatchHost"]
        T.kill_node(killed)  # the node dies under the job
        T.wait_until(f"job {job_id} requeued after {killed} died", lambda: T.restarts(job_id) >= 2, 180)
        trace.release()
        done("faulty")
        assert T.wait_final_state(job_id, 120) == "COMPLETED"
    finally:
        subprocess.run(["scancel", tpl, *[i for sub in subs.values() for i in sub.job_ids]], capture_output=True)
        trace.close()
        subprocess.run(["scontrol", "update", "nodename=node01", "state=resume"], capture_output=True)
        back = devcluster.start(nodes=3)  # the killed node's slurmd again (idempotent)
        assert back.ok, back.output
    print(f"multi-node jobs done (s after the first submission): {times}")
    return root, cluster, results, job_id, killed


@pytest.mark.slow  # the `trained` fixture: six 4-rank runs
def test_ddp_two_nodes_by_two_tasks_equals_one_process(trained):
    root, _, results, _, _ = trained
    r, ref = _results(root / "plain"), _results(root / "ref")
    assert r["world_size"] == 4 and ref["world_size"] == 1 and r["step"] == ref["step"] == STEPS
    assert r["samples_seen"] == ref["samples_seen"] == STEPS * 16
    assert [x["step"] for x in results["plain"][0]] == [STEPS] * 4  # all 4 ranks ran the whole loop
    assert _max_diff(root / "plain", root / "ref") < TOL
    assert r["final"]["loss"] == pytest.approx(ref["final"]["loss"], abs=1e-3)


@pytest.mark.slow  # the `trained` fixture: six 4-rank runs
def test_preempted_then_node_killed_job_resumes_on_other_nodes_with_the_uninterrupted_result(trained):
    root, cluster, _, job_id, killed = trained
    r = _results(root / "faulty")
    assert killed == "node02"
    # rank 0 on node01, then (node01 drained) on node02, then (node02 dead) on node01 again, with node03
    assert _rank0_hosts(Path(cluster.log_dir), job_id) == ["node01", "node02", "node01"]
    assert r["resumed_from_step"] == 2 * EVERY and r["step"] == STEPS and r["world_size"] == 4
    assert T.restarts(job_id) == 2
    assert _max_diff(root / "faulty", root / "plain") < TOL
    assert r["final"]["loss"] == pytest.approx(_results(root / "plain")["final"]["loss"], abs=1e-6)


@pytest.mark.slow  # the `trained` fixture: six 4-rank runs
def test_deepspeed_zero2_two_nodes_by_two_tasks_equals_one_process(trained):
    root, _, _, _, _ = trained
    r, ref = _results(root / "zero2"), _results(root / "ref")
    assert r["world_size"] == 4 and r["step"] == STEPS and r["samples_seen"] == ref["samples_seen"]
    parts = sorted(p.name for p in (root / f"zero2/checkpoints/step_{STEPS:08d}/pytorch_model").iterdir())
    assert len([p for p in parts if "optim_states" in p]) == 4  # optimizer state partitioned over the 4 ranks
    assert _max_diff(root / "zero2", root / "ref") < TOL
    assert r["final"]["loss"] == pytest.approx(ref["final"]["loss"], abs=1e-3)


@pytest.mark.slow  # the `trained` fixture: six 4-rank runs
def test_eval_job_across_two_nodes_equals_a_local_evaluation(trained):
    root, _, results, _, _ = trained
    remote, local = json.loads((root / "eval-multi/results.json").read_text()), results["eval-local"]
    assert remote["world_size"] == 4
    assert remote["items"] == local["items"]
    for key in ("retrieval", "category", "classification"):
        assert _flat(remote[key]) == pytest.approx(_flat(local[key]), abs=1e-6), key



@pytest.mark.slow  # the `trained` fixture: six 4-rank runs
def test_train_sbatch_template_on_two_nodes_equals_one_process(trained):
    root, _, results, _, _ = trained
    log = next(root.glob("tpl-*.out")).read_text()
    assert "2 node(s) x 2, master node01:" in log, log
    r, ref = _results(root / "tpl"), _results(root / "ref")
    assert r["world_size"] == 4 and r["step"] == STEPS and r["samples_seen"] == ref["samples_seen"]
    assert _max_diff(root / "tpl", root / "ref") < TOL
