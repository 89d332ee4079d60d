import enum
from dataclasses import dataclass, field

import pytest

from fashiontune.config import ConfigError, config_hash, load_config, save_config


class Mode(enum.Enum):
    exact = "exact"
    resampled = "resampled"


@dataclass
class Optim:
    lr: float = 1e-4
    warmup: int = 10


@dataclass
class Job:
    name: str = "run"
    mode: Mode = Mode.exact
    optim: Optim = field(default_factory=Optim)


def test_layers_default_file_cli(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: fromfile\noptim:\n  lr: 0.5\n")
    cfg = load_config(Job, f, ["optim.warmup=3", "mode=resampled"])
    assert cfg.name == "fromfile" and cfg.optim.lr == 0.5 and cfg.optim.warmup == 3
    assert cfg.mode is Mode.resampled


def test_unknown_key_names_key_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(Job, None, ["optim.lrr=1"])
    msg = str(e.value)
    assert "optim.lrr" in msg and "optim.lr" in msg and "warmup" in msg


def test_unknown_key_in_file_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("nmae: x\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*nmae.*name"):
        load_config(Job, f)


def test_wrong_type_and_enum_choices():
    with pytest.raises(ConfigError, match="optim.warmup"):
        load_config(Job, None, ["optim.warmup=lots"])
    with pytest.raises(ConfigError, match=r"mode.*(exact|resampled)"):
        load_config(Job, None, ["mode=sometimes"])


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Job, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Job, None, ["optim.lr"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(Job, None, ["name=x", "optim.lr=0.25"])
    path = save_config(cfg, tmp_path / "run")
    again = load_config(Job, path)
    assert again == cfg and config_hash(again) == config_hash(cfg)


def test_nested_key_error_lists_valid_keys_under_postponed_annotations():
    # TrainConfig's module uses `from __future__ import annotations`: nested types are strings there.
    from fashiontune.train.config import TrainConfig

    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, ["optim.lrr=1"])
    assert "Did you mean 'optim.lr'" in str(e.value) and "weight_decay" in str(e.value)
