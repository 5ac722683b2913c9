"""The jail process: isolates itself once, then forks one isolated child per run (a zygote).

Process tree of one jail (``J`` = the jail's namespaces, ``R`` = one run's namespaces)::

    host (trusted) --pipes-- boot (host namespaces) -- zygote (pid 1 of J) --+-- I  pid 1 of R: sleeps
                                                                             `-- H  pid 2 of R: the program

* boot: ``unshare(user, mount, pid, net, ipc, uts)``; the host writes its uid/gid maps (as root:
  jail uid 0 = host root, jail uid 1000 = host ``nobody``; otherwise jail uid 0 = the user).
* zygote: pid 1 of J; builds a new root on a tmpfs (read-only binds of /usr and the interpreter;
  an /etc written here; fresh /dev, /proc, /tmp), ``pivot_root``s into it, pre-imports, then serves
  runs one at a time. After each run it SIGKILLs every other process in J and reaps them, so no
  process outlives a run; the run's mount namespace, and the tmpfs working dir in it, die with it.
* per run, the zygote makes a fresh pid namespace R, starts I (``clone(CLONE_VM)`` running
  ``pause``: cheap, holds nothing) as its pid 1, then forks H. H's parent is outside R, so in
  there ``os.getppid()`` is 0 and a signal to "the parent" only reaches H's own process group.
* H: a private mount namespace with the run's /proc and tmpfs /tmp, /dev/shm (with the binds the
  jail's root had below them made again: a venv under /tmp stays reachable); then the sandbox
  uid (1000) and fresh user, net, ipc and uts namespaces; no capabilities, no_new_privs; rlimits;
  an empty environment; then ``_harness`` runs the program.

Host <-> zygote messages are length-prefixed JSON frames on the boot process's stdin/stdout.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import resource
import select
import signal
import struct
import sys
import time

from sandbox import _harness, _linux

_state: dict = {}
SANDBOX_UID = 1000  # uid of the program inside its user namespace (never 0)
PRELOAD = (
    "math",
    "re",
    "collections",
    "itertools",
    "functools",
    "heapq",
    "bisect",
    "string",
    "typing",
    "random",
    "statistics",
    "fractions",
    "decimal",
    "copy",
    "operator",
    "datetime",
    "hashlib",
    "json",
    "cmath",
    "array",
    "numbers",
    "dataclasses",
    "enum",
    "textwrap",
    "unicodedata",
    "concurrent.futures",
    "threading",
    "queue",
    "struct",
    "traceback",
    "io",
)


# ----------------------------------------------------------------------------- framing


def write_frame(fd: int, obj) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


# ----------------------------------------------------------------------------- jail set-up


def _mkdirs(path: str, mode: int = 0o755) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)


RUN_MOUNTS = ("/tmp", "/dev/shm")  # fresh tmpfs per run (``_run_tmpfs``)
RUN_STAGE = "/.rlvr-run-stage"  # empty dir of the jail root where a run's tmpfs is filled before it moves
ETC_FILES = {
    "passwd": f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/tmp:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
    "hostname": "sandbox\n",
    "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
    "nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
}


def _setup_dev_proc(new: str) -> None:
    """/dev: a few device nodes bound from the host, nothing else; /proc of the jail."""
    L = _linux
    _mkdirs(new + "/dev")
    L.mount("tmpfs", new + "/dev", "tmpfs", L.MS_NOSUID | L.MS_NOEXEC, "size=64k,mode=0755")
    for node in ("null", "zero", "full", "random", "urandom"):
        open(new + "/dev/" + node, "a").close()
        L.bind("/dev/" + node, new + "/dev/" + node, readonly=False)
    for name, dest in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(dest, new + "/dev/" + name)
    _mkdirs(new + "/dev/shm", 0o1777)
    os.chmod(new + "/dev/shm", 0o1777)
    _mkdirs(new + "/proc")
    L.mount("proc", new + "/proc", "proc", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC)


def _setup_root(cfg: dict) -> None:
    """New root on a tmpfs with only what a Python program needs; the host's / goes away."""
    L = _linux
    L.mount(None, "/", None, L.MS_REC | L.MS_PRIVATE)
    new = cfg["staging"]
    L.mount("tmpfs", new, "tmpfs", L.MS_NOSUID | L.MS_NODEV, "size=4m,mode=0755")
    _setup_dev_proc(new)  # first, so that an installation under /dev/shm is bound on top of it
    for path in cfg["ro_binds"]:
        target = new + path
        if os.path.isdir(path):
            _mkdirs(target)
        else:
            _mkdirs(os.path.dirname(target))
            open(target, "a").close()
        L.bind(path, target, readonly=True)
    for link, dest in cfg["symlinks"].items():
        _mkdirs(os.path.dirname(new + link))
        os.symlink(dest, new + link)
    _mkdirs(new + "/etc")
    for name, text in ETC_FILES.items():  # written, never bound: no account or name of the host
        with open(new + "/etc/" + name, "w") as f:
            f.write(text)
    _mkdirs(new + "/tmp", 0o1777)
    os.chmod(new + "/tmp", 0o1777)
    if cfg["run_binds"] or cfg["run_links"]:
        _mkdirs(new + RUN_STAGE, 0o700)
    _mkdirs(new + "/.old")
    os.chdir(new)
    L.pivot_root(".", ".old")
    L.umount2("/.old", L.MNT_DETACH)
    os.rmdir("/.old")
    os.chdir("/")
    ro = L.MS_REMOUNT | L.MS_BIND | L.MS_RDONLY | L.MS_NOSUID
    L.mount(None, "/", None, ro | L.MS_NODEV)
    L.mount(None, "/dev", None, ro | L.MS_NOEXEC)
    L.sethostname("sandbox")


