"""``run()``: start a program inside the manifest's shield and supervise it to the end.

The supervisor is the ``geode`` process itself. It

1. derives everything from the manifest before anything starts (argv, environment, limits,
   the view plan), so a bad manifest fails with a :class:`~geode.errors.GeodeError` naming the
   key and nothing is left behind;
2. checks that the machine can build a sandbox (user namespaces, FUSE) and says in one line
   what is missing;
3. starts the sandbox (:class:`geode.runtime.sandbox.Sandbox`: fork while single-threaded,
   write the user-namespace id maps, receive PID 1's pidfd and the FUSE descriptor);
4. runs trio: serves the FUSE view (pyfuse3 on the ``/dev/fuse`` descriptor PID 1 mounted
   inside the sandbox, see :mod:`geode.runtime.sandbox`; the view's readahead is raised once
   its device number is known), watches the control socket and PID 1, handles host signals;
5. returns the program's exit status (128+N if it died of signal N).

Files in the view appear owned by the program's own ``loader.uid``/``loader.gid``, as in
Gramine (whose inodes take the current emulated ids); access is decided by the manifest's
file policy, not by owners and modes.

Host signals (the program never receives a host signal through Geode except one SIGTERM):

* ``SIGTERM`` with ``sys.enable_sigterm_injection = true``: the *first* one is delivered to the
  program (Gramine's one-time injection); any later one tears the sandbox down.
* ``SIGTERM`` without injection, ``SIGINT`` (Ctrl-C), ``SIGHUP``, ``SIGQUIT``: tear down: every
  process of the sandbox gets SIGKILL and ``run`` returns 128+N. (Gramine ignores a SIGTERM it
  does not inject; Geode stops instead, so that service managers and ``timeout`` work. The
  program sees the same thing in both: no signal.) A program sharing the terminal also receives
  the terminal's own Ctrl-C directly from the kernel, as any foreground process does.
* ``SIGKILL`` of the supervisor: the kernel kills the helpers (parent-death signals) and with
  PID 1 the whole pid namespace; the FUSE connection dies with the supervisor's descriptor and
  the mount with the sandbox's mount namespace. Nothing is left.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from geode.errors import GeodeError, ManifestError
from geode.runtime.process import ProcessSpec, process_spec
from geode.runtime.sandbox import (
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    FuseRoot,
    IdMapping,
    KernelMount,
    Sandbox,
    SandboxConfig,
    SandboxError,
    effective_limits,
    id_mapping,
    preflight,
)

__all__ = ["configure_logging", "fuse_root", "kernel_mounts", "run", "serve_fd", "supervise"]

log = logging.getLogger("geode")

#: loader.log_level -> logging level. "trace" and "all" are below DEBUG.
LOG_LEVELS = {
    "none": logging.CRITICAL + 10,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "debug": logging.DEBUG,
    "trace": 5,
    "all": 1,
}

_TEARDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

Serve = Callable[[Any, str], Awaitable[None]]


class _RuntimeHandler(logging.Handler):
    """Marker subclass so that repeated runs replace, not stack, Geode's handler."""


class _StreamHandler(logging.StreamHandler, _RuntimeHandler):  # type: ignore[type-arg]
    pass


class _FileHandler(logging.FileHandler, _RuntimeHandler):
    pass


