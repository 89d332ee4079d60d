"""Malicious pickles in every file a run or an eval loads are refused with one clear error; the payload never runs.

The payload is what an attacker would ship: an object whose `__reduce__` calls `os.system("touch <marker>")`,
saved with torch.save (a real zip checkpoint) or as a bare pickle. A sanity test shows the payload does run
under a plain `torch.load(weights_only=False)` (what accelerate did for custom_checkpoint_0.pkl), so a marker
that stays absent means the loader refused it, not that the payload was broken.

Files covered: a checkpoint's model.pt, optimizer.pt, rng_state_0.pt (and a corrupt/truncated RNG state and
trainer_state.json), accelerate's old custom_checkpoint_0.pkl / random_states_0.pkl (never read any more),
DeepSpeed's files (checked before DeepSpeed unpickles them), the export weights (open_clip and timm) and
heads.pt of an eval, and model.pretrained of a run. Cost: ~25 s (one 4-step training run, tiny model builds).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from fashiontune.cli import main
from fashiontune.models import ModelConfig, UnsafeFileError, export_model, load_clip, save_heads
from fashiontune.train.checkpoint import CheckpointManager
from fashiontune.train.testing import build_tiny_shards

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/tiny-kagl-softmax.yaml"


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path, bare: bool = False) -> None:
    """Replace `path` with a file that runs the payload when fully unpickled."""
    obj = {"weight": torch.zeros(2), "evil": Payload(marker)}
    if bare:
        path.write_bytes(pickle.dumps(obj, protocol=2))  # the protocol torch.load expects
    else:
        torch.save(obj, path)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


def test_the_payload_runs_under_an_unsafe_load(tmp_path, marker):
    plant(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


# -- training checkpoints ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A 4-step run with complete checkpoints at steps 2 and 4 (not copied per test: tests copy it)."""
    out = tmp_path_factory.mktemp("run")
    shards = build_tiny_shards("kagl", tmp_path_factory.mktemp("kagl"), n=300)
    assert main(["train", "--config", str(CONFIG), *args(shards, out, "src", 4)]) == 0
    return shards, out / "src"


def args(shards: Path, out: Path, name: str, steps: int) -> list[str]:
    return [f"data.shards={shards}", f"out_dir={out}", f"name={name}", "data.workers=0", "data.batch_size=16",
            f"loop.max_steps={steps}", "checkpoint.every_steps=2", "log.tensorboard=false", "log.plots=false",
            "log.eval_max_batches=1"]


def resume(trained, tmp_path, tamper) -> int:
    """Copy the trained run, tamper with its newest checkpoint (step 4), start it again for 6 steps."""
    shards, src = trained
    shutil.copytree(src, tmp_path / "run")
    (tmp_path / "run" / "results.json").unlink()  # as if it had been stopped at step 4
    tamper(tmp_path / "run" / "checkpoints" / "step_00000004")
    return main(["train", "--config", str(CONFIG), *args(shards, tmp_path, "run", 6)])


@pytest.mark.parametrize("name", ["model.pt", "optimizer.pt", "rng_state_0.pt"])
@pytest.mark.parametrize("bare", [False, True], ids=["torch-zip", "bare-pickle"])
def test_a_malicious_checkpoint_file_is_refused_and_never_run(trained, tmp_path, marker, capsys, name, bare):
    rc = resume(trained, tmp_path, lambda ck: plant(ck / name, marker, bare))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not marker.exists()
    assert len(err) == 1 and f"step_00000004/{name}: refused to load" in err[0], err
    assert "nothing from it was run" in err[0] and "checkpoint.resume=false" in err[0]
    assert not (tmp_path / "run" / "results.json").exists()


