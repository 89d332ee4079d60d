"""A folder of class folders: <input>/<class>/<image> (nested sub-folders allowed; the top one is the label).

Ids come from the path relative to the input ('shirts/a.jpg' -> 'shirts__a_jpg'), so they are unique and
stable. Hidden files (.DS_Store, ._x) are ignored; other non-image files inside a class folder, images lying
directly in the input folder (no class), names that are not UTF-8 and symlinked folders (unless
follow_symlinks) each yield a Skip, so nothing is dropped silently. Symlinked files are listed: the builder
decides (see shards/paths.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from fashiontune.records import Record, Skip

from .base import Source, SourceError, bad_filename, path_id, printable, skip, undecodable_name

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _walk(root: Path, follow_symlinks: bool) -> tuple[list[str], list[Skip]]:
    """Relative paths ('/'-separated) of all non-hidden non-folder entries, sorted (the same on every file
    system), and a Skip for every folder not read: a symlinked one (unless `follow_symlinks`), one that
    links back to a folder above it (a loop), one whose name is not UTF-8."""
    files: list[str] = []
    skips: list[Skip] = []

    def visit(d: str, rel: str, above: frozenset) -> None:
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.startswith("."):
                continue
            r = f"{rel}{e.name}"
            if not e.is_dir(follow_symlinks=True):
                files.append(r)  # files, broken links, FIFOs, sockets...: the builder reads or refuses each
            elif undecodable_name(r):
                skips.append(bad_filename(r + "/", e.path))
            elif e.is_symlink() and not follow_symlinks:
                skips.append(skip(path_id(r), e.path, "symlink", f"a symlinked folder (-> {os.readlink(e.path)}): "
                                  "not read; pass --follow-symlinks to read symlinked files and folders"))
            else:
                st = os.stat(e.path)
                key = (st.st_dev, st.st_ino)
                if key in above:
                    skips.append(skip(path_id(r), e.path, "symlink", "a symlink to a folder above it (a loop): "
                                      "not read again"))
                else:
                    visit(e.path, r + "/", above | {key})

    st = os.stat(root)
    visit(str(root), "", frozenset({(st.st_dev, st.st_ino)}))
    return sorted(files), skips


class FolderSource(Source):
    name = "folder"
    required = {}

    def iter_records(self, input_dir: Path) -> Iterator[Record | Skip]:
        root = self.check(input_dir)
        if not any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(root)):
            raise SourceError(f"folder: {root} has no class folders; expected <input>/<class>/<image>.jpg "
                              "(one sub-folder per label, like torchvision's ImageFolder).")
        files, skipped = _walk(root, self.follow_symlinks)
        yield from skipped
        seen: set[str] = set()
        for rel in files:
            ext = os.path.splitext(rel)[1].lower()
            if "/" not in rel:
                if ext in IMAGE_EXTS:
                    yield skip(path_id(printable(rel)), printable(str(root / rel)), "no_class_folder",
                               "image directly in the input folder; move it into a <class>/ folder")
                continue  # README, licence, _synth_quirks.json ... beside the class folders
            if undecodable_name(rel):
                yield bad_filename(rel, str(root / rel))
                continue
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
