"""Every bad input through the real CLI (`fashiontune.cli.main`, and once the console process itself):
exit code 2, ONE line `fashiontune <cmd>: ...` on stderr naming the file / key / sample and the fix, no
traceback; with --debug (or FASHIONTUNE_DEBUG=1) the traceback too. A real bug keeps its traceback.

Inputs: hand-written tiny shards (13 items, 32 px, tests/test_eval_job.write_shards) damaged on purpose
(a corrupt JPEG, a tar cut inside a member), a garbled manifest, missing / garbled model exports, config
mistakes. No random fault points: each damage is at a fixed sample. Cost: ~1 min on 2 cores (tiny
random-init model; train runs stop at the damage or before their first step; one subprocess).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fashiontune.cli import main
from test_eval_job import write_shards

ROOT = Path(__file__).resolve().parents[1]
BAD_KEY = "it007"  # second sample of train/shard-000001.tar
BAD_SHARD = "train/shard-000001.tar"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("cli") / "shards", {"train": [5, 4], "val": [4]})


def _copy(shards: Path, dst: Path) -> Path:
    shutil.copytree(shards, dst)
    return dst


def corrupt_jpeg(shards: Path, dst: Path) -> Path:
    """BAD_KEY's .jpg replaced by bytes that are no image (the tar itself stays well-formed)."""
    out = _copy(shards, dst)
    tar = out / BAD_SHARD
    members = []
    with tarfile.open(tar) as tf:
        for ti in tf:
            data = tf.extractfile(ti).read()
            if ti.name == f"{BAD_KEY}.jpg":
                data = b"\xff\xd8\xff\xe0 this is not a JPEG any more"
            members.append((ti.name, data))
    with tarfile.open(tar, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return out


def truncated_member(shards: Path, dst: Path) -> Path:
    """The shard cut in the middle of BAD_KEY's .jpg data (as a copy interrupted by a full disk)."""
    out = _copy(shards, dst)
    tar = out / BAD_SHARD
    with tarfile.open(tar) as tf:
        ti = tf.getmember(f"{BAD_KEY}.jpg")
        cut = ti.offset_data + ti.size // 2
    tar.write_bytes(tar.read_bytes()[:cut])
    return out


def eval_args(shards: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["eval", "--config", str(ROOT / "configs/eval/tiny.yaml"), f"data.shards={shards}",
            f"out_dir={tmp_path / 'eval'}", "plots.grid_queries=0", "cache=false", *extra]


def train_args(shards: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["train", f"data.shards={shards}", f"out_dir={tmp_path}", "name=run", "model.name=ft-tiny-vit",
            "model.image_size=32", "task.name=classify", "task.field=color", "data.batch_size=4",
            "data.workers=0", "loop.epochs=1", "checkpoint.every_steps=0", "log.progress=false",
            "log.tensorboard=false", "log.plots=false", *extra]


def one_line_error(err: str, cmd: str, *needles: str) -> str:
    """The error line: exactly one `fashiontune <cmd>:` line, the last one, naming every needle; no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    ours = [ln for ln in lines if ln.startswith(f"fashiontune {cmd}: ")]
    assert len(ours) == 1 and lines[-1] == ours[0], err
    assert "Traceback" not in err, err
    for n in needles:
        assert n in ours[0], (n, ours[0])
    return ours[0]


# --------------------------------------------------------------------------- damaged shards
def test_corrupt_jpeg_in_eval(shards, tmp_path, capsys):
    bad = corrupt_jpeg(shards, tmp_path / "bad")
    assert main(eval_args(bad, tmp_path, "data.split=train")) == 2
    one_line_error(capsys.readouterr().err, "eval", str(bad / BAD_SHARD), f"'{BAD_KEY}'", "does not decode",
                   f"fashiontune shards verify {bad}")


def test_corrupt_jpeg_in_train_read_by_a_worker(shards, tmp_path, capsys):
    bad = corrupt_jpeg(shards, tmp_path / "bad")
    # data.workers=1: the error crosses a DataLoader worker and still comes out as the one line
    assert main(train_args(bad, tmp_path, "data.workers=1")) == 2
    one_line_error(capsys.readouterr().err, "train", str(bad / BAD_SHARD), f"'{BAD_KEY}'", "does not decode",
                   "shards verify")


def test_truncated_member_in_eval(shards, tmp_path, capsys):
    bad = truncated_member(shards, tmp_path / "bad")
    assert main(eval_args(bad, tmp_path, "data.split=train")) == 2
    one_line_error(capsys.readouterr().err, "eval", str(bad / BAD_SHARD), BAD_KEY, "cut short",
                   f"fashiontune shards verify {bad}")


def test_truncated_member_in_train(shards, tmp_path, capsys):
    bad = truncated_member(shards, tmp_path / "bad")
    assert main(train_args(bad, tmp_path)) == 2
    one_line_error(capsys.readouterr().err, "train", str(bad / BAD_SHARD), BAD_KEY, "cut short", "shards verify")


def test_garbled_manifest_in_train(shards, tmp_path, capsys):
    bad = _copy(shards, tmp_path / "bad")
    (bad / "manifest.json").write_text('{"format": "fashiontune-shards", "splits": ')
    assert main(train_args(bad, tmp_path)) == 2
    one_line_error(capsys.readouterr().err, "train", str(bad / "manifest.json"), "not valid JSON", "shards merge")


def test_missing_manifest_in_eval(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(eval_args(tmp_path / "empty", tmp_path)) == 2
    one_line_error(capsys.readouterr().err, "eval", str(tmp_path / "empty" / "manifest.json"), "shards build")
    assert not (tmp_path / "eval").exists()  # inputs are checked before the output directory is made


# --------------------------------------------------------------------------- models
def test_missing_and_garbled_exports(shards, tmp_path, capsys):
    args = eval_args(shards, tmp_path, "data.split=val")
    assert main([*args, f"model.checkpoint={tmp_path / 'nope'}"]) == 2
    one_line_error(capsys.readouterr().err, "eval", f"model.checkpoint={tmp_path / 'nope'}", "no such file")
    assert not (tmp_path / "eval").exists()

    garbled = tmp_path / "export"
    garbled.mkdir()
    (garbled / "export.json").write_text("{half an export")
    (garbled / "open_clip_pytorch_model.bin").write_bytes(b"\0" * 64)
    assert main([*args, f"model.checkpoint={garbled}"]) == 2
    one_line_error(capsys.readouterr().err, "eval", str(garbled / "export.json"), "not valid JSON", "re-export")

    (garbled / "export.json").write_text(json.dumps({"name": "ft-tiny-vit", "backbone": "open_clip"}))
    assert main([*args, f"model.checkpoint={garbled}"]) == 2  # weights that are no checkpoint at all
    one_line_error(capsys.readouterr().err, "eval", str(garbled / "open_clip_pytorch_model.bin"))


# --------------------------------------------------------------------------- config mistakes, before any work
def test_task_error_names_the_field(shards, tmp_path, capsys):
    assert main(train_args(shards, tmp_path, "task.field=colour")) == 2
    one_line_error(capsys.readouterr().err, "train", "task.field='colour'", "color")
    assert not (tmp_path / "run").exists()


def test_top_level_yaml_list(tmp_path, capsys):
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- name: run\n- optim: {lr: 0.1}\n")
    assert main(["train", "--config", str(cfg)]) == 2
    one_line_error(capsys.readouterr().err, "train", str(cfg), "top level is a list", "mapping")
    cfg.write_text("just-a-word\n")
    assert main(["eval", "--config", str(cfg)]) == 2
    one_line_error(capsys.readouterr().err, "eval", str(cfg), "single value")


def test_best_metric_typo_rejected_before_the_first_step(shards, tmp_path, capsys):
    assert main(train_args(shards, tmp_path, "checkpoint.best_metric=acuracy")) == 2
    one_line_error(capsys.readouterr().err, "train", "checkpoint.best_metric='acuracy'", "Did you mean 'accuracy'")
    assert not (tmp_path / "run").exists()  # no config.yaml, metrics.jsonl, checkpoint or export was written


def test_retrieval_ks_zero(shards, tmp_path, capsys):
    assert main(eval_args(shards, tmp_path, "data.split=val", "retrieval.ks=[0]")) == 2
    one_line_error(capsys.readouterr().err, "eval", "retrieval.ks=[0]", ">= 1")
    assert not (tmp_path / "eval").exists()


# --------------------------------------------------------------------------- --debug, and real bugs
def test_debug_flag_and_env_show_the_traceback(shards, tmp_path, capsys, monkeypatch):
    bad = corrupt_jpeg(shards, tmp_path / "bad")
    for argv in (["--debug", *eval_args(bad, tmp_path, "data.split=train")],
                 [*eval_args(bad, tmp_path, "data.split=train"), "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "in decode_rgb" in err
        assert err.strip().splitlines()[-1].startswith("fashiontune eval: ")
    monkeypatch.setenv("FASHIONTUNE_DEBUG", "1")
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "missing.yaml does not exist" in err.strip().splitlines()[-1]


def test_a_bug_keeps_its_traceback(monkeypatch):
    import fashiontune.eval.cli as eval_cli

    def broken(args):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(eval_cli, "run", broken)
    with pytest.raises(KeyError):
        main(["eval"])


def test_console_process_exits_2_with_one_line(shards, tmp_path):
    """The real process (python -m fashiontune): exit status 2, no traceback printed by the interpreter."""
    bad = corrupt_jpeg(shards, tmp_path / "bad")
    env = {k: v for k, v in os.environ.items() if k != "FASHIONTUNE_DEBUG"}
    p = subprocess.run([sys.executable, "-m", "fashiontune", *eval_args(bad, tmp_path, "data.split=train",
                                                                           "data.num_workers=1")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert p.returncode == 2, p.stderr
    one_line_error(p.stderr, "eval", str(bad / BAD_SHARD), f"'{BAD_KEY}'", "shards verify")


def test_a_full_disk_is_one_line(shards, tmp_path, capsys, monkeypatch):
    import errno

    import fashiontune.eval.run as eval_run

    def full(cfg, out_dir, name="config.yaml"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(out_dir) / name))

    monkeypatch.setattr(eval_run, "save_config", full)
    assert main(eval_args(shards, tmp_path, "data.split=val")) == 2
    one_line_error(capsys.readouterr().err, "eval", str(tmp_path / "eval" / "config.yaml"), "No space left",
                   "write elsewhere")
