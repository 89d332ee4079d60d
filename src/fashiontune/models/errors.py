"""The model package's errors: each message names the file or setting and what to pass instead."""

from ..errors import UserError


class ModelLoadError(UserError, RuntimeError):
    """A model or its weights cannot be built here; the message says what to pass instead."""


class UnsafeFileError(ModelLoadError):
    """A weights/state file was refused (pickle globals outside the weights-only allowlist) or is unreadable."""
