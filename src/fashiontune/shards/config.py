"""`ShardBuildConfig`: everything `fashiontune shards build` needs, as one typed dataclass.

Loaded with `fashiontune.config.load_config` (defaults <- YAML <- key=value). `splits` is a string
(`train=0.8,val=0.1,test=0.1`) rather than a dict on purpose: OmegaConf merges dicts key by key, so a YAML
`{train: 0.9, val: 0.1}` laid over the default would silently keep `test: 0.1`. A string replaces as a whole.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from fashiontune.config import ConfigError

SOURCES = ("kagl", "deepfashion-mm", "imaterialist", "folder", "csv", "fashion-mnist")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class ShardBuildConfig:
    source: str = ""  # one of SOURCES (fashiontune.sources.get_source)
    input: str = ""  # the corpus directory, as the source expects it
    out: str = "shards/out"  # output directory (one per corpus build)
    image_size: int = 256  # shorter side after resize; never upscaled
    quality: int = 90  # JPEG quality of the re-encoded image
    shard_size: int = 1000  # samples per shard (the last shard of a split may hold fewer)
    splits: str = "train=0.8,val=0.1,test=0.1"  # name=fraction,...; fractions sum to 1
    split_salt: str = "fashiontune"  # change it to draw a different (still deterministic) split
    workers: int = 0  # processes; 0 = every CPU this process may use
    num_jobs: int = 1  # array size: job `job_index` of `num_jobs` builds a contiguous range of shards
    job_index: int = 0
    max_bad_fraction: float = 0.05  # the build fails if skipped/listed exceeds this
    encoding: str = "utf-8"  # of the corpus's CSV / JSON / label files; undecodable bytes are errors, not guesses
    follow_symlinks: bool = False  # read images through symlinked files and folders (default: error line)
    allow_outside_input: bool = False  # read image paths outside the input folder (absolute, '..')
    progress: bool = True  # tqdm bar + end-of-build summary on stderr

    def split_fractions(self) -> dict[str, float]:
        return parse_splits(self.splits)

    def resolved_workers(self) -> int:
        if self.workers > 0:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))  # honours SLURM's --cpus-per-task
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)

    def validate(self, need_source: bool = True) -> None:
        """Raise ConfigError naming the key, the bad value and the fix."""
        if need_source and self.source not in SOURCES:
            raise ConfigError(f"source={self.source!r} is not a known source: pass one of {', '.join(SOURCES)}.")
        if not self.input:
            raise ConfigError("input is empty: pass --input DIR (the corpus directory).")
        if not Path(self.input).exists():
            raise ConfigError(f"input={self.input!r} does not exist: pass the corpus directory with --input.")
        if not self.out:
            raise ConfigError("out is empty: pass --out DIR.")
        checks = [
            ("image_size", self.image_size >= 8, "an integer >= 8 (e.g. 256)"),
            ("quality", 1 <= self.quality <= 100, "an integer in 1..100 (e.g. 90)"),
            ("shard_size", self.shard_size >= 1, "an integer >= 1 (e.g. 1000)"),
            ("workers", self.workers >= 0, "an integer >= 0 (0 = all CPUs)"),
            ("num_jobs", self.num_jobs >= 1, "an integer >= 1"),
            ("job_index", 0 <= self.job_index < max(self.num_jobs, 1), f"an integer in 0..{self.num_jobs - 1}"),
            ("max_bad_fraction", 0.0 <= self.max_bad_fraction <= 1.0, "a fraction in 0..1 (e.g. 0.05)"),
        ]
        for key, ok, want in checks:
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r} is invalid: pass {want}.")
        parse_splits(self.splits)
        from fashiontune.sources.textfile import check_encoding

        check_encoding(self.encoding)


def parse_splits(text: str) -> dict[str, float]:
    """`train=0.8,val=0.1,test=0.1` -> {"train": 0.8, ...} (order kept: it is the cumulative order)."""
    fix = "pass e.g. --splits train=0.8,val=0.1,test=0.1 (names of letters/digits/_/-, fractions summing to 1)"
    out: dict[str, float] = {}
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not _SPLIT_NAME.match(name):
            raise ConfigError(f"splits={text!r}: {part!r} is not name=fraction; {fix}.")
        try:
            frac = float(value)
        except ValueError:
            raise ConfigError(f"splits={text!r}: fraction {value!r} of {name!r} is not a number; {fix}.") from None
        if not 0.0 <= frac <= 1.0:
            raise ConfigError(f"splits={text!r}: fraction {frac} of {name!r} is outside 0..1; {fix}.")
        if name in out:
            raise ConfigError(f"splits={text!r}: split {name!r} appears twice; {fix}.")
        out[name] = frac
    if not out:
        raise ConfigError(f"splits={text!r} names no split; {fix}.")
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"splits={text!r}: fractions sum to {total:g}, not 1; {fix}.")
    return out
