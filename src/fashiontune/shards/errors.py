"""Errors of the shard builder that a user acts on (the message says what to do)."""

from fashiontune.errors import UserError


class BuildError(UserError, RuntimeError):
    """The build cannot finish: missing shards at merge, too many bad inputs, a worker crash."""


class ManifestError(UserError, ValueError):
    """A shard directory without a readable manifest.json."""


class OutputError(BuildError):
    """An output file could not be written (disk full, read-only folder): the message names it and the fix."""
