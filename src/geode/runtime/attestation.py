"""``/dev/attestation``: Gramine's attestation pseudo-files, served by the view per process.

:func:`add_files` registers, in the view's :class:`~geode.runtime.viewfs.AttestationDir`, the
files the TEE backend supports (``attestation_type`` and ``keys/`` are always there)::

    file               mode  size   backends    content
    user_report_data   rw    64     all but none  report data of the next report or quote
    target_info        rw    512    sim         TARGETINFO of the next report
    my_target_info     r     512    sim         this program's TARGETINFO
    report             r     432    sim         SGX REPORT (body, KEYID, MAC) for target_info
    quote              r     varies sim/tdx/snp evidence binding user_report_data
    certs              r     varies snp         PEM certificates that came with the last quote

As in Gramine, a write to ``user_report_data`` or ``target_info`` replaces the whole value:
shorter data is zero-padded, longer data truncated (the value is what this open has written
so far, starting empty; truncating to 0 zeroes it). Unlike Gramine, reading them returns the
current value. ``my_target_info``, ``report`` and ``quote`` are produced when opened, from
the values at that moment; reads serve that snapshot. ``report`` and ``target_info`` are SGX
local attestation and exist only on ``sim`` (on TDX and SEV-SNP, configfs-tsm gives no
local report; the evidence is in ``quote``). The ``none`` backend has ``attestation_type``
and ``keys/`` only, as gramine-direct.

**State per process.** Gramine keeps these values in each process's LibOS, so a child starts
with zeroes and threads share them; so does Geode. A FUSE request carries the *thread* id of
the caller, numbered in the pid namespace of whoever mounted the view (the sandbox's, when
``geode run`` mounts it). :class:`Callers` maps it to the thread group (process) and keys
the state by the process's host pid *and its start time*, so a recycled pid never inherits a
dead process's values. Inside a sandbox, the host task is found by scanning the host's
``/proc`` for the sandbox's tasks (see :class:`Callers`) and matching the last ``NSpid``
entry to the request's pid (once per thread; later requests cost one read of
``/proc/PID/stat`` to confirm the cached task is still the same). State of exited processes
is dropped when a new process appears. ``execve`` keeps the process and so its state (as
Gramine's in-place execve does).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from geode.errors import GeodeError
from geode.log import get_logger
from geode.runtime import fuse
from geode.runtime.viewfs import PseudoFile, PseudoHandle
from geode.tee.sgx import REPORT_DATA_SIZE, REPORT_SIZE, TARGET_INFO_SIZE, fit

if TYPE_CHECKING:
    from geode.runtime.viewfs import AttestationDir
    from geode.tee import TeeBackend

log = get_logger("geode.fs")

# --------------------------------------------------------------------------------------------
# who is calling
# --------------------------------------------------------------------------------------------


def _start_time(host_pid: int | str) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (start time in clock ticks since boot), or None."""
    try:
        with open(f"/proc/{host_pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _status_ids(path: str) -> dict[bytes, list[int]]:
    """``Tgid``, ``PPid`` and ``NSpid`` of a ``/proc/.../status`` file (readable by anyone)."""
    out: dict[bytes, list[int]] = {}
    try:
        with open(path, "rb") as f:
            for line in f:
                name, _, value = line.partition(b":")
                if name in (b"Tgid", b"PPid", b"NSpid"):
                    out[name] = [int(v) for v in value.split()]
    except (OSError, ValueError):
        return {}
    return out


#: a calling process: (host pid of the thread group leader, its start time)
ProcessKey = tuple[int, int]


class _Task(NamedTuple):
    host_tid: int
    start: int  # the thread's own start time: confirms host_tid still names it
    key: ProcessKey


class Callers:
    """Maps the pid of a FUSE request to the calling process (see the module doc).

    The sandbox's processes are recognised from ``/proc/PID/status`` alone (world-readable,
    so this works for an unprivileged supervisor, which may not inspect PID 1's namespace
    links): their ``NSpid`` has as many levels as PID 1's, and their parent chain reaches
    PID 1 (orphans are re-parented to it).
    """

    def __init__(self) -> None:
        #: host pid of the sandbox's PID 1; None: request pids are host pids
        self.init_pid: int | None = None
        self._depth = 0
        self._tasks: dict[int, _Task] = {}

    def bind_sandbox(self, init_pid: int) -> None:
        """Request pids are now numbered in the pid namespace of host process ``init_pid``."""
        nspid = _status_ids(f"/proc/{init_pid}/status").get(b"NSpid")
        if not nspid or nspid[-1] != 1:
            raise OSError(errno.ESRCH, f"process {init_pid} is not the init of a pid namespace")
        self.init_pid = init_pid
        self._depth = len(nspid)
        self._tasks.clear()

    def process(self, pid: int) -> ProcessKey | None:
        """The process of thread ``pid`` (as numbered in requests), or None if it is gone."""
        if pid <= 0:
            return None
        if self.init_pid is None:
            tgid = _status_ids(f"/proc/{pid}/status").get(b"Tgid", [0])[0]
            start = _start_time(tgid) if tgid else None
            return (tgid, start) if start is not None else None
        task = self._tasks.get(pid)
        if task is not None and _start_time(task.host_tid) == task.start:
            return task.key
        self._scan()
        task = self._tasks.get(pid)
        return task.key if task is not None else None

    def _scan(self) -> None:
        """Refresh the thread table from the host's /proc (the sandbox's tasks)."""
        parents: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                ids = _status_ids(f"/proc/{name}/status")
                if len(ids.get(b"NSpid", ())) == self._depth and b"PPid" in ids:
                    parents[int(name)] = ids[b"PPid"][0]
        inside: dict[int, bool] = {}

        def member(pid: int) -> bool:
            chain = []
            while pid not in inside:
                if pid == self.init_pid:
                    inside[pid] = True
                    break
                if pid not in parents:
                    inside[pid] = False
                    break
                chain.append(pid)
                pid = parents[pid]
            for p in chain:
                inside[p] = inside[pid]
            return inside[pid]

        tasks: dict[int, _Task] = {}
        for pid in parents:
            if not member(pid):
                continue
            leader_start = _start_time(pid)
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            if leader_start is None:
                continue
            for tid in tids:
                nspid = _status_ids(f"/proc/{pid}/task/{tid}/status").get(b"NSpid")
                start = _start_time(f"{pid}/task/{tid}")
                if nspid and start is not None:
                    tasks[nspid[-1]] = _Task(int(tid), start, (pid, leader_start))
        self._tasks = tasks

    def alive(self, key: ProcessKey) -> bool:
        return _start_time(key[0]) == key[1]


#: the callers of this process's view (one view is served per process)
CALLERS = Callers()


def bind_sandbox(init_pid: int) -> None:
    """Called by the supervisor once the sandbox's PID 1 exists: see :class:`Callers`."""
    try:
        CALLERS.bind_sandbox(init_pid)
    except OSError as e:
        raise GeodeError(f"cannot read the sandbox's pid namespace: {e.strerror}") from None


# --------------------------------------------------------------------------------------------
# per-process state
# --------------------------------------------------------------------------------------------


class ProcessState:
    __slots__ = ("user_report_data", "target_info", "certs")

    def __init__(self) -> None:
        self.user_report_data = bytes(REPORT_DATA_SIZE)
        self.target_info = bytes(TARGET_INFO_SIZE)
        #: certificates delivered with the last quote
        self.certs = b""


class ProcessTable:
    """:class:`ProcessState` per calling process."""

    def __init__(self, callers: Callers = CALLERS) -> None:
        self.callers = callers
        self._states: dict[ProcessKey, ProcessState] = {}
        self._unknown = ProcessState()

    def __len__(self) -> int:
        return len(self._states)

    def get(self, pid: int) -> ProcessState:
        key = self.callers.process(pid)
        if key is None:
            log.warning("/dev/attestation: cannot identify the process of pid %d; using a "
                        "shared state", pid)
            return self._unknown
        state = self._states.get(key)
        if state is None:
            for old in [k for k in self._states if not self.callers.alive(k)]:
                del self._states[old]
            state = self._states[key] = ProcessState()
        return state


# --------------------------------------------------------------------------------------------
# the files
# --------------------------------------------------------------------------------------------


class _ValueHandle(PseudoHandle):
    """An open of user_report_data / target_info: every write replaces the whole value."""

    def __init__(self, state: ProcessState, attr: str, size: int) -> None:
        self.state = state
        self.attr = attr
        self.size = size
        self.written = bytearray()

    def _commit(self) -> None:
        setattr(self.state, self.attr, fit(bytes(self.written), self.size))

    def read(self, offset: int, size: int) -> bytes:
        value: bytes = getattr(self.state, self.attr)
        return value[offset:offset + size]

    def write(self, offset: int, data: bytes) -> int:
        if offset < self.size:
            end = offset + len(data)
            if len(self.written) < offset:
                self.written.extend(bytes(offset - len(self.written)))
            self.written[offset:end] = data
            self._commit()
        return len(data)

    def truncate(self, size: int) -> None:
        del self.written[size:]
        self._commit()


class ValueFile(PseudoFile):
    """``user_report_data`` (64 B) or ``target_info`` (512 B), read-write, per process."""

    mode = 0o666

    def __init__(self, table: ProcessTable, attr: str, size: int) -> None:
        self.table = table
        self.attr = attr
        self._size = size

    def size(self) -> int:
        return self._size

    def open(self, pid: int, flags: int) -> PseudoHandle:
        return _ValueHandle(self.table.get(pid), self.attr, self._size)


class _SnapshotHandle(PseudoHandle):
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]