class _BenignReplyFilter(logging.Filter):
    """pyfuse3 logs an error when the kernel no longer waits for a reply (ENOENT): requests
    still in flight while the sandbox is torn down (typically RELEASE of the program's last
    open files). That is expected; keep it out of the user's terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("fuse_reply_" in text and os.strerror(errno.ENOENT) in text)


_BENIGN = _BenignReplyFilter()


def configure_logging(manifest: Mapping[str, Any]) -> None:
    """Configure the ``geode`` logger from ``loader.log_level`` / ``loader.log_file``."""
    loader = manifest.get("loader", {}) if isinstance(manifest, Mapping) else {}
    level_name = loader.get("log_level", "error") if isinstance(loader, Mapping) else "error"
    if level_name not in LOG_LEVELS:
        raise ManifestError(f"expected one of {', '.join(LOG_LEVELS)}, got {level_name!r}",
                            where="loader.log_level")
    log_file = loader.get("log_file") if isinstance(loader, Mapping) else None
    if log_file is not None and not isinstance(log_file, str):
        raise ManifestError(f"expected a path string, got {log_file!r}", where="loader.log_file")
    for h in list(log.handlers):
        if isinstance(h, _RuntimeHandler):
            log.removeHandler(h)
            h.close()
    handler: logging.Handler
    if log_file and level_name != "none":
        try:
            handler = _FileHandler(log_file, mode="a", encoding="utf-8")
        except OSError as e:
            raise ManifestError(f"cannot open {log_file}: {e.strerror}",
                                where="loader.log_file") from None
    else:
        handler = _StreamHandler()
    handler.setFormatter(logging.Formatter("geode: %(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(LOG_LEVELS[level_name])
    log.propagate = False
    # pyfuse3's own messages go to the same place, at the same level
    fuse_log = logging.getLogger("pyfuse3")
    for h in list(fuse_log.handlers):
        if isinstance(h, _RuntimeHandler):
            fuse_log.removeHandler(h)
    fuse_log.addHandler(handler)
    fuse_log.setLevel(LOG_LEVELS[level_name])
    fuse_log.propagate = False
    if _BENIGN not in fuse_log.filters:
        fuse_log.addFilter(_BENIGN)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or prefix == "/" or path.startswith(prefix.rstrip("/") + "/")


def kernel_mounts(plan: Any) -> tuple[KernelMount, ...]:
    """The kernel mounts to stack on the FUSE view, in manifest order: every visible ``tmpfs``
    mount, and a re-exposure of every view-served mount that lies inside an earlier tmpfs."""
    out: list[KernelMount] = []
    tmpfs: list[str] = []
    for m in plan.visible_mounts:
        if m.type == "tmpfs":
            out.append(KernelMount("tmpfs", m.path, m.where))
            tmpfs.append(m.path)
        elif m.index > 0 and any(_under(m.path, t) for t in tmpfs):
            out.append(KernelMount("view", m.path, m.where))
    if tmpfs and any(_under("/dev/attestation", t) for t in tmpfs):
        out.append(KernelMount("view", "/dev/attestation", "/dev/attestation"))
    return tuple(out)


def sandbox_config(spec: ProcessSpec, *, root: FuseRoot,
                   mounts: tuple[KernelMount, ...] = ()) -> SandboxConfig:
    """Sandbox configuration for ``spec`` (id maps, clamped limits); logs limit clamps."""
    ids: IdMapping = id_mapping(spec.uid, spec.gid)
    limits, warnings = effective_limits(spec, ids)
    for w in warnings:
        log.warning("%s", w)
    return SandboxConfig(spec=spec, ids=ids, root=root, mounts=mounts, rlimits=tuple(limits))


# --------------------------------------------------------------------------------------------
# The supervision loop
# --------------------------------------------------------------------------------------------


def supervise(cfg: SandboxConfig, *, fs: Any, serve: Serve,
              on_mounted: Callable[[int], object] | None = None) -> int:
    """Start the sandbox described by ``cfg`` and supervise it until it exits.

    ``serve(fs, mountpoint)`` serves the view (it is given ``/dev/fd/N``) and
    ``on_mounted(st_dev)`` is called once the view's device number is known.
    Returns the program's exit status; raises :class:`GeodeError` if the sandbox could not be
    built or the program could not be executed.
    """
    import trio  # type: ignore[import-untyped,unused-ignore]  # only needed when running

    spec = cfg.spec
    log.debug("sandbox: %s argv=%r uid=%d gid=%d start_dir=%s mounts=%s", spec.path,
              list(spec.argv), spec.uid, spec.gid, spec.start_dir,
              [(m.kind, m.path) for m in cfg.mounts])

    sandbox = Sandbox(cfg)
    try:
        sandbox.start()  # on any failure it has killed and reaped its helpers
    except KeyboardInterrupt:
        sandbox.close()
        return 128 + signal.SIGINT
    except BaseException:
        sandbox.close()
        raise
    result: dict[str, int] = {}

    async def main() -> None:
        assert sandbox.ctl is not None and sandbox.pidfd is not None
        injected = False

        async def watch_ctl() -> None:
            assert sandbox.ctl is not None
            tuned = False
            while not sandbox.eof:
                await trio.lowlevel.wait_readable(sandbox.ctl)
                sandbox.read_messages()
                if not tuned and sandbox.fuse_dev is not None and on_mounted is not None:
                    tuned = True
                    on_mounted(sandbox.fuse_dev)
                if sandbox.errors:
                    sandbox.kill()
                    return

        async def watch_signals(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            nonlocal injected
            with trio.open_signal_receiver(*_TEARDOWN_SIGNALS) as signals:
                task_status.started()
                async for signum in signals:
                    if signum == signal.SIGTERM and spec.sigterm_injection and not injected:
                        injected = True
                        log.warning("injecting host SIGTERM into the program (once)")
                        sandbox.signal_program(signal.SIGTERM)
                        continue
                    log.warning("received %s: stopping the sandbox",
                                signal.Signals(signum).name)
                    result.setdefault("signal", signum)
                    sandbox.kill()

        async def serve_view() -> None:
            assert sandbox.fuse_fd is not None and sandbox.init_pid is not None
            try:
                if getattr(fs, "attestation", None) is not None:
                    # FUSE requests carry pids of the sandbox's pid namespace
                    from geode.runtime.attestation import bind_sandbox

                    bind_sandbox(sandbox.init_pid)
                await serve(fs, f"/dev/fd/{sandbox.fuse_fd}")
            except BaseException:
                sandbox.kill()
                raise

        async with trio.open_nursery() as nursery:
            await nursery.start(watch_signals)
            nursery.start_soon(watch_ctl)
            nursery.start_soon(serve_view)
            await trio.lowlevel.wait_readable(sandbox.pidfd)
            result["status"] = sandbox.wait()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except KeyboardInterrupt:  # SIGINT before the signal receiver was installed
        sandbox.kill()
        sandbox.wait()
        result["signal"] = signal.SIGINT
    except BaseException:
        sandbox.kill()
        sandbox.wait()
        raise
    finally:
        sandbox.read_messages()
        sandbox.close()
    if sandbox.errors:
        raise SandboxError(sandbox.errors[0])
    if "signal" in result:
        return 128 + result["signal"]
    return result["status"]


# --------------------------------------------------------------------------------------------
# run()
# --------------------------------------------------------------------------------------------


_FLAG_OPTIONS = {"nodev": MS_NODEV, "nosuid": MS_NOSUID, "noexec": MS_NOEXEC, "ro": MS_RDONLY}
_KERNEL_OPTIONS = ("allow_other", "default_permissions", "max_read", "blksize")


def fuse_root(options: Sequence[str]) -> FuseRoot:
    """Translate libfuse mount options (the view's ``MOUNT_OPTIONS``) into the kernel mount
    PID 1 performs: ``fsname`` is the source, ``subtype`` the type suffix, ``nodev``-style
    options become flags; options only libfuse understands are dropped."""
    source, subtype, flags, kernel = "geode", "", 0, []
    for opt in options:
        key, _, value = opt.partition("=")
        if key == "fsname":
            source = value
        elif key == "subtype":
            subtype = value
        elif key in _FLAG_OPTIONS:
            flags |= _FLAG_OPTIONS[key]
        elif key in _KERNEL_OPTIONS:
            kernel.append(opt)
    return FuseRoot(options=",".join(kernel), source=source,
                    fstype=f"fuse.{subtype}" if subtype else "fuse",
                    flags=flags | MS_NOSUID | MS_NODEV)


async def serve_fd(fs: Any, mountpoint: str) -> None:
    """Serve ``fs`` on an already mounted ``/dev/fuse`` descriptor (``mountpoint`` is
    ``/dev/fd/N``): libfuse then neither mounts nor unmounts; the mount belongs to the
    sandbox's mount namespace and disappears with it."""
    import pyfuse3
    import trio  # type: ignore[import-untyped,unused-ignore]

    from geode.runtime import viewfs

    try:
        pyfuse3.init(fs, mountpoint, set(viewfs.MOUNT_OPTIONS))
    except RuntimeError as e:
        raise GeodeError(f"cannot serve the view with FUSE: {e}") from None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
    finally:
        with trio.CancelScope(shield=True):
            pyfuse3.close(unmount=False)
            close = getattr(fs, "close", None)
            if close is not None:
                close()


def _view_for(plan: Any, manifest: Mapping[str, Any],
              owner: tuple[int, int], tee: Any) -> tuple[Any, FuseRoot]:
    """The FUSE file system serving ``plan`` and how to mount it."""
    try:
        from geode.runtime import viewfs
    except ImportError as e:  # pyfuse3/trio missing
        raise GeodeError(f"the runtime needs pyfuse3 and trio ({e}); install geode[runtime]"
                         ) from None
    fs = viewfs.ViewFS(plan, manifest, owner=owner, tee=tee)
    return fs, fuse_root(viewfs.MOUNT_OPTIONS)


def run(manifest: dict[str, Any], *, manifest_path: Path, host_args: list[str],
        tee: str = "none", identity: Any = None, stats_file: Path | None = None) -> int:
    """Run ``libos.entrypoint`` of the (already verified) rendered ``manifest`` in the shield.

    ``manifest_path`` locates the manifest; relative ``file:`` URIs resolve against its
    directory. ``host_args`` are the command-line arguments after the application name (used
    only under ``loader.insecure__use_cmdline_argv``). Returns the program's exit status
    (128+N when it died of signal N, or when the supervisor was stopped by signal N).
    ``identity`` (a :class:`geode.tee.EnclaveIdentity`; default: the measurement of the
    manifest's TOML serialization, unsigned) is what the ``tee`` backend binds evidence and keys to.
    ``stats_file`` receives the view's FUSE request counts as JSON when the program ends.
    """
    configure_logging(manifest)
    base_dir = Path(os.path.abspath(manifest_path)).parent
    from geode.runtime.plan import ViewPlan

    plan = ViewPlan.from_manifest(manifest, base_dir=base_dir)
    spec = process_spec(manifest, host_args, base_dir=base_dir, trusted=plan.trusted)
    preflight(fuse=True)
    # Files appear owned by the program's user, as in Gramine (inode owner = current uid).
    from geode.tee import EnclaveIdentity, open_backend

    if identity is None:  # an unsigned manifest given as a dict: measure its serialization
        from geode.manifest.build import dumps
        from geode.measurement import measure

        identity = EnclaveIdentity(measure(dumps(manifest)), None, manifest)
    backend = open_backend(tee, identity)
    fs, root = _view_for(plan, manifest, (spec.uid, spec.gid), backend)
    # SECRET_PROVISION_CONSTRUCTOR: provisioned before the program starts (keys into the view)
    from geode.runtime.provision import provision_before_start

    spec = provision_before_start(spec, plan, backend, fs.keys)
    cfg = sandbox_config(spec, root=root, mounts=kernel_mounts(plan))
    log.debug("tee backend: %s", tee)
    from geode.runtime import viewfs

    try:
        return supervise(cfg, fs=fs, serve=serve_fd, on_mounted=viewfs.tune_readahead)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES, errno.ENOSPC):
            raise GeodeError(f"cannot start the sandbox: {e}") from None
        raise
    finally:
        if stats_file is not None:
            _write_stats(fs, stats_file)
        with contextlib.suppress(Exception):
            for h in log.handlers:
                h.flush()


def _write_stats(fs: Any, path: Path) -> None:
    import json

    stats: dict[str, float] = dict(fs.stats)
    stats["total"] = sum(fs.stats.values())
    stats["verified_bytes"] = fs.verified_bytes
    stats["busy_ms"] = round(fs.busy_ns / 1e6, 3)
    try:
        path.write_text(json.dumps(stats, sort_keys=True) + "\n")
    except OSError as e:
        log.error("cannot write %s: %s", path, e.strerror)
