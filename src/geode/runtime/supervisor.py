"""``run()``: start a program inside the manifest's shield and supervise it to the end.

The supervisor is the ``geode`` process itself. It

1. derives everything from the manifest before anything starts (argv, environment, limits,
   the view plan), so a bad manifest fails with a :class:`~geode.errors.GeodeError` naming the
   key and nothing is left behind;
2. checks that the machine can build a sandbox (user namespaces, FUSE) and says in one line
   what is missing;
3. starts the sandbox (:class:`geode.runtime.sandbox.Sandbox`: write the user-namespace id
   maps, receive PID 1's pidfd, send the configuration, receive the FUSE descriptor). A
   command starting one program forks the sandbox's helpers ahead, single-threaded, before
   it loads the manifest (:meth:`~geode.runtime.sandbox.Sandbox.ahead`): they create the
   namespaces and PID 1 while the manifest is read and verified, and PID 1 waits for the
   configuration; nothing else runs in the sandbox before it;
4. serves the FUSE view on worker threads (:mod:`geode.runtime.fuse` on the ``/dev/fuse``
   descriptor PID 1 mounted inside the sandbox, see :mod:`geode.runtime.sandbox`; the view's
   readahead is raised once its device number is known) while the main thread polls the
   control socket, PID 1's pidfd and a signal wakeup pipe;
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
import functools
import os
import select
import threading
from collections.abc import Callable, Collection, Mapping, Sequence

import geode.log
from geode.errors import GeodeError, ManifestError
from geode.runtime.process import ProcessSpec, process_spec
from geode.runtime.sandbox import (
    PROMOTE_MAX,
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

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import Any
else:
    import _signal  # (not ``signal``: see geode.runtime.sandbox)

__all__ = ["configure_logging", "fuse_root", "kernel_mounts", "run", "supervise"]

log = geode.log.get_logger("geode")

#: loader.log_level -> logging level. "trace" and "all" are below DEBUG.
LOG_LEVELS = {
    "none": geode.log.CRITICAL + 10,
    "error": geode.log.ERROR,
    "warning": geode.log.WARNING,
    "debug": geode.log.DEBUG,
    "trace": 5,
    "all": 1,
}

_TEARDOWN_SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT)

if TYPE_CHECKING:
    Serve = Callable[[Any, int, str], None]


def configure_logging(manifest: Mapping[str, Any]) -> None:
    """Configure the ``geode`` logger from ``loader.log_level`` / ``loader.log_file``.

    The log file is created (or opened for appending) now, so that a bad path stops the
    start-up; the handler itself is installed when the first record loads ``logging``
    (see :mod:`geode.log`)."""
    loader = manifest.get("loader", {}) if isinstance(manifest, Mapping) else {}
    level_name = loader.get("log_level", "error") if isinstance(loader, Mapping) else "error"
    if level_name not in LOG_LEVELS:
        raise ManifestError(f"expected one of {', '.join(LOG_LEVELS)}, got {level_name!r}",
                            where="loader.log_level")
    log_file = loader.get("log_file") if isinstance(loader, Mapping) else None
    if log_file is not None and not isinstance(log_file, str):
        raise ManifestError(f"expected a path string, got {log_file!r}", where="loader.log_file")
    path = None
    if log_file and level_name != "none":
        path = os.path.abspath(log_file)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o666))
        except OSError as e:
            raise ManifestError(f"cannot open {log_file}: {e.strerror}",
                                where="loader.log_file") from None
    level = LOG_LEVELS[level_name]
    geode.log.configure(level, functools.partial(_install_handler, level, path))


#: the name of the handler a run installs (replaced by the next run's)
_HANDLER_NAME = "geode-runtime"


def _install_handler(level: int, log_file: str | None) -> None:
    """Give the ``geode`` logger its run's handler, replacing an earlier run's."""
    import logging

    logger = logging.getLogger("geode")
    for h in list(logger.handlers):
        if h.get_name() == _HANDLER_NAME:
            logger.removeHandler(h)
            h.close()
    handler: logging.Handler
    if log_file is not None:
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8", delay=True)
    else:
        handler = logging.StreamHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("geode: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _under(path: str, prefix: str) -> bool:
    return path == prefix or prefix == "/" or path.startswith(prefix.rstrip("/") + "/")


def kernel_mounts(plan: Any, own_connections: Collection[str] = ()) -> tuple[KernelMount, ...]:
    """The kernel mounts to stack on the FUSE view, in manifest order: every visible ``tmpfs``
    mount, a further connection of the view for each mount path in ``own_connections``, and
    a re-exposure of every other view-served mount that lies inside an earlier tmpfs."""
    out: list[KernelMount] = []
    tmpfs: list[str] = []
    for m in plan.visible_mounts:
        if m.type == "tmpfs":
            out.append(KernelMount("tmpfs", m.path, m.where))
            tmpfs.append(m.path)
        elif m.path in own_connections:
            out.append(KernelMount("fuse", m.path, m.where))
        elif m.index > 0 and any(_under(m.path, t) for t in tmpfs):
            out.append(KernelMount("view", m.path, m.where))
    if tmpfs and any(_under("/dev/attestation", t) for t in tmpfs):
        out.append(KernelMount("view", "/dev/attestation", "/dev/attestation"))
    return tuple(out)


def sandbox_config(spec: ProcessSpec, *, root: FuseRoot,
                   mounts: tuple[KernelMount, ...] = (),
                   promote: bool = False) -> SandboxConfig:
    """Sandbox configuration for ``spec`` (id maps, clamped limits); logs limit clamps."""
    ids: IdMapping = id_mapping(spec.uid, spec.gid)
    limits, warnings = effective_limits(spec, ids)
    for w in warnings:
        log.warning("%s", w)
    return SandboxConfig(spec=spec, ids=ids, root=root, mounts=mounts, rlimits=tuple(limits),
                         promote=promote)


# --------------------------------------------------------------------------------------------
# The supervision loop
# --------------------------------------------------------------------------------------------


def supervise(cfg: SandboxConfig, *, fs: Any, serve: Serve,
              on_mounted: Callable[[int], object] | None = None,
              sandbox: Sandbox | None = None,
              promote: Callable[[], tuple[list[str], list[int]]] | None = None) -> int:
    """Start the sandbox described by ``cfg`` and supervise it until it exits.

    ``serve(fs, fd, path)`` serves the view's connection mounted at ``path`` (``/``, and the
    ``"fuse"`` kernel mounts of ``cfg``) on the ``/dev/fuse`` descriptor PID 1 mounted it with
    (on a thread of its own; it returns when the connection ends) and ``on_mounted(st_dev)``
    is called once each connection's device number is known.
    ``sandbox``, if given, is a :class:`Sandbox` forked ahead (:meth:`Sandbox.ahead`) for
    ``cfg``; it is used up either way. ``promote`` gives the verified copies of
    ``cfg.promote``'s files (see :meth:`Sandbox.start`).
    Returns the program's exit status; raises :class:`GeodeError` if the sandbox could not be
    built or the program could not be executed.
    """
    spec = cfg.spec
    log.debug("sandbox: %s argv=%r uid=%d gid=%d start_dir=%s mounts=%s", spec.path,
              list(spec.argv), spec.uid, spec.gid, spec.start_dir,
              [(m.kind, m.path) for m in cfg.mounts])

    # Host signals are queued by the handler and acted on by the loop below (woken through
    # the wakeup pipe), never in the middle of the loop's own work.
    pending: list[int] = []
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_handlers = {s: _signal.signal(s, lambda signum, frame: pending.append(signum))
                    for s in _TEARDOWN_SIGNALS}
    old_wakeup = _signal.set_wakeup_fd(wake_w)
    if sandbox is None:
        sandbox = Sandbox()
    servers: dict[str, threading.Thread] = {}
    failure: list[BaseException] = []
    try:
        sandbox.start(cfg, promote)  # on any failure it has killed and reaped its helpers
        if pending:
            sandbox.kill()
            sandbox.wait()
            return 128 + pending[0]
        assert sandbox.ctl is not None and sandbox.pidfd is not None

        assert sandbox.init_pid is not None
        if getattr(getattr(fs, "attestation", None), "per_process", False):
            # the attestation files' per-process state: FUSE requests carry pids of the
            # sandbox's pid namespace
            from geode.runtime.attestation import bind_sandbox

            bind_sandbox(sandbox.init_pid)

        def start_server(path: str, fd: int) -> None:
            def serve_view() -> None:
                try:
                    serve(fs, fd, path)
                except BaseException as e:  # re-raised by the supervisor below
                    failure.append(e)
                    sandbox.kill()

            servers[path] = threading.Thread(target=serve_view, name=f"geode-view{path}",
                                             daemon=True)
            servers[path].start()

        assert sandbox.fuse_fd is not None
        start_server("/", sandbox.fuse_fd)
        status = _supervision_loop(sandbox, spec, pending, wake_r, on_mounted, start_server)
    except BaseException:
        sandbox.kill()
        sandbox.wait()
        raise
    finally:
        _signal.set_wakeup_fd(old_wakeup)
        for s, h in old_handlers.items():
            _signal.signal(s, h)
        os.close(wake_r)
        os.close(wake_w)
        sandbox.read_messages()
        devs = {"/": sandbox.fuse_dev, **sandbox.connection_devs}
        for path, server in servers.items():
            _stop_server(server, devs.get(path))
        sandbox.close()
    if failure:
        raise failure[0]
    if sandbox.errors:
        raise SandboxError(sandbox.errors[0])
    return status


def _supervision_loop(sandbox: Sandbox, spec: ProcessSpec, pending: list[int], wake: int,
                      on_mounted: Callable[[int], object] | None,
                      start_server: Callable[[str, int], None]) -> int:
    """Wait for PID 1 to exit, reading the control socket, serving the view's further
    connections as they arrive and acting on host signals.
    Returns the exit status (128+N when the supervisor was stopped by signal N)."""
    assert sandbox.ctl is not None and sandbox.pidfd is not None
    ctl = sandbox.ctl.fileno()
    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    poller.register(sandbox.pidfd, select.POLLIN)
    poller.register(wake, select.POLLIN)
    injected, stopped_by = False, 0
    tuned: set[int] = set()
    served = 0
    while True:
        while served < len(sandbox.connections):
            start_server(*sandbox.connections[served])
            served += 1
        # PID 1 reports each connection's device number once it is mounted
        for dev in (sandbox.fuse_dev, *sandbox.connection_devs.values()):
            if dev is not None and dev not in tuned and on_mounted is not None:
                tuned.add(dev)
                on_mounted(dev)
        ready = {fd for fd, _ in poller.poll()}
        if wake in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake, 64):
                    pass
        while pending:
            signum = pending.pop(0)
            if signum == _signal.SIGTERM and spec.sigterm_injection and not injected:
                injected = True
                log.warning("injecting host SIGTERM into the program (once)")
                sandbox.signal_program(_signal.SIGTERM)
                continue
            import signal

            log.warning("received %s: stopping the sandbox", signal.Signals(signum).name)
            stopped_by = stopped_by or signum
            sandbox.kill()
        if ctl in ready and not sandbox.eof:
            sandbox.read_messages()
            if sandbox.errors:
                sandbox.kill()
            if sandbox.eof:
                poller.unregister(ctl)
            continue  # tune before blocking again
        if sandbox.pidfd in ready:
            status = sandbox.wait()
            return 128 + stopped_by if stopped_by else status


def _stop_server(server: threading.Thread, dev: int | None) -> None:
    """Wait for the view's server to finish (it writes back encrypted files at the end).
    The connection ends when the sandbox's mount namespace is gone; if a straggler keeps it
    alive, abort it."""
    from geode.runtime import fuse

    server.join(5.0)
    if server.is_alive() and dev is not None:
        log.debug("aborting the view's FUSE connection")
        fuse.abort(dev)
        server.join(5.0)
    if server.is_alive():
        log.error("the view's file server did not stop")


# --------------------------------------------------------------------------------------------
# run()
# --------------------------------------------------------------------------------------------


def fuse_root(options: Sequence[str]) -> FuseRoot:
    """The kernel mount PID 1 performs for libfuse-style mount ``options`` (the view's
    ``MOUNT_OPTIONS``), see :func:`geode.runtime.fuse.mount_args`."""
    from geode.runtime.fuse import mount_args

    source, fstype, flags, data = mount_args(options)
    return FuseRoot(options=data, source=source, fstype=fstype, flags=flags)


def _view_for(plan: Any, manifest: Mapping[str, Any],
              owner: tuple[int, int], tee: Any) -> tuple[Any, FuseRoot]:
    """The FUSE file system serving ``plan`` and how to mount it."""
    from geode.runtime import viewfs

    fs = viewfs.ViewFS(plan, manifest, owner=owner, tee=tee)
    return fs, fuse_root(viewfs.MOUNT_OPTIONS)


def run(manifest: dict[str, Any], *, manifest_path: str | os.PathLike[str],
        host_args: list[str], tee: str = "none", identity: Any = None,
        stats_file: str | os.PathLike[str] | None = None,
        trusted: Mapping[str, str] | None = None, sandbox: Sandbox | None = None) -> int:
    """Run ``libos.entrypoint`` of the (already verified) rendered ``manifest`` in the shield.

    ``manifest_path`` locates the manifest; relative ``file:`` URIs resolve against its
    directory. ``host_args`` are the command-line arguments after the application name (used
    only under ``loader.insecure__use_cmdline_argv``). Returns the program's exit status
    (128+N when it died of signal N, or when the supervisor was stopped by signal N).
    ``identity`` (a :class:`geode.tee.EnclaveIdentity`; default: the measurement of the
    manifest's TOML serialization, unsigned) is what the ``tee`` backend binds evidence and keys to.
    ``stats_file`` receives the view's FUSE request counts as JSON when the program ends.
    ``trusted``, if given, is the plan's table of trusted files for this manifest, computed
    before (:func:`geode.runtime.plan.trusted_table`); ``manifest`` may then lack
    ``sgx.trusted_files`` (a start's :func:`geode.cli.run.load_for_run` takes it out).
    ``sandbox``, if given, was forked ahead (:meth:`geode.runtime.sandbox.Sandbox.ahead`);
    the caller discards it if this raises before using it.
    """
    configure_logging(manifest)
    base_dir = os.path.dirname(os.path.abspath(manifest_path))
    from geode.runtime.plan import ViewPlan

    plan = ViewPlan.from_manifest(manifest, base_dir=base_dir, trusted=trusted)
    spec = process_spec(manifest, host_args, base_dir=base_dir, trusted=plan.trusted_paths)
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
    library_path = spec.env.get("LD_LIBRARY_PATH", "").split(":")
    # Every exec of a dynamically linked program opens its ELF interpreter and the C
    # library: PID 1 serves the entry point's from the sandbox's memory (sandbox._promote),
    # found and verified on a thread while it builds the root, and the program's opens of
    # them make no FUSE request.
    cfg = sandbox_config(spec, root=root, mounts=kernel_mounts(
        plan, [m.path for m in fs.own_connections]), promote=True)
    log.debug("tee backend: %s", tee)
    from geode.runtime import viewfs

    promoted: set[str] = set()  # (what the prefetch need not hash, once known)

    def promote() -> tuple[list[str], list[int]]:
        paths = fs.runtime_libraries(spec.path, library_path)[:PROMOTE_MAX]
        promoted.update(paths)
        return fs.verified_copies(paths)

    # The first opens (execve's) find the entry point and what else it needs hashed while
    # the sandbox was built.
    fs.prefetch(spec.path, library_path, exclude=promoted)
    try:
        return supervise(cfg, fs=fs, serve=viewfs.serve_fd, on_mounted=viewfs.tune_readahead,
                         sandbox=sandbox, promote=promote)
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES, errno.ENOSPC):
            raise GeodeError(f"cannot start the sandbox: {e}") from None
        raise
    finally:
        if stats_file is not None:
            _write_stats(fs, stats_file)
        with contextlib.suppress(Exception):
            geode.log.flush("geode")


def _write_stats(fs: Any, path: str | os.PathLike[str]) -> None:
    import json

    try:
        with open(path, "w") as f:
            f.write(json.dumps(fs.report(), sort_keys=True) + "\n")
    except OSError as e:
        log.error("cannot write %s: %s", path, e.strerror)
