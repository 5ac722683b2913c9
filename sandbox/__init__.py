"""Run untrusted, model-written Python in an OS-level jail and judge it with verdicts it cannot forge.

    import sandbox
    v = sandbox.run_tests("def add(a, b):\\n    return a + b", "assert add(2, 3) == 5")
    v.status          # "pass" | "fail" | "timeout"; also v.reason, v.stdout, v.stderr, v.duration_s
    sandbox.run_program("print(int(input()) * 2)", "21\\n").stdout   # "42\\n", compared by the caller
    sandbox.run_calls("def add(a, b):\\n    return a + b", "add", [[1, 2]]).calls[0].value   # 3, yours to compare
    sandbox.run_batch([{"code": c, "tests": t} for c, t in pairs])   # parallel over every core

Pure standard library, Linux only, no service, no root needed (unprivileged user namespaces do).

Threat model
------------
Covered (the program is assumed hostile, with full control of its own Python process):

* Host file system: the program sees a new root holding read-only /usr and the Python installation
  (bound at its own path, wherever it is: a venv under /tmp, /opt or a home directory, also through
  symlinks, so ``sys.executable`` can be started; of the directories above it nothing else shows);
  /tmp, /dev/shm, /home, /root, /run, /work, /proc of the host and every other path are absent. Its
  working dir /tmp is a private tmpfs (size-capped) that vanishes with the run.
* Host identity: /etc is written for the jail (``passwd`` and ``group`` list only root, the sandbox
  user and nobody; ``hosts`` and ``hostname`` name only localhost and "sandbox"; no time zone: UTC);
  of the host's /etc only the loader's cache and the alternatives links are shown.
* Network: a fresh network namespace per run with only a down loopback; nothing of the host, the
  internet or other runs can be reached.
* Environment: empty but for PATH, HOME, TMPDIR and LANG; no host variable (tokens, keys) leaks.
* Identity: fresh user, mount, pid, net, ipc and uts namespaces per run; a non-root uid that maps
  to an unprivileged host uid; no capabilities; no_new_privs.
* Resources: rlimits on address space (``memory_mb``), CPU time, file size, open files and
  processes (fork bombs stop at the limit); a wall-clock limit; stdout/stderr drained and capped
  (a flood is cut off and fails); nothing the program leaves behind (daemons, setsid'd orphans,
  threads) outlives the run: the whole jail pid namespace is SIGKILLed and reaped after each run.
* Forged verdicts: ``pass`` needs a complete, in-order report from the harness *and*, for every
  ``assert E == literal`` (also ``!=``, ``<``, ``is``, ``in``, truthiness, ``not``,
  ``abs(E - x) < tol``, ``math.isclose``), the value of ``E`` shipped out as plain data and compared
  here, in the trusted process. The expected values never enter the sandbox. So exit codes
  (``sys.exit(0)``, ``os._exit(0)``, ``atexit``), ``SystemExit`` from the function, printed "passed"
  lines, redefined ``AssertionError``, always-equal objects, ``int`` subclasses with a lying
  ``__eq__``, monkeypatched builtins or modules, re-executing under ``python -O``, reading or
  rewriting "the test file" (there is none) and frame inspection all fail. Objects of the program's
  own classes may be built inside an assert (``Solution().f(x) == y``): their methods are the
  program's code, and only the plain value they return is compared. ``run_calls`` ships each call's
  return value out the same way; its arguments go in as data, never as source.

Not covered:

* Kernel exploits and CPU side channels: the isolation is namespaces + rlimits (no seccomp filter,
  no VM); a kernel bug reachable from an unprivileged user namespace breaks it.
* Asserts that cannot be judged outside (both sides computed, e.g. ``assert f(x) == g(y)``) are
  checked inside the sandbox by a hardened harness (plain-data comparisons, pristine builtins); a
  program that reverse-engineers the harness in memory (ctypes, gc, tracing) could forge those.
* Memory: each process is bounded by RLIMIT_AS (``memory_mb``). A memory cgroup per jail bounds a
  run's processes together (``memory_mb`` + 256 MiB for the zygote, tmpfs pages included) only when
  the host runs as root with a writable cgroup hierarchy; otherwise a run may hold up to
  ``memory_mb`` times its process limit, plus its tmpfs. CPU is not shared fairly between runs.
* Reading what is deliberately visible: the Python installation (with whatever its site-packages
  hold), /usr, the host's loader cache and alternatives links.
* ``isolation="none"`` (explicit opt-out) keeps rlimits, the empty environment and the verdict
  checks, but nothing else.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sandbox import _plan
from sandbox._zygote import RUN_MOUNTS, read_frame, write_frame

__all__ = [
    "Verdict",
    "CallResult",
    "run_tests",
    "run_program",
    "run_calls",
    "run_batch",
    "configure",
    "SandboxUnavailable",
    "SandboxError",
    "Pool",
]

_ROOT = str(Path(__file__).resolve().parent.parent)
# The only host files in the jail's /etc: the loader's cache (libraries under multiarch dirs are found
# through it) and the alternatives links that /usr/bin tools resolve through. The rest is written by
# the zygote (_zygote.ETC_FILES) and names no host account, host name or time zone.
_ETC = ("/etc/ld.so.cache", "/etc/alternatives")
_FIX = (
    "Linux user namespaces are not available here ({why}). Fix one of: run on a host where "
    "`unshare --user --map-root-user --pid --fork --net --mount true` works (sysctl "
    "kernel.unprivileged_userns_clone=1 and user.max_user_namespaces>0; in Docker, "
    "--security-opt seccomp=unconfined --security-opt apparmor=unconfined or --privileged); or, "
    "accepting that model-written code then runs unisolated, opt out explicitly with "
    "sandbox.configure(isolation='none') or RLVR_SANDBOX_ISOLATION=none."
)


class SandboxUnavailable(RuntimeError):
    """Isolation is not possible on this machine (and the user did not opt out)."""


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program)."""


