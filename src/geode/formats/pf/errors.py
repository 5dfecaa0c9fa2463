"""Errors of the protected-file library: one-line messages that name the file."""

from __future__ import annotations

import enum

from geode.errors import FormatError, GeodeError


class PfErrorKind(enum.StrEnum):
    """Why a protected file was refused."""

    NOT_PROTECTED = "not-protected"  # empty, size not a multiple of 4096, bad magic
    VERSION = "version"  # unknown major version
    FLAGS = "flags"  # unknown feature flags
    RECOVERY_NEEDED = "recovery-needed"  # a write was pending and no recovery file was replayed
    WRONG_KEY = "wrong-key"  # the metadata node does not authenticate under this key
    PATH_MISMATCH = "path-mismatch"  # bound path differs from the path it is opened as
    BAD_METADATA = "bad-metadata"  # authenticated, but malformed (path not terminated)
    CORRUPT_NODE = "corrupt-node"  # an MHT or data node fails its tag check
    TRUNCATED = "truncated"  # fewer nodes than the recorded size needs
    EXTENDED = "extended"  # more nodes than the recorded size needs
    BAD_RECOVERY = "bad-recovery"  # the recovery file is malformed


class PfError(FormatError):
    """A protected file that is corrupt, not authentic, or not the one asked for.

    ``kind`` says why; ``node`` is the physical node number when one node is at fault.
    """

    def __init__(self, kind: PfErrorKind, message: str, *, where: str | None = None,
                 node: int | None = None) -> None:
        self.kind = kind
        self.node = node
        super().__init__(message, where=where)


class PfIOError(GeodeError):
    """The host file could not be read or written; ``errno`` is the OS error number if any."""

    def __init__(self, message: str, *, where: str | None = None,
                 errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message, where=where)
