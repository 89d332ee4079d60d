"""The one base class of errors a user fixes (a config key, a file, a shard, a model path).

`fashiontune <command>` prints such an error as ONE line, `fashiontune <command>: <message>`, and exits 2;
`--debug` (or FASHIONTUNE_DEBUG=1) adds the traceback. Anything else is a bug and keeps its traceback.
Every subclass's message names the file, key or field and says what to do.
"""

from __future__ import annotations

_WORKER_PREFIX = "Caught "
_WORKER_MARK = "\nOriginal Traceback (most recent call last):"


class UserError(Exception):
    """Bad input a user must fix; the message names where (file / key / sample) and the fix."""

    def __init__(self, *args: object) -> None:
        # A DataLoader worker's exception comes back rebuilt as type(e)("Caught X in DataLoader worker ...
        # Original Traceback ... <module>.X: <message>"): keep the user's message, and the worker's traceback
        # aside for --debug.
        self.worker_traceback = ""
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith(_WORKER_PREFIX) and _WORKER_MARK in args[0]:
            text = args[0]
            tag = f"\n{type(self).__module__}.{type(self).__qualname__}: "
            at = text.rfind(tag)
            if at >= 0:
                self.worker_traceback = text
                args = (text[at + len(tag):].rstrip("\n"),)
        super().__init__(*args)


def one_line(e: BaseException) -> str:
    """The message on one line: a user (and a log grep) reads lines; multi-line messages get cut."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
