"""A persistent pool of killable worker processes that runs verifiers with a hard time bound.

    from verifiers import pool
    rewards = pool.run_isolated("my_rewards.py:brevity", completions, answers, metas, timeout_s=1.0)

Every item gets at most ``timeout_s`` seconds of wall-clock time in a worker process; a worker that
overruns (or crashes, or calls ``os._exit``) is SIGKILLed, its item scores ``None`` and a fresh worker
takes its place. ``run_isolated`` never raises: an exception in the verifier, an unpicklable meta, a
result that is not a finite number, all become ``None``. No signals are used, so it works from any
thread, from async code (run it in an executor) and from inside other worker pools.

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
"""

from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import threading
import time
from collections import deque
from typing import Sequence

#: True inside a pool worker; verifiers use it to run locally instead of dispatching to a pool again.
IN_WORKER = False

_STARTUP_TIMEOUT_S = 60.0  # a fresh worker must say "ready" within this
_LOAD_MIN_TIMEOUT_S = 20.0  # resolving a verifier spec (imports) in a worker


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
    methods = mp.get_all_start_methods()
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        # Only has an effect if the fork server has not been started yet. Replacing the default
        # ['__main__'] keeps the training script (and torch) out of the fork server.
        try:
            ctx.set_forkserver_preload(["verifiers", "verifiers.math"])
        except Exception:
            pass
        return ctx
    return mp.get_context("spawn")


