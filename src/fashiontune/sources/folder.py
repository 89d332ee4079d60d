"""A folder of class folders: <input>/<class>/<image> (nested sub-folders allowed; the top one is the label).

Ids come from the path relative to the input ('shirts/a.jpg' -> 'shirts__a_jpg'), so they are unique and
stable. Hidden files (.DS_Store, ._x) are ignored; other non-image files inside a class folder and images
lying directly in the input folder (no class) each yield a Skip, so nothing is dropped silently.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from fashiontune.records import Record, Skip

from .base import Source, SourceError, path_id, skip

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _walk(root: Path) -> list[str]:
    """Relative paths ('/'-separated) of all non-hidden files, sorted (the same on every file system)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        for name in filenames:
            if not name.startswith("."):
                out.append(name if rel_dir == "." else f"{rel_dir}/{name}")
    return sorted(out)


class FolderSource(Source):
    name = "folder"
    required = {}

    def iter_records(self, input_dir: Path) -> Iterator[Record | Skip]:
        root = self.check(input_dir)
        if not any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(root)):
            raise SourceError(f"folder: {root} has no class folders; expected <input>/<class>/<image>.jpg "
                              "(one sub-folder per label, like torchvision's ImageFolder).")
        seen: set[str] = set()
        for rel in _walk(root):
            ext = os.path.splitext(rel)[1].lower()
            if "/" not in rel:
                if ext in IMAGE_EXTS:
                    yield skip(path_id(rel), str(root / rel), "no_class_folder",
                               "image directly in the input folder; move it into a <class>/ folder")
                continue  # README, licence, _synth_quirks.json ... beside the class folders
            if ext not in IMAGE_EXTS:
                yield skip(path_id(rel), str(root / rel), "unsupported_file",
                           f"not an image ({', '.join(sorted(IMAGE_EXTS))}); remove it, or ignore this line")
                continue
            label, _, _ = rel.partition("/")
            rid = path_id(rel)
            if rid in seen:  # 'a.jpg' and 'a_jpg' map to one id
                yield skip(f"{rid}_dup", str(root / rel), "duplicate_id", f"another file already has id {rid}; rename it")
                continue
            seen.add(rid)
            yield Record(id=rid, group_id=rid, image_path=root / rel, text="", labels={"label": label},
                         meta={"path": rel})
