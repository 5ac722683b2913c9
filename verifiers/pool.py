"""A persistent pool of killable worker processes that runs verifiers with a hard time bound.

    from verifiers import pool
    rewards = pool.run_isolated("my_rewards.py:brevity", completions, answers, metas, timeout_s=1.0)

Every item gets at most ``timeout_s`` seconds of wall-clock time in a worker process; a worker that
overruns (or crashes, or calls ``os._exit``) is SIGKILLed, its item scores ``None`` and a fresh worker
takes its place. ``run_isolated`` never raises: an exception in the verifier, an unpicklable meta, a
result that is not a finite number, all become ``None``; pass ``errors=[]`` to learn why, one
``(index, message)`` per failed item (the worker's traceback when the verifier raised, else a
one-line reason). No signals are used, so it works from any thread, from async code (run it in an
executor) and from inside other worker pools.

Design:
- Workers are started with the ``forkserver`` context (``spawn`` where that is unavailable), so the
  pool is safe to use after torch or CUDA have been initialised in the parent: the fork server is a
  fresh interpreter that has imported only ``verifiers.math`` (and so sympy), and each worker is a
  cheap fork of it (about 10-30 ms, against ~0.6 s for a spawned interpreter that imports sympy).
- Workers live across calls. A call checks out idle workers (starting more if none are idle), so
  concurrent calls from several threads never share a pipe; at most ``max_idle`` stay parked.
- A worker resolves the verifier itself with ``verifiers.get(spec)`` (so ``path/to/file.py:fn`` works),
  once per spec, under a separate, generous load bound (imports are not charged to the first item).
- The clock of an item starts when it is sent to a worker that is ready; start-up of a replacement
  worker is never charged to an item.
- A child of a forked parent never touches the parent's workers: the pool is per process id.
- One call is a ``_Batch``: it dispatches items to ready workers, collects their replies and expires
  the workers that overran (killed and replaced), until no item is left.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import pickle
import reprlib
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

_STARTUP_TIMEOUT_S = 60.0  # a fresh worker must say "ready" within this
_LOAD_MIN_TIMEOUT_S = 20.0  # resolving a verifier spec (imports) in a worker
_MAX_START_FAILURES = 3  # workers of one call that may fail to start before its items are given up


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n)


_WORKER_NAME = "rlvr-verifier-worker"


def _install_no_main_preparation() -> None:
    """Keep the parent's ``__main__`` (the training script, and with it torch) out of our workers.

    A forkserver/spawn child normally re-imports the parent's main module before running its
    target. Our target lives in this module and needs nothing from ``__main__``, so for processes
    named ``_WORKER_NAME`` (only ours) the main-module entries are dropped from the preparation data.
    """
    from multiprocessing import spawn

    orig = spawn.get_preparation_data
    if getattr(orig, "_rlvr_wrapped", False):
        return

    def get_preparation_data(name, *args, **kwargs):
        data = orig(name, *args, **kwargs)
        if name == _WORKER_NAME:
            data.pop("init_main_from_name", None)
            data.pop("init_main_from_path", None)
        return data

    get_preparation_data._rlvr_wrapped = True
    spawn.get_preparation_data = get_preparation_data


def _context():
    _install_no_main_preparation()
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Only has an effect if the fork server has not been started yet. Replacing the default
        # ['__main__'] keeps the training script (and torch) out of the fork server.
        ctx.set_forkserver_preload(["verifiers", "verifiers.math"])
        return ctx
    return mp.get_context("spawn")


# ----------------------------------------------------------------------------- the worker


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


def _score(fn, completion, answer, meta) -> tuple[str, object]:
    """("ok", a finite float) or ("err", why): the traceback when ``fn`` raised."""
    try:
        value = fn(completion, answer, **(meta or {}))
    except BaseException as exc:  # SystemExit, KeyboardInterrupt, MemoryError, anything: the item's
        return "err", _traceback(exc)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        shown = f" {reprlib.repr(value)}" if isinstance(value, (str, bytes)) else ""
        return "err", f"returned a {type(value).__name__}{shown}, not a number"
    except BaseException as exc:  # the result's own __float__ raised
        return "err", _traceback(exc)
    if not math.isfinite(number):
        return "err", f"returned {number}, not a finite number"
    return "ok", number


def _worker_main(conn, memory_mb: int | None) -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    except (ValueError, OSError):
        pass
    if memory_mb:
        import resource

        limit = int(memory_mb) * 1024 * 1024
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):
            pass  # a lower hard limit is already in place
    import verifiers

    cache: dict = {}
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        except BaseException as exc:  # an item that does not unpickle here; the loop goes on
            reply = ("err", "the item could not be read in the worker: " + _traceback(exc))
        else:
            if msg is None:
                return
            reply = _handle(msg, cache, verifiers)
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return


def _handle(msg: tuple, cache: dict, verifiers) -> tuple[str, object]:
    kind, spec = msg[0], msg[1]
    fn = cache.get(spec)
    if fn is None:
        try:
            fn = cache[spec] = verifiers.get(spec)
        except BaseException as exc:  # an import of the user's file may raise anything, SystemExit too
            return "err", f"loading verifier {spec!r} failed:\n" + _traceback(exc)
    if kind == "load":
        return "ok", None
    return _score(fn, msg[2], msg[3], msg[4])


class _Worker:
    __slots__ = ("proc", "conn", "loaded", "ready", "started")

    def __init__(self, ctx, memory_mb: int | None):
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child_conn, memory_mb), name=_WORKER_NAME, daemon=True)
        self.proc.start()
        child_conn.close()
        self.conn = parent_conn
        self.loaded: set[str] = set()
        self.ready = False
        self.started = time.monotonic()

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(timeout=1.0)
        except (OSError, ValueError):
            pass  # already gone, or already closed
        try:
            self.conn.close()
        except OSError:
            pass

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.kill()

    def died(self) -> str:
        """A one-line reason for a worker that stopped answering."""
        self.proc.join(0.1)  # its pipe closed as it exited: let it finish, to read its exit status
        code = self.proc.exitcode
        if code is None:
            return "the worker stopped answering"
        return f"the worker died (killed by signal {-code})" if code < 0 else f"the worker exited with status {code}"


# ----------------------------------------------------------------------------- one call


@dataclass
class _Job:
    """What one worker of a call is doing: "start" (not ready yet), "load" (resolving the spec),
    "run" (item ``idx``) or "idle"; ``deadline``: when it is killed if it has not answered."""

    phase: str
    idx: int | None = None
    deadline: float = 0.0


class _Batch:
    """One ``Pool.run`` call: dispatch items to ready workers, collect replies, expire overruns."""

    def __init__(self, pool: Pool, spec: str, items: list, timeout_s: float, workers: int):
        self.pool, self.spec, self.items = pool, spec, items
        self.timeout_s = timeout_s
        self.load_timeout = max(_LOAD_MIN_TIMEOUT_S, 2 * timeout_s)
        self.workers = workers
        self.results: list[float | None] = [None] * len(items)
        self.reasons: dict[int, str] = {}
        self.pending = deque(range(len(items)))
        self.jobs: dict[_Worker, _Job] = {}
        self.load_error: str | None = None  # set once the spec failed to load: no item can run
        self.start_failures = 0

    def run(self) -> list[float | None]:
        for w in self.pool._checkout(self.workers):
            self.jobs[w] = _Job("idle") if w.ready else self._starting()
        for w, job in list(self.jobs.items()):
            if job.phase == "idle":
                self._dispatch(w)
        while self._step():
            pass
        self.pool._checkin(list(self.jobs))
        for idx in self.pending:  # never sent: the spec did not load, or no worker would start
            self.reasons.setdefault(idx, self.load_error or "no verifier worker could be started")
        return self.results

    def _starting(self) -> _Job:
        return _Job("start", deadline=time.monotonic() + _STARTUP_TIMEOUT_S)

    def _can_start(self) -> bool:
        return bool(self.pending) and self.load_error is None and self.start_failures < _MAX_START_FAILURES

    def _step(self) -> bool:
        """Wait for the next reply or deadline and handle it; False when the call is over."""
        busy = {w.conn: w for w, job in self.jobs.items() if job.phase != "idle"}
        if not busy:
            if not self._can_start():
                return False
            self.jobs[self.pool._new_worker()] = self._starting()  # every worker died; one more
            return True
        wait_s = max(0.0, min(self.jobs[w].deadline for w in busy.values()) - time.monotonic())
        for conn in mpc.wait(list(busy), timeout=wait_s):
            self._collect(busy[conn])
        self._expire()
        return True

    def _dispatch(self, w: _Worker) -> None:
        """Give the next pending item to ready worker ``w``; it goes idle when nothing is left."""
        while self.pending and self.load_error is None:
            idx = self.pending.popleft()
            load = self.spec not in w.loaded
            try:
                if load:
                    w.conn.send(("load", self.spec))
                else:
                    w.conn.send(("run", self.spec, *self.items[idx]))
            except Exception as exc:  # pickling a user's meta can raise anything; it is that item's failure
                self.pool.stats["errors"] += 1
                self._fail(idx, f"could not send the item to a worker: {exc!r}")
                if not w.proc.is_alive():
                    self._replace(w)
                    return
                continue
            timeout = self.load_timeout if load else self.timeout_s
            self.jobs[w] = _Job("load" if load else "run", idx, time.monotonic() + timeout)
            return
        self.jobs[w] = _Job("idle")

    def _collect(self, w: _Worker) -> None:
        """Handle the reply of worker ``w``, then give it its next item."""
        job = self.jobs[w]
        try:
            tag, value = w.conn.recv()
        except (EOFError, OSError, pickle.UnpicklingError, ValueError, TypeError):  # died, or garbage
            self.pool.stats["crashes"] += 1
            reason = w.died()
            if job.phase == "load":
                self.load_error = reason = f"loading verifier {self.spec!r}: {reason}"
            self._replace(w, reason)
            return
        if job.phase == "start":
            w.ready = tag == "ready"
        elif job.phase == "load":
            if tag == "ok":
                w.loaded.add(self.spec)
                self.pending.appendleft(job.idx)
            else:
                self.load_error = value
                self._fail(job.idx, value)
        elif tag == "ok":
            self.results[job.idx] = value
        else:
            self.pool.stats["errors"] += 1
            self._fail(job.idx, value)
        self._dispatch(w)

    def _expire(self) -> None:
        """Kill (and replace) every worker past its deadline; its item fails."""
        now = time.monotonic()
        for w, job in list(self.jobs.items()):
            if job.phase == "idle" or now < job.deadline:
                continue
            if job.phase == "run":
                self.pool.stats["timeouts"] += 1
                self._replace(w, f"timed out after {self.timeout_s:g} s (the worker was killed)")
            elif job.phase == "load":
                self.load_error = f"loading verifier {self.spec!r} took longer than {self.load_timeout:g} s"
                self._replace(w, self.load_error)
            else:
                self._replace(w)

    def _replace(self, w: _Worker, reason: str | None = None) -> None:
        """Kill ``w`` (its item, if any, fails with ``reason``) and start another if items remain."""
        job = self.jobs.pop(w)
        if job.phase == "start":
            self.start_failures += 1
        elif job.idx is not None and reason is not None:
            self._fail(job.idx, reason)
        w.kill()
        if self._can_start():
            self.jobs[self.pool._new_worker()] = self._starting()

    def _fail(self, idx: int | None, reason: str) -> None:
        if idx is not None:
            self.results[idx] = None
            self.reasons.setdefault(idx, reason)


# ----------------------------------------------------------------------------- the pool


class Pool:
    """Persistent killable workers. Use the module-level ``run_isolated`` unless you need your own."""

    def __init__(self, *, memory_mb: int | None = None, max_idle: int | None = None):
        self.memory_mb = memory_mb
        self.max_idle = max_idle if max_idle is not None else max(2, _default_workers())
        self._ctx = _context()
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.stats = {"items": 0, "timeouts": 0, "errors": 0, "crashes": 0, "workers_started": 0}

    def _new_worker(self) -> _Worker:
        self.stats["workers_started"] += 1
        return _Worker(self._ctx, self.memory_mb)

    def _checkout(self, n: int) -> list[_Worker]:
        with self._lock:
            got = []
            while self._idle and len(got) < n:
                w = self._idle.pop()
                if w.proc.is_alive():
                    got.append(w)
                else:
                    w.kill()
        while len(got) < n:
            got.append(self._new_worker())
        return got

    def _checkin(self, ws: list[_Worker]) -> None:
        extra = []
        with self._lock:
            for w in ws:
                if w.ready and w.proc.is_alive() and len(self._idle) < self.max_idle:
                    self._idle.append(w)
                else:
                    extra.append(w)
        for w in extra:
            w.stop()

    def warm(self, n: int | None = None, spec: str | None = None) -> None:
        """Start ``n`` workers (and load ``spec`` in them) now, so the first real call is fast."""
        n = n or _default_workers()
        if spec:
            self.run(spec, [""] * n, [""] * n, [{}] * n, timeout_s=_LOAD_MIN_TIMEOUT_S, workers=n)
            return
        ws = self._checkout(n)
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        for w in ws:
            if not w.ready and w.conn.poll(max(0.0, deadline - time.monotonic())):
                try:
                    w.ready = w.conn.recv()[0] == "ready"
                except (EOFError, OSError):
                    pass
        self._checkin(ws)

    def close(self) -> None:
        with self._lock:
            ws, self._idle = self._idle, []
        for w in ws:
            w.stop()

    def run(self, spec, completions, answers, metas=None, *, timeout_s=1.0, workers=None, errors=None):
        """One score per item (None where it failed; ``errors`` gets ``(index, why)`` for those)."""
        n = len(completions)
        if n == 0:
            return []
        metas = list(metas) if metas is not None else [{}] * n
        self.stats["items"] += n
        nw = max(1, min(int(workers or _default_workers()), n))
        batch = _Batch(self, spec, list(zip(completions, answers, metas, strict=True)), float(timeout_s), nw)
        results = batch.run()
        if errors is not None:
            errors.extend(sorted(batch.reasons.items()))
        return results


_POOLS: dict[tuple, Pool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(memory_mb: int | None = None) -> Pool:
    """The shared pool of this process for a given per-worker memory limit (MiB, None = no limit)."""
    key = (os.getpid(), memory_mb)
    with _POOLS_LOCK:
        p = _POOLS.get(key)
        if p is None:
            p = _POOLS[key] = Pool(memory_mb=memory_mb)
        return p


def run_isolated(
    spec: str,
    completions: Sequence[str],
    answers: Sequence[str],
    metas: Sequence[dict] | None = None,
    *,
    timeout_s: float = 1.0,
    workers: int | None = None,
    memory_mb: int | None = None,
    errors: list | None = None,
) -> list[float | None]:
    """Run verifier ``spec`` on every item in worker processes; ``None`` where it raised or overran.

    ``errors``: when a list, gets one ``(index, message)`` per failed item: the worker's formatted
    traceback when the verifier raised, else a one-line reason (timeout, crash, not a number...).
    """
    n = len(completions)
    try:
        return get_pool(memory_mb).run(
            spec, list(completions), list(answers), metas, timeout_s=timeout_s, workers=workers, errors=errors
        )
    except Exception as exc:  # the documented promise: never raise; the reason still reaches the caller
        if errors is not None:
            errors.extend((i, "the verifier pool failed:\n" + _traceback(exc)) for i in range(n))
        return [None] * n


@atexit.register
def _shutdown() -> None:
    for key, p in list(_POOLS.items()):
        if key[0] == os.getpid():
            p.close()
