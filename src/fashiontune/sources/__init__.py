"""Corpus adapters: one per on-disk format, each turning a download into Record / Skip items.

    src = get_source("kagl")
    for item in src.iter_records(Path("/data/kaggle-fashion")):   # Record or Skip, deterministic order
        ...

Adapters read metadata only; the shard builder opens the images (and reports missing / corrupt ones).
"""

from __future__ import annotations

import importlib

from .base import Source, SourceError, SourceSkip, path_id, safe_id, skip

# name -> (module, class)
SOURCES: dict[str, tuple[str, str]] = {
    "kagl": ("fashiontune.sources.kagl", "KaglSource"),
    "deepfashion-mm": ("fashiontune.sources.deepfashion", "DeepFashionMMSource"),
    "imaterialist": ("fashiontune.sources.imaterialist", "IMaterialistSource"),
    "folder": ("fashiontune.sources.folder", "FolderSource"),
    "csv": ("fashiontune.sources.csv_items", "CsvSource"),
    "fashion-mnist": ("fashiontune.sources.fashion_mnist", "FashionMnistSource"),
}

__all__ = ["SOURCES", "Source", "SourceError", "SourceSkip", "get_source", "path_id", "safe_id", "skip"]


def get_source(name: str, encoding: str = "utf-8", follow_symlinks: bool = False) -> Source:
    """The adapter `name`; `encoding` of its text files, `follow_symlinks` into symlinked folders."""
    if name not in SOURCES:
        raise SourceError(f"unknown source {name!r}; valid sources: {', '.join(SOURCES)}")
    module, cls = SOURCES[name]
    return getattr(importlib.import_module(module), cls)(encoding=encoding, follow_symlinks=follow_symlinks)
