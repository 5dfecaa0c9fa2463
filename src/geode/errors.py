"""User-facing errors.

Every error a user can cause (bad manifest, bad key, unreadable file...) is a
:class:`GeodeError`. The CLI prints ``str(error)`` as one line on stderr and exits
non-zero, without a traceback. Anything else escaping the CLI is a bug in Geode.
"""

from __future__ import annotations


class GeodeError(Exception):
    """An error caused by the user's input or environment; its message is one line."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class ManifestError(GeodeError):
    """The manifest (template, TOML or schema) is wrong; ``where`` names file and/or key."""


class SigningError(GeodeError):
    """Signing key or SIGSTRUCT problem."""


class FormatError(GeodeError):
    """A binary structure could not be parsed (truncated, bad magic, bad field)."""