@dataclass
class Verdict:
    status: str  # "pass" | "fail" | "timeout"
    reason: str
    stdout: str = ""  # run_tests: the tail; run_program: the head, up to max_output_bytes
    stderr: str = ""  # the tail
    duration_s: float = 0.0  # wall time of the run, start of the fork to the end of the program
    tests_passed: int = 0  # test statements (top-level statements with an assert) that passed
    tests_total: int = 0
    exit_code: int | None = None
    signal: int | None = None
    stdout_truncated: bool = False
    sandbox_error: bool = False  # the sandbox failed, not the program: no verdict on the program
    calls: list[CallResult] | None = None  # run_calls: one per call, in order

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass
class CallResult:
    """One call of ``run_calls``: the value it returned, rebuilt here as plain data, or why there is none."""

    value: object = None
    error: str | None = None  # None: it returned ``value``; else it raised, returned no plain data, or never ran

    @property
    def returned(self) -> bool:
        return self.error is None


# ----------------------------------------------------------------------------- configuration

_config = {
    "isolation": os.environ.get("RLVR_SANDBOX_ISOLATION", "namespaces"),  # or "none" (unsafe)
    "workers": None,  # default: 2 * os.cpu_count()
    "extra_ro_paths": [],  # more host paths to show read-only inside the jail
}


def configure(
    *, isolation: str | None = None, workers: int | None = None, extra_ro_paths: list[str] | None = None
) -> None:
    """Change the default pool's settings (closes it; the next run starts a new one).

    ``isolation="none"`` is the explicit opt-out for machines without user namespaces: programs then
    run with rlimits and an empty environment only, NOT isolated from the host.
    """
    global _default
    if isolation is not None:
        if isolation not in ("namespaces", "none"):
            raise ValueError("isolation must be 'namespaces' or 'none'")
        _config["isolation"] = isolation
    if workers is not None:
        _config["workers"] = workers
    if extra_ro_paths is not None:
        _config["extra_ro_paths"] = list(extra_ro_paths)
    with _default_lock:
        if _default is not None:
            _default.close()
            _default = None


# ----------------------------------------------------------------------------- jails


def _inside(path: str, dirs) -> bool:
    return any(path == d or path.startswith(d + "/") for d in dirs)


