"""Which image files the builder may read: those inside the input folder, reached through no symlink, unless
the user says otherwise (`--allow-outside-input`, `--follow-symlinks`).

Why: the paths come from files the builder does not control (a CSV's `image` column, ids in a table, the
links in a folder). Without this, `../../home/x/private.jpg` or a link to another tree would be packed into
shards that are then shared. The check runs on the lexically normalised path (`a/../b` is `b`), which is
also the path the writer opens, with O_NOFOLLOW on the file itself when links are not followed. It trusts
the input folder not to be rearranged by someone else while the build runs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

FIX_OUTSIDE = "move it into the input folder, or pass --allow-outside-input if reading it is intended"
FIX_LINK = "pass --follow-symlinks to read through symbolic links"


class PathPolicy:
    def __init__(self, root: Path, follow_symlinks: bool = False, allow_outside: bool = False):
        self.root = os.path.normpath(str(root))
        self.follow_symlinks, self.allow_outside = follow_symlinks, allow_outside
        self._dir_link: dict[str, Optional[str]] = {}  # folder -> the first symlink on its way (cache)

    def check(self, path: str | Path) -> tuple[str, Optional[tuple[str, str]]]:
        """(the path to open, lexically normalised; None if it may be read, else (reason, detail))."""
        raw = str(path)
        norm = os.path.normpath(raw if os.path.isabs(raw) else os.path.join(self.root, raw))
        inside = norm.startswith(self.root.rstrip("/") + "/")
        if not inside and not self.allow_outside:
            return norm, ("outside_input", f"{raw} is outside the input folder {self.root} (an absolute path or "
                                           f"'..'); {FIX_OUTSIDE}")
        if not self.follow_symlinks:
            link = self._first_link(norm, inside)
            if link:
                return norm, ("symlink", f"{link} is a symbolic link (-> {_target(link)}), not followed; {FIX_LINK}")
        return norm, None

    def _first_link(self, norm: str, inside: bool) -> Optional[str]:
        """The first symlink among the components below the root (only the file itself for an outside path)."""
        parent = os.path.dirname(norm)
        if inside and parent != self.root:
            if parent not in self._dir_link:
                self._dir_link[parent] = self._first_link(parent, True)
            if self._dir_link[parent]:
                return self._dir_link[parent]
        return norm if _is_link(norm) else None


def _is_link(p: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(p).st_mode)
    except OSError:  # missing: the builder reports it as missing_image
        return False


def _target(p: str) -> str:
    try:
        return os.readlink(p)
    except OSError:
        return "?"
