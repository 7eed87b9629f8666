"""Worker processes with a hard per-item deadline, usable from any thread and inside Ray tasks and actors.

Why not signals: math-verify's own timeouts use ``signal.alarm``, which works only on the main thread of the main
interpreter and cannot stop C code (a huge integer power, a deep ANTLR recursion). Here every item runs in a worker
process; a worker still busy at the item's deadline is killed with SIGKILL and replaced, and the item gets reason
``timeout``. Workers run with an address-space cap (RLIMIT_AS), so an item that would eat the machine fails with
``error`` instead.

Verifiers that run third-party code on model output (``sandboxed``, e.g. reasoning-gym scorers) get workers with less
power, as far as the platform allows (``sandbox``): no core dumps (RLIMIT_CORE 0), no file writes (RLIMIT_FSIZE 0),
no new privileges through exec (PR_SET_NO_NEW_PRIVS, Linux), and, when the pool runs as root, a chroot into an empty
directory and a switch to the ``nobody`` user, after which no new processes can start (RLIMIT_NPROC 0, which root
would ignore). Not done: seccomp system-call filters, network or namespace isolation; a worker can still use the
file descriptors and sockets it inherited.

Layout: the pool starts one single-threaded *template* process (``python -m verifiers.pool``) that imports the
verifier's heavy modules and warms them once, then forks workers on request and hands each worker's socket back
over a Unix socket (SCM_RIGHTS). A killed worker is replaced in milliseconds by a fork of the warm template,
instead of a fresh interpreter that imports sympy again. The parent itself never forks, which keeps it safe in
multi-threaded processes (Ray workers, thread pools). Linux and other POSIX systems only.
"""

from __future__ import annotations

import collections
import os
import pickle
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

#: Seconds allowed for the template process to import and warm the verifier (not part of any item's deadline).
STARTUP_TIMEOUT_S = 120.0

#: Items in flight per worker: the worker starts the next one without waiting for the parent to be scheduled,
#: which on a loaded machine can take longer than an item does.
PIPELINE_DEPTH = 8
#: Characters (response + reference) that may wait in a busy worker's socket. Kept well under the socket buffer,
#: so that a send to a stuck worker never blocks the parent (which must stay free to enforce deadlines); an item
#: larger than this goes only to an idle worker.
PIPELINE_MAX_CHARS = 32_000

_FORK, _KILL = b"F", b"K"
_READY = b"R"


@dataclass
class _Worker:
    pid: int
    conn: Connection
    template: int  # which template process forked it (a new template cannot kill an older one's workers)
    inflight: collections.deque[int] = field(default_factory=collections.deque)  # sent, not answered; head runs
    started: float = 0.0  # when the head item started


@dataclass
class _PoolState:
    """Everything the finalizer needs, kept apart from the pool so that the finalizer holds no reference to it."""

    template: subprocess.Popen | None = None
    channel: socket.socket | None = None
    generation: int = 0
    workers: list[_Worker] = field(default_factory=list)


def _shutdown(state: _PoolState) -> None:
    for worker in state.workers:
        worker.conn.close()
    state.workers.clear()
    if state.channel is not None:
        state.channel.close()  # the template sees EOF, kills and reaps its workers, and exits
        state.channel = None
    if state.template is not None:
        try:
            state.template.wait(timeout=5)
        except subprocess.TimeoutExpired:
            state.template.kill()
            state.template.wait()
        state.template = None