def test_accelerate_pickles_planted_in_a_checkpoint_are_never_read(trained, tmp_path, marker, capsys):
    """The issue's attack: custom_checkpoint_0.pkl / random_states_0.pkl with a payload. fashiontune no
    longer writes nor reads them (the schedule is JSON, the RNG state rng_state_<rank>.pt)."""
    def tamper(ck: Path) -> None:
        plant(ck / "custom_checkpoint_0.pkl", marker)
        plant(ck / "random_states_0.pkl", marker, bare=True)

    assert resume(trained, tmp_path, tamper) == 0
    assert not marker.exists()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["resumed_from_step"] == 4


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "cannot be read"),  # truncated by a full disk
    (lambda p: torch.save({"python": [3, [1, 2], None], "numpy": "?", "torch": torch.zeros(3)}, p),
     "corrupt RNG state"),
], ids=["truncated", "wrong-content"])
def test_corrupt_rng_state_stops_the_resume_with_a_clear_error(trained, tmp_path, capsys, damage, says):
    rc = resume(trained, tmp_path, lambda ck: damage(ck / "rng_state_0.pt"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "step_00000004/rng_state_0.pt" in err[0] and says in err[0], err


def test_corrupt_trainer_state_names_the_file(trained, tmp_path, capsys):
    rc = resume(trained, tmp_path, lambda ck: (ck / "trainer_state.json").write_text('{"step": 4, "sched'))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "step_00000004/trainer_state.json: unreadable" in err[0], err


# -- DeepSpeed's own files: checked with the weights-only unpickler before DeepSpeed reads them -----------
class FakeEngine:
    def __init__(self):
        self.loaded = False

    def load_checkpoint(self, path, tag):
        self.loaded = True
        return path, {}


def test_a_malicious_deepspeed_file_is_refused_before_deepspeed_reads_it(tmp_path, marker):
    ds = tmp_path / "step_00000004" / "pytorch_model"
    ds.mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(2)}}, ds / "mp_rank_00_model_states.pt")
    plant(ds / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    engine = FakeEngine()
    with pytest.raises(UnsafeFileError, match=r"zero_pp_rank_0_mp_rank_00_optim_states.pt: refused to load"):
        CheckpointManager(None, tmp_path, 2, model=engine)._load_deepspeed(tmp_path / "step_00000004")
    assert not engine.loaded and not marker.exists()


def test_deepspeed_files_with_their_own_classes_pass_the_check(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    ds = tmp_path / "step_00000004" / "pytorch_model"
    ds.mkdir(parents=True)
    torch.save({"optimizer_state_dict": {"zero_stage": ZeroStageEnum.gradients, "loss_scaler": LossScaler(1.0),
                                         "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}]}},
               ds / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    engine = FakeEngine()
    CheckpointManager(None, tmp_path, 2, model=engine)._load_deepspeed(tmp_path / "step_00000004")
    assert engine.loaded


# -- what eval (and model.pretrained) loads ---------------------------------------------------------------
@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    loaded = load_clip(ModelConfig(name="ft-tiny-vit", pretrained=""))
    export_model(loaded, out)
    save_heads(out, {"cls.weight": torch.zeros(3, 8)}, {"task": "classify", "fields": {}})
    return out


def tampered_copy(export_dir: Path, tmp_path: Path, name: str, marker: Path) -> Path:
    d = tmp_path / "export"
    shutil.copytree(export_dir, d)
    plant(d / name, marker)
    return d


def test_malicious_export_weights_are_refused_by_eval(export_dir, tmp_path, marker):
    from fashiontune.eval.config import EvalModelConfig
    from fashiontune.eval.model import load_eval_model

    d = tampered_copy(export_dir, tmp_path, "open_clip_pytorch_model.bin", marker)
    with pytest.raises(UnsafeFileError, match=r"open_clip_pytorch_model.bin: refused to load.*nothing from it was run"):
        load_eval_model(EvalModelConfig(checkpoint=str(d)))
    assert not marker.exists()


def test_malicious_heads_are_refused_by_eval(export_dir, tmp_path, marker):
    from fashiontune.eval.heads import load_export_heads

    d = tampered_copy(export_dir, tmp_path, "heads.pt", marker)
    with pytest.raises(UnsafeFileError, match=r"heads.pt: refused to load"):
        load_export_heads(d)
    assert not marker.exists()


def test_malicious_pretrained_weights_are_refused_open_clip_and_timm(tmp_path, marker):
    plant(tmp_path / "w.bin", marker)
    with pytest.raises(UnsafeFileError, match=r"w.bin: refused to load"):
        load_clip(ModelConfig(name="ft-tiny-vit", pretrained=str(tmp_path / "w.bin")))
    with pytest.raises(UnsafeFileError, match=r"w.bin: refused to load"):
        load_clip(ModelConfig(backbone="timm", timm_name="resnet18", pretrained=str(tmp_path / "w.bin")))
    assert not marker.exists()
