"""The view plan: which host files a program sees, and under which policy.

A :class:`ViewPlan` is derived, without any I/O, from a rendered and checked manifest (the
dict ``tomllib`` returns). Keys may be missing; they default as Gramine defaults them:

* ``fs.root`` defaults to ``{ type = "chroot", uri = "file:." }``; ``fs.mounts`` to ``[]``;
  a mount's ``type`` to ``"chroot"``; ``fs.start_dir`` to ``"/"``.
* ``sgx.trusted_files`` entries are ``{ uri, sha256 }`` tables (``gramine-manifest`` expands
  directories and fills the hashes in); a bare ``"file:..."`` string left in a rendered
  manifest is an error, since there is nothing to verify it against.
* ``sgx.allowed_files`` are ``file:`` or ``dev:`` URIs; an entry allows itself and, like in
  Gramine, everything below it (with or without a trailing ``/``).
* ``sgx.file_check_policy`` defaults to ``"strict"``.

Host paths are taken from ``file:`` URIs and normalized textually (``.`` and ``..`` folded,
symlinks *not* resolved), relative URIs resolving against ``base_dir``: this is how Gramine
keys trusted and allowed files, so a file reached through a chroot mount is trusted iff the
mount's host path joined with the path inside the mount is a key of
:attr:`ViewPlan.trusted_paths`.

Mount semantics (Gramine's): mounts are applied in order, ``fs.root`` first. A later mount
whose path is the same as, or an ancestor of, an earlier mount's path hides the earlier one
entirely; otherwise the innermost mount covering a path serves it (:meth:`ViewPlan.resolve`).

``type = "encrypted"`` mounts (not allowed as ``fs.root``) need a ``file:`` URI (a host
directory or a single file); ``key_name`` defaults to ``"default"`` and ``enable_recovery`` to
false. Besides the resolved :attr:`Mount.host`, such a mount keeps :attr:`Mount.uri_path`, the
URI's path *as written* (``""`` becomes ``"."``): Gramine binds each encrypted file to the
normalized text ``<uri_path>/<path inside the mount>``, not to an absolute host path (see
:mod:`geode.runtime.encfs`).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from types import MappingProxyType

from geode.errors import ManifestError
from geode.manifest import expanded
from geode.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["MOUNT_TYPES", "Mount", "ViewPlan", "normalize_view_path"]

#: Mount types the view knows.
MOUNT_TYPES = frozenset({"chroot", "tmpfs", "encrypted", "untrusted_shm"})
DEFAULT_KEY_NAME = "default"
FILE_CHECK_POLICIES = ("strict", "allow_all_but_log")

_SHA256_PATTERN = r"[0-9a-fA-F]{64}"


def normalize_view_path(path: str) -> str:
    """Absolute, normalized path inside the view (relative paths start at ``/``)."""
    norm = posixpath.normpath(posixpath.join("/", path))
    # posixpath keeps a leading "//" (POSIX leaves it implementation-defined); Linux does not.
    return "/" + norm.lstrip("/")


def _is_normal_abs(path: str) -> bool:
    """True if ``posixpath.normpath`` would return ``path`` unchanged (and it is absolute)."""
    return (path.startswith("/") and not path.startswith("//") and "//" not in path
            and "/./" not in path and "/../" not in path and not path.endswith(("/", "/.", "/.."))
            ) or path == "/"


def _host_str(uri: str, base_dir: str, where: str, *, schemes: tuple[str, ...]) -> str:
    """The normalized host path of ``uri`` (relative ones from ``base_dir``)."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme not in schemes:
        wanted = " or ".join(f'"{s}:..."' for s in schemes)
        raise ManifestError(f"expected a {wanted} URI, got {uri!r}", where=where)
    if "\0" in rest:
        raise ManifestError(f"URI contains a NUL byte: {uri!r}", where=where)
    if _is_normal_abs(rest):
        return rest  # the common case in rendered manifests: nothing to normalize
    if rest == "":
        rest = "."
    joined = posixpath.join(base_dir, rest)
    norm = posixpath.normpath(joined)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


