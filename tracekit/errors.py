"""The small exception tree every tracekit layer raises; the CLI turns these into exit code 2."""

from __future__ import annotations


class TracekitError(Exception):
    """Base class: a problem the user can fix; the message says what, where and what to do."""


class ConfigError(TracekitError):
    """A setting (argument or TRACEKIT_* variable) has a value tracekit cannot use."""


class SpoolError(TracekitError):
    """A spool or import file cannot be read as a whole (wrong version, not a spool file, ...)."""


class StoreError(TracekitError):
    """The DuckDB store cannot be opened, is locked by another process, or is not a tracekit store."""


class NotFoundError(TracekitError):
    """A run, campaign or other named object does not exist in the store."""


class QueryError(TracekitError):
    """A user query (tracekit sql) failed or tried to write."""
