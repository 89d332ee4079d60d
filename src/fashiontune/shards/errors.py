"""Errors of the shard builder that a user acts on (the message says what to do)."""


class BuildError(RuntimeError):
    """The build cannot finish: missing shards at merge, too many bad inputs, a worker crash."""


class ManifestError(ValueError):
    """A shard directory without a readable manifest.json."""