class Mount:
    """One entry of the mount table (``fs.root`` or an element of ``fs.mounts``).

    A plain class rather than a frozen dataclass (~0.7 ms to create at every start) or a
    NamedTuple (whose ``index`` is tuple's method).
    """

    __slots__ = ("path", "type", "host", "options", "index", "key_name", "enable_recovery",
                 "uri_path")

    def __init__(self, path: str, type: str, host: str | None,
                 options: Mapping[str, Any] = MappingProxyType({}), index: int = 0,
                 key_name: str | None = None, enable_recovery: bool = False,
                 uri_path: str | None = None) -> None:
        self.path = path
        self.type = type
        self.host = host
        self.options = options
        #: position in :attr:`ViewPlan.mounts` (0 is fs.root)
        self.index = index
        #: encrypted mounts: the key's name (``/dev/attestation/keys/<name>``)
        self.key_name = key_name
        #: encrypted mounts: keep a ``<file>.gramine.recovery`` journal for crash recovery
        self.enable_recovery = enable_recovery
        #: encrypted mounts: the URI's path as written (the base of every bound path)
        self.uri_path = uri_path

    def __repr__(self) -> str:
        return f"Mount({self.where}: {self.type} {self.path} <- {self.host})"

    @property
    def where(self) -> str:
        return "fs.root" if self.index == 0 else f"fs.mounts[{self.index - 1}]"


def _parse_mount(raw: object, index: int, base_dir: str) -> Mount:
    where = "fs.root" if index == 0 else f"fs.mounts[{index - 1}]"
    if not isinstance(raw, Mapping):
        raise ManifestError(f"a mount must be a table, got {raw!r}", where=where)
    mtype = raw.get("type", "chroot")
    if not isinstance(mtype, str) or mtype not in MOUNT_TYPES:
        known = ", ".join(sorted(MOUNT_TYPES))
        raise ManifestError(f"unknown mount type {mtype!r} (known: {known})", where=f"{where}.type")
    if index == 0:
        path = "/"
    else:
        raw_path = raw.get("path")
        if not isinstance(raw_path, str) or raw_path == "":
            raise ManifestError("required key 'path' missing or not a string", where=where)
        if "\0" in raw_path:
            raise ManifestError("path contains a NUL byte", where=f"{where}.path")
        path = normalize_view_path(raw_path)
    uri = raw.get("uri", "file:." if index == 0 else None)
    host: str | None = None
    key_name: str | None = None
    recovery = False
    uri_path: str | None = None
    if mtype == "encrypted":
        if index == 0:
            raise ManifestError("fs.root cannot be an encrypted mount", where=f"{where}.type")
        if not isinstance(uri, str):
            raise ManifestError("an encrypted mount needs a string 'uri'", where=f"{where}.uri")
        host = _host_str(uri, base_dir, f"{where}.uri", schemes=("file",))
        uri_path = uri.partition(":")[2] or "."
        key_name = raw.get("key_name", DEFAULT_KEY_NAME)
        if not isinstance(key_name, str) or key_name in ("", ".", "..") or "/" in key_name \
                or "\0" in key_name:
            raise ManifestError(f"expected a key name (no '/'), got {key_name!r}",
                                where=f"{where}.key_name")
        recovery = raw.get("enable_recovery", False)
        if not isinstance(recovery, bool):
            raise ManifestError(f"expected true or false, got {recovery!r}",
                                where=f"{where}.enable_recovery")
    elif mtype == "chroot":
        if not isinstance(uri, str):
            raise ManifestError("a chroot mount needs a string 'uri'", where=f"{where}.uri")
        host = _host_str(uri, base_dir, f"{where}.uri", schemes=("file",))
    elif mtype == "untrusted_shm" and isinstance(uri, str):
        host = _host_str(uri, base_dir, f"{where}.uri", schemes=("dev", "file"))
    return Mount(path=path, type=mtype, host=host, options=MappingProxyType(dict(raw)),
                 index=index, key_name=key_name, enable_recovery=recovery, uri_path=uri_path)