def _run_tmpfs(target: str, flags: int, options: str, cfg: dict) -> None:
    """A fresh tmpfs on ``target`` for one run, still showing the read-only binds and the symlinks of
    the jail's root below it (``run_binds``, ``run_links``).

    Mounted straight on ``target`` it would hide them, and a Python installation under /tmp must stay
    reachable (the program may start ``sys.executable``). So it is filled on ``RUN_STAGE`` while the
    binds are still visible, then moved into place.
    """
    L = _linux
    binds = [p for p in cfg["run_binds"] if p.startswith(target + "/")]
    links = {k: v for k, v in cfg["run_links"].items() if k.startswith(target + "/")}
    where = RUN_STAGE if binds or links else target
    L.mount("tmpfs", where, "tmpfs", flags, options)
    for path in binds:
        dest = where + path[len(target) :]
        if os.path.isdir(path):
            _mkdirs(dest)
        else:
            _mkdirs(os.path.dirname(dest))
            open(dest, "a").close()
        L.bind(path, dest, readonly=True)
    for link, dest in links.items():
        _mkdirs(os.path.dirname(where + link[len(target) :]))
        os.symlink(dest, where + link[len(target) :])
    if where != target:
        L.mount(where, target, None, L.MS_MOVE)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    rfd, wfd = 0, 1
    os.umask(0o022)  # the dirs made for the jail's root must be traversable by the sandbox uid
    # No parent-death signal here: it fires when the host *thread* that started us exits. The jail
    # ends instead when the host's end of the pipe closes (the host exited or closed the pool).
    if cfg["isolate"]:
        try:
            _linux.unshare(_linux.ALL_NAMESPACES)
        except OSError as exc:
            write_frame(wfd, {"error": f"unshare failed: {exc}", "stage": "unshare"})
            os._exit(1)
        write_frame(wfd, {"unshared": True})
        msg = read_frame(rfd)
        if not msg or not msg.get("mapped"):
            os._exit(1)
        pid = os.fork()
        if pid:  # boot: stays in the host's pid namespace as the jail's anchor
            os.waitpid(pid, 0)
            os._exit(0)
        _linux.set_parent_death_signal(signal.SIGKILL)
        try:
            _setup_root(cfg)
        except OSError as exc:
            write_frame(wfd, {"error": f"building the jail's file system failed: {exc}", "stage": "mount"})
            os._exit(1)
    else:
        _linux.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans come back to us, to be killed
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    _harness.prepare()
    if cfg["isolate"]:
        _state["pidns_fd"] = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        _linux.drop_bounding_set()  # the idle inits too; also reads cap_last_cap while /proc is the jail's
    gc.collect()
    gc.freeze()  # keep the collector off the zygote's objects: fewer copy-on-write faults per run
    os.set_inheritable(rfd, False)
    os.set_inheritable(wfd, False)
    write_frame(wfd, {"ready": True, "pid": os.getpid(), "uid": os.getuid()})
    while True:
        job = read_frame(rfd)
        if job is None:
            os._exit(0)
        write_frame(wfd, _run(job, cfg))


# ----------------------------------------------------------------------------- one run


def _kill_everything(cfg: dict, roots: list[int]) -> None:
    """SIGKILL every process of the run and reap them all."""
    if cfg["isolate"]:
        try:
            os.kill(-1, signal.SIGKILL)  # pid 1 of J: everything in J but us
        except ProcessLookupError:
            pass
    else:
        for _ in range(50):
            kids = _children_of(os.getpid())
            for pid in set(kids) | set(roots):
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            roots = []
            _reap(block=False)
            if not kids:
                break
            time.sleep(0.002)
    _reap(block=True)


