"""The one base class of errors a user fixes (a config key, a file, a shard, a model path).

`fashiontune <command>` prints such an error as ONE line, `fashiontune <command>: <message>`, and exits 2;
`--debug` (or FASHIONTUNE_DEBUG=1) adds the traceback. Anything else is a bug and keeps its traceback.
Every subclass's message names the file, key or field and says what to do.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input a user must fix; the message names where (file / key / sample) and the fix."""