def _get_table(manifest: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = manifest.get(name, {})
    if not isinstance(value, Mapping):
        raise ManifestError(f"expected a table, got {value!r}", where=name)
    return value


def _under(path: str, prefix: str) -> bool:
    return path == prefix or prefix == "/" or path.startswith(prefix + "/")


def _trusted_table(raw_trusted: list[Any], base_str: str) -> dict[str, str]:
    """``sgx.trusted_files`` as normalized host path -> lowercase sha256."""
    fast = _trusted_table_fast(raw_trusted, base_str)
    return fast if fast is not None else _trusted_table_checked(raw_trusted, base_str)


def _trusted_table_checked(raw_trusted: list[Any], base_str: str) -> dict[str, str]:
    """:func:`_trusted_table` entry by entry, raising ManifestError for the first bad one."""
    import re  # (here, not at the top: a start whose manifest is remembered never loads re)
    trusted: dict[str, str] = {}
    for i, entry in enumerate(raw_trusted):
        where = f"sgx.trusted_files[{i}]"
        if isinstance(entry, str):
            raise ManifestError(
                f"{entry!r} has no sha256: render the manifest with gramine-manifest "
                "(or geode manifest) so that trusted files are expanded and hashed",
                where=where,
            )
        if not isinstance(entry, Mapping):
            raise ManifestError(f"expected a {{uri, sha256}} table, got {entry!r}",
                                where=where)
        uri, sha = entry.get("uri"), entry.get("sha256")
        if not isinstance(uri, str):
            raise ManifestError("missing string 'uri'", where=where)
        if uri.endswith("/"):
            raise ManifestError(
                f"{uri!r} is a directory entry: render the manifest so that it is expanded",
                where=where,
            )
        if not isinstance(sha, str) or not re.fullmatch(_SHA256_PATTERN, sha):
            raise ManifestError(f"sha256 of {uri!r} must be 64 hex digits, got {sha!r}",
                                where=f"{where}.sha256")
        host = _host_str(uri, base_str, f"{where}.uri", schemes=("file",))
        sha = sha.lower()
        if trusted.get(host, sha) != sha:
            raise ManifestError(f"{uri!r} is listed twice with different hashes",
                                where=where)
        trusted[host] = sha
    return trusted


# Over the URIs joined by NULs (geode.manifest.expanded): a "/" followed by "/", "." or the end
# of the URI (an empty component, any dot-led one, a trailing "/"), or a path that is empty or
# starts with a dot. Dot-led names other than "." and ".." are legal, but rare: the loop takes
# them.
_ABNORMAL_PATH = r"/[/.\0]"
_ABNORMAL_START = r"\0file:[.\0]"


def _trusted_table_fast(raw_trusted: list[Any], base_str: str) -> dict[str, str] | None:
    """:func:`_trusted_table` for the shape rendered manifests have, checked all at once.

    Checking ~10,000 trusted files one by one took ~25 ms of every start. The shape: every
    entry a dict whose "sha256" is a str of 64 hex digits and whose "uri" is a str "file:"
    plus a path ``posixpath.normpath`` leaves alone (no NUL, no empty or dot-led component,
    no trailing "/"), absolute or relative to a normal ``base_str``; no host path twice. The
    per-entry loop accepts every such entry and computes the same table; for anything else
    this returns None, and the loop decides (and words the errors).
    """
    import re  # (here, not at the top: a start whose manifest is remembered never loads re)
    cols = expanded.columns(raw_trusted)
    if cols is None:
        return None
    uris, shas = cols
    text = expanded.file_uris_text(uris)
    if text is None or re.search(_ABNORMAL_PATH, text) or re.search(_ABNORMAL_START, text):
        return None
    n = len(uris)
    paths = text[len("\0file:"):-1].split("\0file:")
    if text.count("\0file:/") == n:
        hosts = paths
    elif _is_normal_abs(base_str):
        prefix = base_str if base_str == "/" else base_str + "/"
        hosts = [p if p[0] == "/" else prefix + p for p in paths]
    else:
        return None
    joined_shas = "".join(shas)
    if joined_shas.lower() != joined_shas:
        shas = [s.lower() for s in shas]
    trusted = dict(zip(hosts, shas, strict=True))
    if len(trusted) != n:
        return None  # a host listed twice: the loop checks that the hashes agree
    return trusted


def host_base(base_dir: str | os.PathLike[str]) -> str:
    """``base_dir`` as the plan resolves relative ``file:`` URIs against it: absolute and
    normalized."""
    return posixpath.normpath(os.path.abspath(os.fspath(base_dir)))


def trusted_table(manifest: Mapping[str, Any], base_dir: str | os.PathLike[str]
                  ) -> dict[str, str]:
    """``sgx.trusted_files`` of ``manifest`` as normalized host path -> lowercase sha256,
    relative URIs taken from ``base_dir``; :class:`ManifestError` for a bad entry."""
    raw_trusted = _get_table(manifest, "sgx").get("trusted_files", [])
    if not isinstance(raw_trusted, list):
        raise ManifestError(f"expected an array, got {raw_trusted!r}",
                            where="sgx.trusted_files")
    return _trusted_table(raw_trusted, host_base(base_dir))


class ViewPlan(Record):
    """Mount table and file policy of a view; see the module docstring."""

    mounts: tuple[Mount, ...]
    #: normalized absolute host path (as a string) -> sha256 hex
    trusted_paths: Mapping[str, str]
    #: normalized absolute host paths (as strings): each allows itself and what is below it
    allowed: tuple[str, ...]
    file_check_policy: str = "strict"
    start_dir: str = "/"

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], *,
                      base_dir: str | os.PathLike[str],
                      trusted: Mapping[str, str] | None = None) -> ViewPlan:
        """Build the plan; raise :class:`ManifestError` naming the key for bad input.

        ``trusted``, if given, is ``trusted_table(manifest, base_dir)`` computed before (a
        start takes it from :mod:`geode.runtime.manifest_memo`).
        """
        base = host_base(base_dir)
        fs = _get_table(manifest, "fs")

        root_raw = fs.get("root", {"type": "chroot", "uri": "file:."})
        mounts = [_parse_mount(root_raw, 0, base)]
        raw_mounts = fs.get("mounts", [])
        if not isinstance(raw_mounts, list):
            raise ManifestError(f"expected an array, got {raw_mounts!r}", where="fs.mounts")
        for i, raw in enumerate(raw_mounts):
            mounts.append(_parse_mount(raw, i + 1, base))

        if trusted is None:
            trusted = trusted_table(manifest, base_dir)
        sgx = _get_table(manifest, "sgx")

        allowed: list[str] = []
        raw_allowed = sgx.get("allowed_files", [])
        if not isinstance(raw_allowed, list):
            raise ManifestError(f"expected an array, got {raw_allowed!r}",
                                where="sgx.allowed_files")
        for i, uri in enumerate(raw_allowed):
            where = f"sgx.allowed_files[{i}]"
            if not isinstance(uri, str):
                raise ManifestError(f"expected a URI string, got {uri!r}", where=where)
            path = _host_str(uri, base, where, schemes=("file", "dev"))
            if path not in allowed:
                allowed.append(path)

        policy = sgx.get("file_check_policy", "strict")
        if policy not in FILE_CHECK_POLICIES:
            raise ManifestError(
                f"expected one of {', '.join(FILE_CHECK_POLICIES)}, got {policy!r}",
                where="sgx.file_check_policy",
            )
        start_dir = fs.get("start_dir", "/")
        if not isinstance(start_dir, str) or "\0" in start_dir:
            raise ManifestError(f"expected a path string, got {start_dir!r}",
                                where="fs.start_dir")
        return cls(
            mounts=tuple(mounts),
            trusted_paths=MappingProxyType(trusted),
            allowed=tuple(allowed),
            file_check_policy=policy,
            start_dir=normalize_view_path(start_dir),
        )

    # ------------------------------------------------------------------ queries

    @property
    def visible_mounts(self) -> tuple[Mount, ...]:
        """Mounts not hidden by a later mount at the same path or at an ancestor of it."""
        visible = []
        for i, m in enumerate(self.mounts):
            if not any(_under(m.path, later.path) for later in self.mounts[i + 1:]):
                visible.append(m)
        return tuple(visible)

    def resolve(self, view_path: str) -> tuple[Mount, str]:
        """The innermost visible mount covering ``view_path``, and the path relative to it.

        The relative path has no leading slash; it is ``""`` for the mount point itself.
        """
        path = normalize_view_path(view_path)
        # The last mount covering a path is the innermost visible one: a mount that hid it
        # would be later and cover the path too, and a deeper one that covers the path is
        # either hidden by it (if earlier) or later than it. (Runs for every prefetched
        # library and root lookup: no visible_mounts, which is quadratic in the mounts.)
        for m in reversed(self.mounts):
            if _under(path, m.path):
                return m, path[len(m.path):].lstrip("/")
        raise ManifestError(f"no mount covers {path}")  # fs.root is at "/": unreachable

    def host_path(self, view_path: str) -> str | None:
        """Host path behind ``view_path`` if a chroot mount serves it, else None."""
        mount, rel = self.resolve(view_path)
        if mount.type != "chroot" or mount.host is None:
            return None
        return posixpath.join(mount.host, rel) if rel else mount.host

    def is_trusted(self, host_path: str | os.PathLike[str]) -> bool:
        return posixpath.normpath(os.fspath(host_path)) in self.trusted_paths

    def is_allowed(self, host_path: str | os.PathLike[str]) -> bool:
        """Gramine's rule: an allowed entry allows itself and everything below it."""
        p = posixpath.normpath(os.fspath(host_path))
        return any(_under(p, a) for a in self.allowed)