class GeneratedFile(PseudoFile):
    """Read-only content produced at open from the caller's state (report, quote, ...)."""

    mode = 0o444

    def __init__(self, table: ProcessTable, name: str,
                 produce: Callable[[ProcessState], bytes], size: int = 0) -> None:
        self.table = table
        self.name = name
        self.produce = produce
        self._size = size

    def size(self) -> int:
        return self._size

    def open(self, pid: int, flags: int) -> PseudoHandle:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise fuse.FUSEError(errno.EACCES)
        state = self.table.get(pid)
        try:
            data = self.produce(state)
        except GeodeError as e:
            log.error("/dev/attestation/%s: %s", self.name, e)
            raise fuse.FUSEError(errno.EACCES) from None
        return _SnapshotHandle(data)


def add_files(attestation: AttestationDir, tee: TeeBackend,
              table: ProcessTable | None = None) -> ProcessTable:
    """Register the pseudo-files ``tee`` supports in ``attestation``; returns their state."""
    table = table if table is not None else ProcessTable()
    files = attestation.files
    attestation.per_process = True
    if tee.local_attestation or tee.has_quote:
        files["user_report_data"] = ValueFile(table, "user_report_data", REPORT_DATA_SIZE)
    if tee.local_attestation:
        files["target_info"] = ValueFile(table, "target_info", TARGET_INFO_SIZE)
        files["my_target_info"] = GeneratedFile(
            table, "my_target_info", lambda s: tee.my_target_info(), TARGET_INFO_SIZE)
        files["report"] = GeneratedFile(
            table, "report", lambda s: tee.report(s.user_report_data, s.target_info),
            REPORT_SIZE)
    if tee.has_quote:
        def quote(state: ProcessState) -> bytes:
            evidence = tee.evidence(state.user_report_data)
            state.certs = evidence.certs
            return evidence.quote

        files["quote"] = GeneratedFile(table, "quote", quote)
    if tee.evidence_certs:
        files["certs"] = GeneratedFile(table, "certs", lambda s: s.certs)
    return table
