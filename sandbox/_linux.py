"""Thin ctypes wrappers for the Linux calls the jail needs (Python 3.11 has no os.unshare/mount).

Only the standard library; imported both by the host and, before it isolates itself, by the jail.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
ALL_NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
AT_FDCWD = -100
AT_RECURSIVE = 0x8000

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


def _check(ret: int, what: str) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _b(s):
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source, target, fstype, flags: int = 0, data=None) -> None:
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
        f"mount {fstype or source} on {target}",
    )


def umount2(target, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root, put_old) -> None:
    _check(_libc.pivot_root(_b(new_root), _b(put_old)), "pivot_root")


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def make_readonly(path) -> None:
    """Read-only, nosuid, nodev on the mount at ``path`` and every mount below it."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    ret = _libc.mount_setattr(
        ctypes.c_int(AT_FDCWD),
        _b(path),
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if ret == -1:  # old kernel: remount the top mount only
        st = os.statvfs(path)
        keep = st.f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC)
        mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)


def bind(source, target, *, readonly: bool = True) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    if readonly:
        make_readonly(target)


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    _check(
        _libc.prctl(
            ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0)
        ),
        f"prctl({option})",
    )


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_last_cap = None


def drop_bounding_set() -> None:
    """Empty the capability bounding set (nothing can be gained by exec)."""
    global _last_cap
    if _last_cap is None:
        try:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                _last_cap = int(f.read())
        except (OSError, ValueError):
            _last_cap = 40
    for cap in range(_last_cap + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            _check(-1, "prctl(PR_CAPBSET_DROP)")


def drop_all_capabilities(bounding: bool = True) -> None:
    """Empty bounding, ambient, effective, permitted and inheritable sets; set no_new_privs."""
    if bounding:
        drop_bounding_set()
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def set_parent_death_signal(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


_pause_stack = None


def spawn_idle_init() -> int:
    """Start a child that only sleeps forever (the pid 1 of a run's pid namespace); its pid.

    ``clone(CLONE_VM)`` running libc's ``pause`` on a small private stack: no page tables are copied
    (a fork of the zygote costs ~1 ms here) and no Python runs in the child. Every signal is blocked
    in the child, so no handler can ever run there; only SIGKILL ends it.
    """
    global _pause_stack
    import signal

    if _pause_stack is None:
        _pause_stack = ctypes.create_string_buffer(1 << 16)
    top = ctypes.c_void_p(ctypes.addressof(_pause_stack) + (1 << 16) - 64)
    fn = ctypes.cast(_libc.pause, ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p))
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.valid_signals()))
    try:
        pid = _libc.clone(fn, top, ctypes.c_int(0x100 | signal.SIGCHLD), None)  # CLONE_VM
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return _check(pid, "clone")