def _links_on_the_way(path: str, binds: list) -> dict:
    """The symlinks met resolving ``path`` (outside ``binds``): recreated in the jail, so that the
    interpreter's own path (``sys.executable``) also resolves there when it goes through, say, a
    symlinked home directory; only their real targets are bound."""
    links = {}
    for _ in range(40):  # the kernel's own bound on symlinks in one lookup
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            comp = "/" + "/".join(parts[:i])
            if _inside(comp, binds):
                return links
            if os.path.islink(comp):
                links[comp] = os.readlink(comp)
                path = os.path.normpath(os.path.join(os.path.dirname(comp), links[comp], *parts[i:]))
                break
        else:
            return links
    return links


def _can_stage_in(d: str, placed: list) -> bool:
    return os.path.isdir(d) and not os.path.islink(d) and not any(_inside(p, [d]) for p in placed)


def _jail_config(isolate: bool, extra_ro_paths) -> dict:
    binds, links = ["/usr"], {}
    for p in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(p):
            links[p] = os.readlink(p)
        elif os.path.isdir(p):
            binds.append(p)
    exe_prefix = os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))
    installation = (sys.base_prefix, sys.prefix, sys.exec_prefix, exe_prefix)
    for p in (*installation, *extra_ro_paths):
        p = os.path.realpath(p)
        if os.path.exists(p) and not _inside(p, binds):
            binds.append(p)
    binds += [p for p in _ETC if os.path.exists(p)]
    for p in (*installation, sys.executable):
        links.update(_links_on_the_way(os.path.abspath(p), binds))
    # The new root is built on a tmpfs mounted (in the jail's own mount namespace) over a host directory,
    # which hides what is below it: it must not be above anything we bind, e.g. a virtualenv in /tmp.
    placed = [*binds, *links]
    candidates = ("/tmp", "/mnt", "/media", "/srv", "/opt", "/var/tmp", "/run")
    staging = next((d for d in candidates if _can_stage_in(d, placed)), None)
    if staging is None:
        raise SandboxUnavailable(
            "no directory to build the jail's root in: /tmp, /mnt, /media, /srv, /opt, "
            "/var/tmp and /run all hold the Python installation or are missing"
        )
    return {
        "isolate": isolate,
        "host_pid": os.getpid(),
        "staging": staging,
        "ro_binds": binds,
        "symlinks": links,
        "jail_has_sandbox_uid": os.geteuid() == 0,
        "init_path": next((p for p in ("/usr/bin/sleep", "/bin/sleep") if os.path.exists(p)), "/usr/bin/sleep"),
        "hide_sys_path": [_ROOT],
        # Binds and links below the mounts each run gets afresh: made again on every run's tmpfs.
        "run_binds": [b for b in binds if any(b.startswith(m + "/") for m in RUN_MOUNTS)],
        "run_links": {k: v for k, v in links.items() if any(k.startswith(m + "/") for m in RUN_MOUNTS)},
    }


class _MemoryCgroup:
    """Best effort (root, cgroup v1 or v2): one memory cgroup per jail, so that a run's processes
    together (not just each one, as RLIMIT_AS does) stay within its memory limit."""

    _count = 0

    def __init__(self, pid: int):
        self.path, self.limit_file, self.current = None, None, None
        try:
            with open("/proc/self/cgroup") as f:
                lines = [line.rstrip("\n").split(":", 2) for line in f]
        except OSError:
            return
        for _, ctrls, rel in lines:
            if "memory" in ctrls.split(","):
                base, limit_file = f"/sys/fs/cgroup/memory{rel}", "memory.limit_in_bytes"
                break
        else:
            base, limit_file = f"/sys/fs/cgroup{dict((c, r) for _, c, r in lines).get('', '/')}", "memory.max"
        _MemoryCgroup._count += 1
        path = os.path.join(base, f"rlvr-sandbox-{os.getpid()}-{_MemoryCgroup._count}")
        try:
            os.mkdir(path)
        except OSError:
            return
        try:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except OSError:
            os.rmdir(path)
            return
        self.path, self.limit_file = path, os.path.join(path, limit_file)

    def set_limit(self, memory_mb: int) -> None:
        want = (memory_mb + 256) << 20  # the run's limit plus the zygote's own memory
        if self.path is None or want == self.current:
            return
        try:
            with open(self.limit_file, "w") as f:
                f.write(str(want))
            self.current = want
        except OSError:
            pass

    def close(self) -> None:
        if self.path is None:
            return
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