def _worker_main(conn, memory_mb: int | None) -> None:
    global IN_WORKER
    IN_WORKER = True
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    except Exception:
        pass
    if memory_mb:
        try:
            import resource

            limit = int(memory_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except Exception:
            pass
    import verifiers

    cache: dict = {}
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        except BaseException:
            try:
                conn.send(("err", None))
            except BaseException:
                return
            continue
        if msg is None:
            return
        kind, spec = msg[0], msg[1]
        try:
            fn = cache.get(spec)
            if fn is None:
                fn = cache[spec] = verifiers.get(spec)
            if kind == "load":
                reply = ("ok", None)
            else:
                completion, answer, meta = msg[2], msg[3], msg[4]
                value = float(fn(completion, answer, **(meta or {})))
                reply = ("ok", value if math.isfinite(value) else None)
        except BaseException:  # SystemExit, KeyboardInterrupt, MemoryError, anything
            reply = ("err", None)
        try:
            conn.send(reply)
        except BaseException:
            return


class _Worker:
    __slots__ = ("proc", "conn", "loaded", "ready", "started")

    def __init__(self, ctx, memory_mb: int | None):
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_worker_main, args=(child_conn, memory_mb), name=_WORKER_NAME, daemon=True
        )
        self.proc.start()
        child_conn.close()
        self.conn = parent_conn
        self.loaded: set[str] = set()
        self.ready = False
        self.started = time.monotonic()

    def kill(self) -> None:
        try:
            self.proc.kill()
        except Exception:
            pass
        try:
            self.proc.join(timeout=1.0)
        except Exception:
            pass
        try:
            self.conn.close()
        except Exception:
            pass

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except Exception:
            pass
        self.kill()


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

    # -- worker bookkeeping ---------------------------------------------------------------------
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
        items = [("", "", {})] * n if spec else []
        if spec:
            self.run(spec, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
                     timeout_s=_LOAD_MIN_TIMEOUT_S, workers=n)
        else:
            ws = self._checkout(n)
            deadline = time.monotonic() + _STARTUP_TIMEOUT_S
            for w in ws:
                if not w.ready and w.conn.poll(max(0.0, deadline - time.monotonic())):
                    try:
                        w.ready = w.conn.recv()[0] == "ready"
                    except Exception:
                        pass
            self._checkin(ws)

    def close(self) -> None:
        with self._lock:
            ws, self._idle = self._idle, []
        for w in ws:
            w.stop()

    # -- the dispatcher ---------------------------------------------------------------------------
    def run(self, spec, completions, answers, metas=None, *, timeout_s=1.0, workers=None):
        n = len(completions)
        results: list[float | None] = [None] * n
        if n == 0:
            return results
        metas = list(metas) if metas is not None else [{}] * n
        timeout_s = float(timeout_s)
        load_timeout = max(_LOAD_MIN_TIMEOUT_S, 2 * timeout_s)
        nw = max(1, min(int(workers or _default_workers()), n))
        pending = deque(range(n))
        ws = self._checkout(nw)
        # state per worker: ("start", None, deadline) | ("load", idx, deadline) | ("run", idx, deadline)
        state: dict[_Worker, tuple] = {}
        now = time.monotonic()
        for w in ws:
            state[w] = ("idle", None, 0.0) if w.ready else ("start", None, now + _STARTUP_TIMEOUT_S)
        self.stats["items"] += n
        failed_load = False
        start_failures = 0

        def dispatch(w: _Worker) -> None:
            # give the next pending item to a ready worker; leaves it idle when nothing is left
            while pending:
                idx = pending.popleft()
                if failed_load:
                    continue
                try:
                    if spec not in w.loaded:
                        w.conn.send(("load", spec))
                        state[w] = ("load", idx, time.monotonic() + load_timeout)
                    else:
                        w.conn.send(("run", spec, completions[idx], answers[idx], metas[idx]))
                        state[w] = ("run", idx, time.monotonic() + timeout_s)
                    return
                except Exception:  # unpicklable item; the pipe is untouched (pickling comes first)
                    self.stats["errors"] += 1
                    if not w.proc.is_alive():
                        replace(w, idx)
                        return
            state[w] = ("idle", None, 0.0)

        def replace(w: _Worker, idx) -> None:
            nonlocal start_failures
            if state[w][0] == "start":
                start_failures += 1
            w.kill()
            del state[w]
            ws.remove(w)
            if pending and not failed_load and start_failures < 3:
                nw_ = self._new_worker()
                ws.append(nw_)
                state[nw_] = ("start", None, time.monotonic() + _STARTUP_TIMEOUT_S)

        for w in list(ws):
            if state[w][0] == "idle":
                dispatch(w)

        while True:
            busy = [w for w in ws if state[w][0] != "idle"]
            if not busy:
                if pending and not failed_load and start_failures < 3:  # all died; start one more
                    w = self._new_worker()
                    ws.append(w)
                    state[w] = ("start", None, time.monotonic() + _STARTUP_TIMEOUT_S)
                    continue
                break
            next_deadline = min(state[w][2] for w in busy)
            wait_s = max(0.0, next_deadline - time.monotonic())
            try:
                ready = mpc.wait([w.conn for w in busy], timeout=wait_s)
            except Exception:
                ready = []
            by_conn = {w.conn: w for w in busy}
            for conn in ready:
                w = by_conn[conn]
                kind, idx, _ = state[w]
                try:
                    tag, value = w.conn.recv()
                except Exception:  # died (EOF) or garbage
                    self.stats["crashes"] += 1
                    if kind == "load":
                        failed_load = True
                    replace(w, idx)
                    continue
                if kind == "start":
                    w.ready = tag == "ready"
                    dispatch(w)
                elif kind == "load":
                    if tag == "ok":
                        w.loaded.add(spec)
                        pending.appendleft(idx)
                    else:
                        failed_load = True
                    dispatch(w)
                else:
                    if tag == "ok":
                        results[idx] = value
                    else:
                        self.stats["errors"] += 1
                    dispatch(w)
            now = time.monotonic()
            for w in list(ws):
                if w in state and state[w][0] != "idle" and now >= state[w][2]:
                    kind = state[w][0]
                    if kind == "run":
                        self.stats["timeouts"] += 1
                    elif kind == "load":
                        failed_load = True
                    replace(w, state[w][1])
        self._checkin(ws)
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
) -> list[float | None]:
    """Run verifier ``spec`` on every item in worker processes; ``None`` where it raised or overran."""
    try:
        n = len(completions)
    except Exception:
        return []
    try:
        return get_pool(memory_mb).run(
            spec, list(completions), list(answers), metas, timeout_s=timeout_s, workers=workers
        )
    except Exception:
        return [None] * n


@atexit.register
def _shutdown() -> None:
    for key, p in list(_POOLS.items()):
        if key[0] == os.getpid():
            try:
                p.close()
            except Exception:
                pass