def _children_of(ppid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                if int(stat[stat.rindex(b")") + 2 :].split()[1]) == ppid:
                    kids.append(int(entry))
            except (OSError, ValueError):
                pass
    return kids


def _reap(block: bool) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class _Capture:
    """Drains one pipe; keeps the head or the tail up to ``keep`` bytes; counts the rest."""

    def __init__(self, fd: int, keep: int, tail: bool):
        self.fd, self.keep, self.tail = fd, keep, tail
        self.chunks, self.kept, self.total = [], 0, 0

    def read(self) -> bool:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.feed(data)
        return True

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self.chunks.append(data)
        self.kept += len(data)
        if self.kept > 2 * self.keep:
            joined = b"".join(self.chunks)
            joined = joined[-self.keep :] if self.tail else joined[: self.keep]
            self.chunks, self.kept = [joined], len(joined)

    def value(self) -> bytes:
        joined = b"".join(self.chunks)
        return joined[-self.keep :] if self.tail else joined[: self.keep]


def _stdin_fd(job: dict) -> int | None:
    if job.get("stdin") is None:
        return None
    fd = os.memfd_create("stdin")
    data = job["stdin"].encode("utf-8", "surrogateescape")
    while data:
        data = data[os.write(fd, data) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _watch(deadline: float, pidfd: int, caps: dict, limits: dict, info_r: int):
    """Drain the run's pipes until it exits, its time is up or an output overflows.

    (timed_out, the name of the overflowing output or None, exited, when it said "ready" or None)."""
    names = dict(zip(limits, ("stdout", "stderr", "result records"), strict=True))
    poller = select.poll()
    for fd in (*caps, pidfd):
        poller.register(fd, select.POLLIN)
    overflow, t_ready, exited = None, None, False
    while not exited:
        left = deadline - time.monotonic()
        if left <= 0:
            return True, None, False, t_ready
        for fd, _ in poller.poll(min(left, 1.0) * 1000):
            if fd == pidfd:
                exited = True
            elif fd == info_r and t_ready is None:
                t_ready = time.monotonic()
                caps[fd].read()
            elif not caps[fd].read():
                poller.unregister(fd)
            elif fd in limits and caps[fd].total > limits[fd]:
                overflow = names[fd]
        if overflow:
            break
    return False, overflow, exited, t_ready


def _drain(caps: dict, limits: dict, blocking: bool) -> None:
    """Read what is left in the pipes (every writer is dead in isolated mode: to EOF) and close them."""
    for fd in caps:
        os.set_blocking(fd, blocking)
        while caps[fd].total <= limits.get(fd, 1 << 20) + (1 << 16):
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                break
            caps[fd].feed(data)
        os.close(fd)


def _fork_program(job: dict, cfg: dict, child_fds: tuple, parent_fds: tuple, workdir) -> int:
    """Fork H, which sets itself up and runs the program (never returns there); H's pid."""
    h = os.fork()
    if h == 0:
        err_w = child_fds[2]
        try:
            for fd in parent_fds:
                os.close(fd)
            _untrusted(job, cfg, *child_fds, workdir)
        except BaseException as exc:
            os.write(err_w, f"sandbox setup error: {exc!r}\n".encode())
        finally:
            os._exit(71)
    return h


def _run(job: dict, cfg: dict) -> dict:
    t0 = time.monotonic()
    (chan_r, chan_w), (out_r, out_w), (err_r, err_w), (info_r, info_w) = (os.pipe() for _ in range(4))
    stdin_fd = _stdin_fd(job)
    workdir = None
    if cfg["isolate"]:
        # A fresh pid namespace for this run: its pid 1 is a do-nothing process, so the program
        # (pid 2, parent outside the namespace) gets ordinary signal semantics.
        _linux.setns(_state["pidns_fd"], _linux.CLONE_NEWPID)
        _linux.unshare(_linux.CLONE_NEWPID)
        _linux.spawn_idle_init()
    else:
        import tempfile

        workdir = tempfile.mkdtemp(prefix="rlvr-sandbox-")
    t_init = time.monotonic()
    child_fds = (chan_w, out_w, err_w, info_w, stdin_fd)
    h = _fork_program(job, cfg, child_fds, (chan_r, out_r, err_r, info_r), workdir)
    t_fork = time.monotonic()
    pidfd = os.pidfd_open(h)
    for fd in child_fds:
        if fd is not None:
            os.close(fd)
    program = job["kind"] == "program"
    caps = {
        out_r: _Capture(out_r, job["max_output"] if program else job["tail"], tail=not program),
        err_r: _Capture(err_r, job["tail"], tail=True),
        chan_r: _Capture(chan_r, job["max_records"] + 1, tail=False),
        info_r: _Capture(info_r, 4096, tail=False),
    }
    limits = {  # in this order: stdout, stderr, result records (_watch names them so)
        out_r: job["max_output"] if program else job["output_limit"],
        err_r: job["output_limit"],
        chan_r: job["max_records"],
    }
    for fd in caps:
        os.set_blocking(fd, False)
    timed_out, overflow, exited, t_ready = _watch(t0 + job["timeout_s"], pidfd, caps, limits, info_r)
    duration = time.monotonic() - t0
    exit_status = os.waitpid(h, 0)[1] if exited else None
    _kill_everything(cfg, [h])
    os.close(pidfd)
    if workdir is not None:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    t_reaped = time.monotonic()
    _drain(caps, limits, cfg["isolate"])
    if exit_status is None:
        exit_desc = None
    elif os.WIFEXITED(exit_status):
        exit_desc = {"code": os.WEXITSTATUS(exit_status)}
    else:
        exit_desc = {"signal": os.WTERMSIG(exit_status)}
    return {
        "ready": caps[info_r].value() == b"ready",
        "exit": exit_desc,
        "timed_out": timed_out,
        "overflow": overflow,
        "duration": duration,
        "phases": [round((t - t0) * 1000, 2) for t in (t_init, t_fork, t_ready or t0, t0 + duration, t_reaped)],
        "stdout": caps[out_r].value().decode("utf-8", "replace"),
        "stdout_total": caps[out_r].total,
        "stderr": caps[err_r].value().decode("utf-8", "replace"),
        "records": caps[chan_r].value().decode("ascii", "replace") if not overflow else "",
    }


def _untrusted(job, cfg, chan_w, out_w, err_w, info_w, stdin_fd, workdir=None) -> None:
    """H: last set-up steps, then the program. Never returns."""
    L = _linux
    _linux.set_parent_death_signal(signal.SIGKILL)
    if cfg["isolate"]:
        # Still jail root here: a private mount namespace (owned by the jail's user namespace, so
        # the program can never unmount anything in it) with this run's /proc, /tmp and /dev/shm.
        L.unshare(L.CLONE_NEWNS)
        L.mount("proc", "/proc", "proc", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC)
        _run_tmpfs("/tmp", L.MS_NOSUID | L.MS_NODEV, f"size={job['tmp_mb']}m,nr_inodes=4096,mode=1777", cfg)
        _run_tmpfs("/dev/shm", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, "size=16m,nr_inodes=1024,mode=1777", cfg)
        workdir = "/tmp"
        with open("/proc/self/oom_score_adj", "w") as f:  # the run, never the zygote, is OOM's pick
            f.write("1000")
        # Then the sandbox uid (an unprivileged host uid when the host is root) and a user, net,
        # ipc and uts namespace of its own; finally no capabilities at all.
        if os.geteuid() == 0 and cfg["jail_has_sandbox_uid"]:
            os.setgroups([])
            os.setresgid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
            os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
            L.prctl(4, 1)  # PR_SET_DUMPABLE: the uid change cleared it; /proc/self/*_map need it
        uid, gid = os.geteuid(), os.getegid()
        L.unshare(L.CLONE_NEWUSER | L.CLONE_NEWNET | L.CLONE_NEWIPC | L.CLONE_NEWUTS)
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{SANDBOX_UID} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{SANDBOX_UID} {gid} 1")
        L.drop_all_capabilities()  # a new user namespace starts with a full bounding set
    os.chdir(workdir)
    os.setsid()
    mem = job["memory_mb"] << 20
    cpu = int(job["timeout_s"]) + 2
    for res, soft, hard in (
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_FSIZE, job["fsize_mb"] << 20, job["fsize_mb"] << 20),
        (resource.RLIMIT_NOFILE, 256, 256),
        (resource.RLIMIT_NPROC, job["nproc"], job["nproc"]),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        resource.setrlimit(res, (soft, hard))
    if stdin_fd is None:
        stdin_fd = os.open("/dev/null", os.O_RDONLY)
    # Move every descriptor out of the way first, so that no dup2 below clobbers another one.
    high = [
        fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 200 + i) for i, fd in enumerate((stdin_fd, out_w, err_w, chan_w, info_w))
    ]
    os.dup2(high[0], 0)
    os.dup2(high[1], 1)
    os.dup2(high[2], 2)
    os.dup2(high[3], 3, inheritable=False)
    os.write(high[4], b"ready")
    os.closerange(4, 1 << 16)
    os.environ.clear()
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=workdir, TMPDIR=workdir, LANG="C.UTF-8")
    sys.stdin = sys.__stdin__ = open(0, closefd=False, encoding="utf-8", errors="surrogateescape")
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False, encoding="utf-8", errors="backslashreplace")
    sys.stderr = sys.__stderr__ = open(2, "w", closefd=False, encoding="utf-8", errors="backslashreplace", buffering=1)
    sys.argv = ["solution.py"]
    sys.path[:] = [p for p in sys.path if p not in cfg["hide_sys_path"]]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if job["kind"] == "program":
        _harness.run_program_child(job)
    else:
        _harness.run_tests_child(job, 3)


if __name__ == "__main__":
    main()