class _Jail:
    """One zygote process (and its namespaces); runs one job at a time."""

    def __init__(self, isolate: bool, extra_ro_paths):
        cfg = _jail_config(isolate, extra_ro_paths)
        boot = f"import sys; sys.path.insert(0, {_ROOT!r}); from sandbox import _zygote; _zygote.main()"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", boot, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={},
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )
        self.rfd, self.wfd = self.proc.stdout.fileno(), self.proc.stdin.fileno()
        self.cgroup = _MemoryCgroup(self.proc.pid) if isolate and os.geteuid() == 0 else None
        try:
            msg = self._read(30.0)
            if isolate:
                if msg is None or "error" in msg:
                    why = (msg or {}).get("error") or self._log_tail() or "the jail process exited"
                    raise SandboxUnavailable(_FIX.format(why=why))
                self._write_maps()
                write_frame(self.wfd, {"mapped": True})
                msg = self._read(30.0)
            if msg is None or "error" in msg or not msg.get("ready"):
                why = (msg or {}).get("error") or self._log_tail() or "the jail process exited"
                raise SandboxUnavailable(_FIX.format(why=why) if isolate else f"sandbox worker failed: {why}")
        except BaseException:
            self.close()
            raise

    def _write_maps(self) -> None:
        pid = self.proc.pid
        try:
            if os.geteuid() == 0:  # jail root = host root; the programs' uid 1000 = host nobody
                maps = ("0 0 1\n1000 65534 1\n", "0 0 1\n1000 65534 1\n")
            else:
                with open(f"/proc/{pid}/setgroups", "w") as f:
                    f.write("deny")
                maps = (f"0 {os.geteuid()} 1\n", f"0 {os.getegid()} 1\n")
            with open(f"/proc/{pid}/uid_map", "w") as f:
                f.write(maps[0])
            with open(f"/proc/{pid}/gid_map", "w") as f:
                f.write(maps[1])
        except OSError as exc:
            raise SandboxUnavailable(_FIX.format(why=f"writing the uid/gid maps failed: {exc}")) from exc

    def _log_tail(self) -> str:
        try:
            self.log.seek(0)
            return self.log.read()[-2000:].decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def _read(self, timeout: float):
        ready, _, _ = select.select([self.rfd], [], [], timeout)
        if not ready:
            return None
        try:
            return read_frame(self.rfd)
        except (OSError, ValueError):
            return None

    def run(self, job: dict) -> dict:
        if self.cgroup is not None:
            self.cgroup.set_limit(job["memory_mb"])
        try:
            write_frame(self.wfd, job)
        except OSError as exc:
            raise SandboxError(f"sandbox worker died: {exc}") from exc
        reply = self._read(job["timeout_s"] + 30.0)
        if reply is None:
            raise SandboxError("sandbox worker did not answer: " + (self._log_tail() or "no message"))
        return reply

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.kill()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.log):
            try:
                f.close()
            except OSError:
                pass
        if getattr(self, "cgroup", None) is not None:
            self.cgroup.close()


class Pool:
    """``workers`` pre-warmed jails; ``run`` is thread-safe; ``map`` keeps every jail busy."""

    def __init__(
        self, workers: int | None = None, *, isolation: str | None = None, extra_ro_paths: list[str] | None = None
    ):
        # Twice the cores: part of a run's wall time is spent waiting in the kernel (namespace
        # teardown), and another jail's run fills it.
        self.workers = workers or _config["workers"] or 2 * (os.cpu_count() or 1)
        self.isolate = (isolation or _config["isolation"]) != "none"
        self.extra = list(extra_ro_paths if extra_ro_paths is not None else _config["extra_ro_paths"])
        self._slots: queue.LifoQueue = queue.LifoQueue()
        self._all: list[_Jail] = []
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(self.workers):
            self._slots.put(None)  # started on first use

    def _start(self) -> _Jail:
        jail = _Jail(self.isolate, self.extra)
        with self._lock:
            self._all.append(jail)
        return jail

    def run(self, job: dict) -> dict:
        if self._closed:
            raise SandboxError("pool is closed")
        jail = self._slots.get()
        try:
            if jail is None:
                jail = self._start()
            try:
                return jail.run(job)
            except SandboxError:
                jail.close()
                jail = None
                raise
        finally:
            self._slots.put(jail)

    def map(self, jobs: list, fn) -> list:
        """``fn(job)`` for every job, ``workers`` at a time, in order."""
        if len(jobs) <= 1:
            return [fn(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs))) as ex:
            return list(ex.map(fn, jobs))

    def close(self) -> None:
        self._closed = True
        with self._lock:
            jails, self._all = self._all, []
        for jail in jails:
            jail.close()


