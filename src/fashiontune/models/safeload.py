"""Load weight and state files without ever running code from them.

Every `.pt` / `.bin` file fashiontune reads itself (heads, checkpoint state) goes through `load_tensors`:
torch's weights-only unpickler, which rebuilds tensors, numbers, strings and plain containers and refuses
any other pickle global *before* calling it, so a crafted file's `__reduce__` never runs. Model weights are
read by open_clip / timm with the same unpickler (weights_only=True); models/loading.py reports a refusal
there the same way. A refused or unreadable file raises UnsafeFileError naming the file.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch

from .errors import UnsafeFileError


def _unsafe_globals(path: Path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip checkpoint: the unpickler's own message says what it met
        return ""
    return f" (it needs {', '.join(names)})" if names else ""


def refused(path: Path, hint: str) -> str:
    return (f"{path}: refused to load: the file holds pickled code or objects outside the weights-only "
            f"allowlist{_unsafe_globals(path)}; nothing from it was run. It was not written by fashiontune "
            f"or was tampered with. {hint}")


def load_tensors(path: str | Path, hint: str, allow: Iterable[Any] = (), mmap: bool = False) -> Any:
    """torch.load(path, weights_only=True) on CPU, with extra allowlisted classes `allow`; a blocked pickle
    or an unreadable file raises UnsafeFileError("<path>: ... <hint>"). `mmap` skips reading tensor data
    (enough to check a file's pickle)."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsafeFileError(refused(path, hint)) from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise UnsafeFileError(f"{path}: cannot be read ({str(e).splitlines()[0][:200]}). {hint}") from e
