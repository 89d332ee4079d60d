"""Training: one Accelerate loop (single process, DDP or DeepSpeed ZeRO) for every task.

    from fashiontune.train import load_train_config, run_training
    cfg = load_train_config("configs/tiny-kagl-softmax.yaml", ["loop.max_steps=50"])
    results = run_training(cfg)        # also writes runs/<name>/{config.yaml, metrics.jsonl, results.json, ...}

Run directory: config.yaml, metrics.jsonl, tb/ (TensorBoard), checkpoints/step_<N>/ (complete.json marks a
finished save), export/ (best-by-validation, open_clip-loadable + heads), results.json, plots/*.png.
"""

from fashiontune.train.config import (
    CheckpointConfig,
    DistConfig,
    LogConfig,
    LoopConfig,
    OptimConfig,
    Precision,
    ScheduleConfig,
    ScheduleName,
    Strategy,
    TrainConfig,
    load_train_config,
)


def __getattr__(name: str):
    # run_training is imported on first use: torch/open_clip load only when training
    if name == "run_training":
        from fashiontune.train.loop import run_training

        return run_training
    raise AttributeError(f"module 'fashiontune.train' has no attribute {name!r}")


__all__ = [
    "CheckpointConfig", "DistConfig", "LogConfig", "LoopConfig", "OptimConfig", "Precision", "ScheduleConfig",
    "ScheduleName", "Strategy", "TrainConfig", "load_train_config", "run_training",
]