_default: Pool | None = None
_default_lock = threading.Lock()


def _pool() -> Pool:
    global _default
    with _default_lock:
        if _default is None:
            _default = Pool()
        return _default


@atexit.register
def _shutdown() -> None:
    if _default is not None:
        _default.close()


# ----------------------------------------------------------------------------- runs

_TAIL = 4096


def _limits(timeout_s: float, memory_mb: int, **extra) -> dict:
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError("timeout_s and memory_mb must be positive")
    job = {
        "timeout_s": float(timeout_s),
        "memory_mb": int(memory_mb),
        "tail": _TAIL,
        "output_limit": 8 << 20,
        "max_records": 32 << 20,
        "max_output": 1 << 20,
        "fsize_mb": 64,
        "tmp_mb": 64,
        "nproc": 64,
    }
    job.update({k: v for k, v in extra.items() if v is not None})
    return job


def _base_verdict(reply: dict) -> Verdict:
    exit_ = reply.get("exit") or {}
    return Verdict(
        status="fail",
        reason="",
        stdout=reply.get("stdout", ""),
        stderr=reply.get("stderr", ""),
        duration_s=float(reply.get("duration", 0.0)),
        exit_code=exit_.get("code"),
        signal=exit_.get("signal"),
    )


def _judge_tests(plan: _plan.Plan, reply: dict) -> Verdict:
    v = _base_verdict(reply)
    v.tests_total = plan.n_tests
    if not reply.get("ready"):
        v.sandbox_error, v.reason = True, "sandbox set-up failed: " + v.stderr[-500:]
        return v
    report = _plan.judge(plan, reply.get("records", ""))
    ok, v.tests_passed, reason = report.ok, report.passed, report.reason
    if plan.call is not None:
        v.calls = [
            CallResult(report.values[i])
            if done is True and i in report.values
            else CallResult(error=done if isinstance(done, str) else "did not run to completion")
            for i, done in enumerate(report.units)
        ]
    if reply.get("timed_out"):
        v.status, v.reason = "timeout", "wall-clock limit reached"
    elif reply.get("overflow"):
        v.status, v.reason = "fail", f"{reply['overflow']} exceeded its size limit"
    elif v.signal is not None and not ok:
        v.status = "timeout" if v.signal == signal.SIGXCPU else "fail"
        v.reason = f"killed by signal {v.signal} ({reason})"
    elif ok and v.exit_code == 0:
        v.status, v.reason = "pass", reason
    else:
        v.reason = reason if not ok else f"harness exited with {v.exit_code or v.signal}"
    return v


def _judge_program(reply: dict) -> Verdict:
    v = _base_verdict(reply)
    v.stdout_truncated = reply.get("stdout_total", 0) > len(v.stdout.encode("utf-8", "replace"))
    if not reply.get("ready"):
        v.sandbox_error, v.reason = True, "sandbox set-up failed: " + v.stderr[-500:]
    elif reply.get("timed_out"):
        v.status, v.reason = "timeout", "wall-clock limit reached"
    elif reply.get("overflow"):
        v.reason = f"{reply['overflow']} exceeded its size limit"
    elif v.signal is not None:
        v.status = "timeout" if v.signal == signal.SIGXCPU else "fail"
        v.reason = f"killed by signal {v.signal}"
    elif v.exit_code == 0:
        v.status, v.reason = "pass", "exited normally"
    else:
        v.reason = f"exit status {v.exit_code}"
    return v