class WorkerPool:
    """A fixed number of worker processes running ``verifier.check`` with a hard per-item deadline.

    Args:
        verifier: A picklable object with ``_ensure_prepared()`` and ``safe_check(response, reference)``.
        size: Number of worker processes.
        timeout_s: Deadline per item, counted from the moment the item is handed to a warm worker.
        memory_mb: Address-space cap of each worker.
        sandbox: Apply ``sandbox`` in each worker before it takes items (for verifiers that run third-party code).
    """

    def __init__(self, verifier: Any, size: int, timeout_s: float, memory_mb: int, sandbox: bool = False) -> None:
        self._payload = pickle.dumps((verifier, memory_mb, sandbox))
        self.size = size
        self.timeout_s = timeout_s
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()  # one batch at a time; concurrent callers wait their turn
        self._state = _PoolState()
        self._finalizer = weakref.finalize(self, _shutdown, self._state)

    def usable(self) -> bool:
        """False after ``close`` and in a forked child (whose inherited sockets belong to the parent's pool)."""
        return self._owner_pid == os.getpid() and self._finalizer.alive

    def close(self) -> None:
        """Stop the workers and the template process (after a batch in flight, if any)."""
        with self._lock:
            self._finalizer()

    # -- running items ---------------------------------------------------------------------------------------
    def run(self, items: Sequence[tuple[str, str]]) -> list[tuple[Any, str, float]]:
        """Check ``(response, reference)`` items; return ``(verdict, "", ms)`` or ``(None, "timeout"|"error", ms)``.

        Thread-safe: concurrent calls run one after the other.
        """
        with self._lock:
            return self._run(items)

    def _run(self, items: Sequence[tuple[str, str]]) -> list[tuple[Any, str, float]]:
        self._ensure_workers()
        results: list[tuple[Any, str, float] | None] = [None] * len(items)
        queue = _AffinityQueue([reference for _, reference in items])
        workers = {worker.conn: worker for worker in self._state.workers}
        sizes = [len(response) + len(reference) for response, reference in items]

        def fail(worker: _Worker, reason: str) -> None:
            """The worker's current item gets ``reason``; its queued items go back; a fresh worker replaces it."""
            results[worker.inflight.popleft()] = (None, reason, _ms_since(worker.started))
            queue.put_back(worker.inflight)
            queue.release(worker.pid)
            del workers[worker.conn]
            fresh = self._replace(worker)
            workers[fresh.conn] = fresh

        while queue or any(w.inflight for w in workers.values()):
            for worker in list(workers.values()):
                # Keep up to PIPELINE_DEPTH items queued at each worker (within PIPELINE_MAX_CHARS).
                while queue and len(worker.inflight) < PIPELINE_DEPTH:
                    index = queue.peek(worker.pid)
                    response, reference = items[index]
                    waiting = sum(sizes[i] for i in list(worker.inflight)[1:])
                    if worker.inflight and waiting + sizes[index] > PIPELINE_MAX_CHARS:
                        break
                    queue.take(worker.pid)
                    if not worker.inflight:
                        worker.started = time.monotonic()
                    worker.inflight.append(index)
                    try:
                        worker.conn.send((index, response, reference))
                    except OSError:  # the worker died: its current item is its victim, not its cause
                        fail(worker, "error")
                        break
            busy = [w for w in workers.values() if w.inflight]
            if not busy:
                continue
            deadline = min(w.started for w in busy) + self.timeout_s
            for conn in wait([w.conn for w in busy], timeout=max(0.0, deadline - time.monotonic())):
                worker = workers[conn]  # type: ignore[index]
                try:
                    while worker.inflight and conn.poll(0):
                        index, verdict = conn.recv()
                        results[worker.inflight.popleft()] = (verdict, "", _ms_since(worker.started))
                        worker.started = time.monotonic()  # the next queued item starts now
                except (EOFError, OSError):  # crashed (for example killed by the kernel's OOM killer)
                    fail(worker, "error")
            now = time.monotonic()
            for worker in list(workers.values()):
                if worker.inflight and now - worker.started >= self.timeout_s:
                    fail(worker, "timeout")
        return results  # type: ignore[return-value]

    def call_in_workers(self, method: str) -> None:
        """Call ``verifier.<method>()`` in every running worker, between batches (for example to clear caches).

        A worker that fails or does not answer within ``timeout_s`` is replaced by a fresh fork of the template,
        which holds no state of its own either. Workers not started yet are left alone.
        """
        with self._lock:
            if not self.usable():
                return
            for worker in list(self._state.workers):
                try:
                    worker.conn.send((-1, method, None))  # index -1: a control message, not an item
                    if worker.conn.poll(self.timeout_s) and worker.conn.recv() == (-1, None):
                        continue
                except (EOFError, OSError):
                    pass
                self._replace(worker)

    # -- process management ----------------------------------------------------------------------------------
    def _ensure_workers(self) -> None:
        if not self.usable():
            raise RuntimeError("this worker pool was closed or belongs to another process; build a new verifier")
        state = self._state
        if state.template is None or state.template.poll() is not None:
            self._start_template()
        while len(state.workers) < self.size:
            state.workers.append(self._fork())

    def _start_template(self) -> None:
        state = self._state
        if state.channel is not None:
            state.channel.close()
        state.generation += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        # The template must import this package and whatever the verifier's pickle refers to, from where we do.
        env["PYTHONPATH"] = os.pathsep.join(p for p in [_package_root(), *sys.path] if p)
        with theirs:
            template = subprocess.Popen(
                [sys.executable, "-m", "verifiers.pool", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.PIPE,
                env=env,
                # Its own process group, so a Ctrl-C at the terminal reaches it only through the closed socket;
                # but the caller's session, so that it shares CPU like any child (Linux autogroups are per session).
                process_group=0,
            )
        assert template.stdin is not None
        try:
            template.stdin.write(self._payload)
            template.stdin.close()
        except OSError:
            pass  # it died at start; reported below
        state.template, state.channel = template, ours
        ours.settimeout(STARTUP_TIMEOUT_S)
        try:
            ready = ours.recv(16)
        except (TimeoutError, OSError):
            ready = b""
        ours.settimeout(None)
        if ready != _READY:
            _shutdown(state)
            raise RuntimeError(
                "the verifier's worker template process failed to start (see its traceback above); check that the "
                f"verifier's dependencies import in {sys.executable}"
            )

    def _fork(self) -> _Worker:
        channel = self._state.channel
        assert channel is not None
        for attempt in range(2):
            try:
                channel.send(_FORK)
                message, fds, _, _ = socket.recv_fds(channel, 16, 1)
                if len(message) == 8 and len(fds) == 1:
                    (pid,) = struct.unpack("q", message)
                    os.set_inheritable(fds[0], False)  # a later fork or exec elsewhere must not keep it open
                    return _Worker(pid=pid, template=self._state.generation, conn=Connection(fds[0]))
            except OSError:
                pass
            if attempt == 0:  # the template itself died: start a new one and try once more
                self._start_template()
                channel = self._state.channel
                assert channel is not None
        raise RuntimeError("could not start a verifier worker process")

    def _replace(self, worker: _Worker) -> _Worker:
        state = self._state
        worker.conn.close()
        if worker in state.workers:
            state.workers.remove(worker)
        try:
            if worker.template != state.generation or state.channel is None:
                raise OSError("forked by an earlier template")
            # The template kills and reaps it; until the template reaps it, the pid cannot be reused.
            state.channel.send(_KILL + struct.pack("q", worker.pid))
            state.channel.recv(16)
        except OSError:
            try:  # its template is gone: kill the orphan directly
                os.kill(worker.pid, signal.SIGKILL)
            except OSError:
                pass
        fresh = self._fork()
        state.workers.append(fresh)
        return fresh


class _AffinityQueue:
    """Item indices grouped by reference. A worker takes a whole group and drains it, so each worker parses a
    reference once; a worker with nothing left takes the next waiting group, or, at the end of a batch, the back
    half of the largest group another worker still holds. Every operation is O(1) or O(workers)."""

    def __init__(self, references: Sequence[str]) -> None:
        groups: dict[str, collections.deque[int]] = {}
        for index, reference in enumerate(references):
            groups.setdefault(reference, collections.deque()).append(index)
        self._waiting = collections.deque(groups.values())
        self._held: dict[int, collections.deque[int]] = {}
        self._left = len(references)

    def __bool__(self) -> bool:
        return self._left > 0

    def peek(self, worker: int) -> int:
        """The item ``take(worker)`` would return next."""
        return self._group_for(worker)[0]

    def take(self, worker: int) -> int:
        """The next item for ``worker`` (any hashable key); only called while items are left."""
        self._left -= 1
        return self._group_for(worker).popleft()

    def put_back(self, indices: collections.deque[int]) -> None:
        """Return items that were taken but not done (a replaced worker's queued items), first in line."""
        if indices:
            self._waiting.appendleft(collections.deque(indices))
            self._left += len(indices)
            indices.clear()

    def _group_for(self, worker: int) -> collections.deque[int]:
        group = self._held.get(worker)
        if not group:
            if self._waiting:
                group = self._waiting.popleft()
            else:
                donor = max(self._held.values(), key=len)
                group = collections.deque(donor.pop() for _ in range((len(donor) + 1) // 2))
                group.reverse()
            self._held[worker] = group
        return group

    def release(self, worker: int) -> None:
        """Put back what a replaced worker still held, for the other workers."""
        group = self._held.pop(worker, None)
        if group:
            self._waiting.appendleft(group)


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1e3


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the template process and its workers -------------------------------------------------------------------
def _template_main(fd: int) -> None:
    channel = socket.socket(fileno=fd)
    verifier, memory_mb, sandboxed = pickle.loads(sys.stdin.buffer.read())
    verifier._ensure_prepared()
    jail = _Jail.create() if sandboxed else None
    channel.send(_READY)
    children: set[int] = set()
    try:
        while True:
            try:
                request = channel.recv(16)
            except OSError:
                request = b""
            if not request:
                break
            if request[:1] == _FORK:
                ours, theirs = socket.socketpair()
                pid = os.fork()
                if pid == 0:
                    try:
                        channel.close()
                        ours.close()
                        _worker_main(verifier, Connection(theirs.detach()), memory_mb, jail)
                    finally:
                        os._exit(1)  # never back into the template's loop (a scorer may raise SystemExit)
                theirs.close()
                children.add(pid)
                socket.send_fds(channel, [struct.pack("q", pid)], [ours.fileno()])
                ours.close()
            elif request[:1] == _KILL:
                (pid,) = struct.unpack("q", request[1:9])
                if pid in children:
                    children.discard(pid)
                    _kill_and_reap(pid)
                channel.send(b"k")
    finally:
        for pid in children:
            _kill_and_reap(pid)
        if jail is not None:
            jail.remove()


@dataclass
class _Jail:
    """What a sandboxed worker needs, prepared in the template while it can still read files: an empty directory
    to chroot into and the uid/gid to switch to (only when running as root)."""

    root: str | None = None
    uid: int = 65534
    gid: int = 65534

    @classmethod
    def create(cls) -> _Jail:
        import ctypes  # noqa: F401  (loaded now: a jailed worker can no longer import it)

        if os.geteuid() != 0:
            return cls()
        import pwd
        import tempfile

        try:
            user = pwd.getpwnam("nobody")
            uid, gid = user.pw_uid, user.pw_gid
        except KeyError:
            uid, gid = 65534, 65534
        try:
            root = tempfile.mkdtemp(prefix="lessmore-verifier-jail-")  # mode 0700, owned by root: nobody sees nothing
        except OSError:
            root = None
        return cls(root, uid, gid)

    def remove(self) -> None:
        """Delete the empty directory (a jailed worker cannot have written into it)."""
        if self.root is not None:
            try:
                os.rmdir(self.root)
            except OSError:
                pass


def sandbox(jail: _Jail) -> list[str]:
    """Take away what a worker that runs third-party code does not need; return the measures that took effect.

    Each step is best effort (a container may forbid chroot or setuid); the caller's tests check which apply here.
    """
    applied = []
    for limit, name in ((resource.RLIMIT_CORE, "no_core"), (resource.RLIMIT_FSIZE, "no_file_writes")):
        try:
            resource.setrlimit(limit, (0, 0))
            applied.append(name)
        except (ValueError, OSError):
            pass
    # A write past RLIMIT_FSIZE then fails with an OSError in the scorer instead of killing the worker (SIGXFSZ).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            if ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0) == 0:  # PR_SET_NO_NEW_PRIVS
                applied.append("no_new_privs")
        except (OSError, AttributeError):
            pass
    if os.geteuid() == 0 and jail.root is not None:
        try:
            os.chroot(jail.root)
            os.chdir("/")
            applied.append("chroot")
        except OSError:
            pass
    if os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setgid(jail.gid)
            os.setuid(jail.uid)
            applied.append("unprivileged_user")
        except OSError:
            pass
    if os.geteuid() != 0:  # root ignores RLIMIT_NPROC
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
            applied.append("no_new_processes")
        except (ValueError, OSError):
            pass
    return applied


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _worker_main(verifier: Any, conn: Connection, memory_mb: int, jail: _Jail | None) -> None:
    try:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass  # a lower hard limit is already in place
    if jail is not None:
        sandbox(jail)
    while True:
        try:
            index, response, reference = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        if index == -1:  # control message from call_in_workers: ``response`` names the method
            try:
                getattr(verifier, response)()
                conn.send((-1, None))
            except Exception:
                os._exit(1)
            continue
        verdict = verifier.safe_check(response, reference)
        try:
            conn.send((index, verdict))
        except (OSError, pickle.PicklingError):
            os._exit(1)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _template_main(int(sys.argv[1]))
    os._exit(0)
