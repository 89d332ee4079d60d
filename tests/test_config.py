import enum
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fashiontune.config import ConfigError, config_hash, load_config, save_config

REPO = Path(__file__).resolve().parents[1]


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


# --------------------------------------------------------------------------- validation before any work
def _train(*overrides):
    from fashiontune.train.config import load_train_config

    return load_train_config(None, ["data.shards=/nonexistent/shards", *overrides])


def _eval(*overrides):
    from fashiontune.eval.config import EvalConfig

    return load_config(EvalConfig, None, list(overrides)).validate()


@pytest.mark.parametrize("override, key", [
    ("data.batch_size=0", "data.batch_size"),
    ("data.prefetch_factor=0", "data.prefetch_factor"),
    ("optim.beta2=1.0", "optim.beta2"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"),
    ("loop.max_steps=-1", "loop.max_steps"),
    ("log.eval_every_steps=-5", "log.eval_every_steps"),
    ("model.aug_scale_min=0", "model.aug_scale_min"),
    ("model.aug_scale_max=2", "model.aug_scale_max"),
    ("model.image_size=0", "model.image_size"),
    ("task.label_smoothing=1.0", "task.label_smoothing"),
    ("task.multilabel.threshold=1.5", "task.multilabel.threshold"),
    ("task.multilabel.focal_alpha=2", "task.multilabel.focal_alpha"),
    ("task.multilabel.tune_metric=f1", "task.multilabel.tune_metric"),
    ("task.prompts.template_set=imagenet", "task.prompts.template_set"),
    ("task.prompts.templates=[a photo]", "task.prompts.templates[0]"),
    ("task.freeze.mode=sometimes", "task.freeze.mode"),
    ("checkpoint.best_metric=acuracy", "checkpoint.best_metric"),
])
def test_train_config_out_of_range_names_key(override, key):
    with pytest.raises(ConfigError) as e:
        _train(override)
    msg = str(e.value)
    assert key in msg and "\n" not in msg


def test_best_metric_typo_suggests_and_lists_the_task_metrics():
    with pytest.raises(ConfigError) as e:
        _train("task.name=classify", "checkpoint.best_metric=acuracy")
    assert "Did you mean 'accuracy'" in str(e.value) and "macro_f1" in str(e.value)
    assert _train("task.name=classify", "checkpoint.best_metric=macro_f1").checkpoint.best_metric == "macro_f1"
    with pytest.raises(ConfigError, match="mean_R@1"):
        _train("task.name=contrastive", "checkpoint.best_metric=accuracy")


@pytest.mark.parametrize("override, key", [
    ("retrieval.ks=[0]", "retrieval.ks"),
    ("retrieval.ks=[]", "retrieval.ks"),
    ("category.ks=[5,-1]", "category.ks"),
    ("retrieval.chunk_size=-1", "retrieval.chunk_size"),
    ("retrieval.device=gpu", "retrieval.device"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.num_workers=-2", "data.num_workers"),
    ("category.templates=[]", "category.templates"),
    ("category.templates=['a {colour}']", "category.templates[0]"),  # {label} / {} is the one field
    ("classification.multi_label_threshold=1.5", "classification.multi_label_threshold"),
    ("plots.grid_k=0", "plots.grid_k"),
    ("precision=fp8", "precision"),
])
def test_eval_config_out_of_range_names_key(override, key):
    with pytest.raises(ConfigError) as e:
        _eval(override)
    msg = str(e.value)
    assert key in msg and "\n" not in msg


def test_valid_configs_pass():
    _eval("retrieval.ks=[1,5]", "classification.multi_label_threshold=-1", "retrieval.device=cuda:1")
    _train("task.name=multilabel", "task.field=tags", "checkpoint.best_metric=mAP")


# metric names declared without a model == what each task's evaluate() really reports
def _evaluated_names(cfg) -> list[str]:
    import torch

    from fashiontune.models import ModelConfig, load_clip
    from fashiontune.tasks import build_task
    from test_tasks_synthetic import batch, manifest

    torch.manual_seed(0)
    loaded = load_clip(ModelConfig(name="ft-tiny-vit", image_size=32))
    task = build_task(cfg, loaded, manifest())
    tok = loaded.tokenizer if task.needs_text else None
    return sorted(task.evaluate([batch(8, seed=1, tokenizer=tok)]))


@pytest.mark.parametrize("kw", [
    dict(name="classify", field="colour"),
    dict(name="multilabel", field="colours"),
    dict(name="attributes", fields=["colour", "colours"]),
    dict(name="attributes"),  # every field of the manifest
    dict(name="zeroshot", field="colours"),
    dict(name="contrastive"),
    dict(name="rerank"),
], ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_declared_metric_names_match_evaluate(kw):
    from fashiontune.tasks.config import TaskConfig, TaskName
    from fashiontune.tasks.metric_names import validation_metrics
    from test_tasks_synthetic import manifest

    cfg = TaskConfig(**{**kw, "name": TaskName(kw["name"])})
    assert validation_metrics(cfg, manifest()) == _evaluated_names(cfg)


def test_metric_names_check_fields_against_the_manifest():
    from fashiontune.tasks import TaskError
    from fashiontune.tasks.config import TaskConfig, TaskName
    from fashiontune.tasks.metric_names import validation_metrics
    from test_tasks_synthetic import manifest

    with pytest.raises(TaskError, match="task.fields='sleeve'.*colour"):
        validation_metrics(TaskConfig(name=TaskName.attributes, fields=["colour", "sleeve"]), manifest())
    # without a manifest: known for single-field tasks, unknown (None: checked when the run starts) for the others
    assert "accuracy" in validation_metrics(TaskConfig(name=TaskName.classify, field="x"))
    assert validation_metrics(TaskConfig(name=TaskName.attributes)) is None


def test_task_checked_against_manifest_and_model_before_any_work(tmp_path):
    import json

    from test_tasks_synthetic import manifest

    shards = tmp_path / "shards"
    shards.mkdir()
    m = {"format": "fashiontune-shards", "builder_version": 1, **manifest()}
    m["splits"] = {"train": {"count": 400, "shards": []}}
    (shards / "manifest.json").write_text(json.dumps(m))
    from fashiontune.tasks import TaskError
    from fashiontune.train.config import load_train_config

    def train(*o):
        return load_train_config(None, [f"data.shards={shards}", *o])

    with pytest.raises(TaskError, match="task.field='colours' is multi-label.*task.name=multilabel"):
        train("task.name=classify", "task.field=colours")
    with pytest.raises(TaskError, match="task.field='sleeve'.*colour"):
        train("task.name=classify", "task.field=sleeve")
    with pytest.raises(ConfigError, match="data.train_split='trian'.*train"):
        train("task.name=classify", "task.field=colour", "data.train_split=trian")
    with pytest.raises(ConfigError, match="checkpoint.best_metric='colour/acuracy'.*Did you mean 'colour/accuracy'"):
        train("task.name=attributes", "checkpoint.best_metric=colour/acuracy")
    with pytest.raises(ConfigError, match="model.backbone=timm"):
        train("task.name=labeltext", "task.field=colour", "model.backbone=timm")
    assert train("task.name=attributes", "checkpoint.best_metric=mean/mAP").checkpoint.best_metric == "mean/mAP"


_CORPUS = {"kagl": "kagl", "deepfashion-mm": "deepfashion-mm", "imaterialist": "imaterialist", "fewshot": "folder",
           "folder": "folder"}


def test_shipped_experiment_configs_fit_their_corpus(tmp_path_factory):
    """Every configs/*.yaml, validated against (tiny synthetic) shards of its corpus: its task fields exist
    with the right kind and its checkpoint.best_metric is a metric that task reports."""
    from fashiontune.train.config import load_train_config
    from fashiontune.train.testing import build_tiny_shards

    root = tmp_path_factory.mktemp("corpora")
    built: dict[str, Path] = {}
    files = sorted((REPO / "configs").glob("*.yaml"))
    assert len(files) >= 8
    for f in files:
        cfg = load_train_config(f)
        corpus = _CORPUS[Path(cfg.data.shards).name.removeprefix("tiny-")]
        if corpus not in built:
            built[corpus] = build_tiny_shards(corpus, root / corpus, n=40, image_size=16)
        load_train_config(f, [f"data.shards={built[corpus]}"])  # raises when the config does not fit