def _execute(request: dict, pool: Pool | None = None) -> Verdict:
    pool = pool or _pool()
    limits = _limits(
        request.get("timeout_s", 10.0), request.get("memory_mb", 2048), max_output=request.get("max_output_bytes")
    )
    code = request["code"]
    if not isinstance(code, str):
        raise TypeError("code must be a str")
    t0 = time.monotonic()
    try:
        if "tests" in request or "call" in request:
            plan = (
                _plan.build(request["tests"], code)
                if "tests" in request
                else _plan.calls(request["call"], request["args"])
            )
            job = dict(
                limits,
                kind="tests",
                code=code,
                units=plan.units,
                call=plan.call,
                args=plan.args,
                prelude=request.get("prelude", ""),
                trusted_names=plan.trusted_names,
                trusted_modules=plan.trusted_modules,
            )
            verdict = _judge_tests(plan, pool.run(job))
        else:
            stdin = request.get("stdin", "")
            if isinstance(stdin, bytes):
                stdin = stdin.decode("utf-8", "surrogateescape")
            job = dict(limits, kind="program", code=code, stdin=stdin or "")
            verdict = _judge_program(pool.run(job))
    except SandboxError as exc:
        verdict = Verdict(status="fail", reason=str(exc), sandbox_error=True)
    verdict.duration_s = verdict.duration_s or time.monotonic() - t0
    return verdict


def run_tests(code: str, tests: str, *, timeout_s: float = 10.0, memory_mb: int = 2048) -> Verdict:
    """Run ``code`` then the assert statements ``tests`` in one namespace, isolated.

    ``status`` is "pass" only when every test statement ran to completion and every assert held;
    "timeout" when ``timeout_s`` (wall clock) ran out; "fail" otherwise. Raises ``SyntaxError`` if
    the *tests* do not parse, ``SandboxUnavailable`` if isolation is impossible here.
    """
    return _execute({"code": code, "tests": tests, "timeout_s": timeout_s, "memory_mb": memory_mb})


def run_program(
    code: str,
    stdin: str | bytes = "",
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 2048,
    max_output_bytes: int = 1 << 20,
) -> Verdict:
    """Run ``code`` as ``__main__`` with ``stdin``; compare ``.stdout`` yourself.

    "pass" means it exited with status 0 within the limits (not that its output is right).
    Output beyond ``max_output_bytes`` fails the run.
    """
    return _execute(
        {
            "code": code,
            "stdin": stdin,
            "timeout_s": timeout_s,
            "memory_mb": memory_mb,
            "max_output_bytes": max_output_bytes,
        }
    )


def run_calls(
    code: str, name: str, args: list, *, prelude: str = "", timeout_s: float = 10.0, memory_mb: int = 2048
) -> Verdict:
    """Run ``prelude`` then ``code``, then call ``name(*a)`` for every ``a`` in ``args`` (lists of
    plain data: None, bool, int, float, str, list, tuple, dict, set...; each call gets fresh copies) in
    one isolated run; ``Solution().name`` when the program defines such a class (LeetCode style). Only
    what ``code`` defines is called, never a name the prelude brought in.

    ``.calls[i]`` is what call ``i`` returned, shipped out as plain data and rebuilt here (an object
    the program made up cannot pass for a value), or the reason there is none; compare it yourself.
    "pass" means every call returned plain data within ``timeout_s`` (the whole run's limit).
    """
    return _execute(
        {"code": code, "prelude": prelude, "call": name, "args": args, "timeout_s": timeout_s, "memory_mb": memory_mb}
    )


def run_batch(requests: list[dict], *, pool: Pool | None = None) -> list[Verdict]:
    """Many runs, all cores busy. Each request: ``{"code", "tests"}``, ``{"code", "stdin"}`` or
    ``{"code", "call", "args"}``, optionally ``prelude`` (tests, calls), ``timeout_s``, ``memory_mb``,
    ``max_output_bytes``. Verdicts come back in order."""
    pool = pool or _pool()
    return pool.map(list(requests), lambda r: _execute(r, pool))
