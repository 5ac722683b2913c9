"""The in-sandbox half of a run: executes the program, then the rewritten tests, and reports.

Runs in the forked, isolated process together with the untrusted program, so nothing here is a
security boundary on its own: the report it writes is judged by the host (``_plan.judge``), which
decides ``pass`` only from values it compares itself and from a complete, in-order report. What this
module does is take away the cheap tricks: asserts are compiled with ``optimize=0`` (``-O`` cannot
remove them), every exception (``SystemExit`` included) fails the test that raised it, the report is
written on a close-on-exec descriptor with functions captured before the program ran, the process
ends with ``os._exit`` (no ``atexit`` hooks), and the tests run with pristine built-ins and restored
standard-library modules, whatever the program patched.
"""

from __future__ import annotations

import builtins
import json
import operator
import sys
import traceback

from sandbox import _values

# Modules whose attributes are restored before the tests run (a program may monkeypatch them).
_RESTORE = (
    "builtins",
    "math",
    "cmath",
    "operator",
    "functools",
    "itertools",
    "collections",
    "re",
    "string",
    "heapq",
    "bisect",
    "statistics",
    "json",
    "copy",
    "random",
    "types",
    "inspect",
)

_state: dict = {}


def prepare() -> None:
    """Called once in the zygote, before any untrusted code exists in this process."""
    import importlib
    import os

    mods = {}
    for name in _RESTORE:
        try:
            mods[name] = importlib.import_module(name)
        except ImportError:
            pass
    _state.update(
        builtins=dict(builtins.__dict__),
        modules=mods,
        snapshots={name: (list(m.__dict__), list(m.__dict__.values())) for name, m in mods.items()},
        write=os.write,
        exit=os._exit,
        dumps=json.dumps,
        compile=compile,
        exec=exec,
        BaseException=BaseException,
        type=type,
        str=str,
        len=len,
        bool=bool,
        format_exc=traceback.format_exception_only,
        flush_std=_flush_std,
    )


def _flush_std():
    for f in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            f.flush()
        except BaseException:
            pass


def _describe(exc) -> str:
    try:
        return "".join(_state["format_exc"](type(exc), exc)).strip()[-400:]
    except BaseException:
        return "exception"


def _restore_modules() -> None:
    mods, snaps, is_ = _state["modules"], _state["snapshots"], operator.is_
    for name, m in mods.items():
        d = m.__dict__
        keys, values = snaps[name]
        if not all(map(is_, map(d.get, keys), values)):  # something was patched: put it back
            for k, v in zip(keys, values, strict=True):
                if d.get(k, d) is not v:
                    d[k] = v
        if sys.modules.get(name) is not m:
            sys.modules[name] = m


class _Reporter:
    """Buffered writer of JSON lines to the result channel (flushed at each unit's end)."""

    def __init__(self, fd: int):
        self.fd, self.buf, self.size = fd, [], 0
        self.write, self.dumps = _state["write"], _state["dumps"]

    def emit(self, **ev) -> None:
        line = self.dumps(ev, separators=(",", ":"), allow_nan=True) + "\n"
        self.buf.append(line)
        self.size += len(line)
        if self.size > 1 << 16:
            self.flush()

    def flush(self) -> None:
        data = "".join(self.buf).encode("ascii", "backslashreplace")
        self.buf, self.size = [], 0
        while data:
            n = self.write(self.fd, data)
            data = data[n:]


def _helpers(job: dict, namespace: dict, preset: dict, rep: _Reporter) -> dict:
    """The ``__rlvr_*__`` functions the rewritten tests call (see ``_plan``)."""
    st = _state
    plain_cls = (_values.Unsupported,)
    encode, decode = _values.encode, _values.decode

    def value(site, v):
        try:
            rep.emit(ev="val", s=site, v=encode(v))
        except plain_cls as exc:
            rep.emit(ev="val", s=site, err=str(exc))
        except RecursionError:
            rep.emit(ev="val", s=site, err="value nested too deeply")

    def plain(v):
        if st["type"](v) in _values._OPAQUE:
            return v
        return decode(encode(v))

    def recv(v):
        try:
            return plain(v)
        except plain_cls:  # an object of the program's own class: what its methods return is judged
            return v

    def eq(a, b):
        return decode(encode(a)) == decode(encode(b))

    def truth(v):
        return st["bool"](decode(encode(v)))

    def call(i):
        # A fresh instance per call when the function is a method of ``Solution`` (LeetCode style).
        # Only the program's own names: the prelude's ``from operator import *`` has an ``add`` too.
        name, mine = job["call"], {k: v for k, v in namespace.items() if preset.get(k, preset) is not v}
        solution = mine.get("Solution")
        if st["type"](solution) is type and hasattr(solution, name):
            target = getattr(solution(), name)
        elif name in mine:
            target = mine[name]
        else:
            raise NameError(f"the program defines no function {name!r}")
        return target(*decode(job["args"][i]))

    return {
        "__rlvr_value__": value,
        "__rlvr_plain__": plain,
        "__rlvr_eq__": eq,
        "__rlvr_truth__": truth,
        "__rlvr_recv__": recv,
        "__rlvr_call__": call,
    }


def run_tests_child(job: dict, chan_fd: int) -> None:
    """Run the program then the test units; never returns."""
    st = _state
    rep = _Reporter(chan_fd)
    BaseExc, compile_, exec_ = st["BaseException"], st["compile"], st["exec"]
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    preset = {}
    try:
        if job.get("prelude"):
            exec_(compile_(job["prelude"], "<prelude>", "exec", dont_inherit=True, optimize=0), namespace)
        preset = dict(namespace)
        code_obj = compile_(job["code"], "<solution>", "exec", dont_inherit=True, optimize=0)
        exec_(code_obj, namespace)
    except BaseExc as exc:  # SyntaxError, SystemExit, anything: the tests cannot run
        st["flush_std"]()
        rep.emit(ev="code_error", err=_describe(exc))
        rep.flush()
        st["exit"](0)
    st["flush_std"]()
    _restore_modules()

    # The tests see the program's names, but pristine built-ins and modules.
    tests_ns = dict(namespace)
    tests_ns["__builtins__"] = dict(st["builtins"])
    for name in job.get("trusted_names", ()):
        tests_ns.pop(name, None)
    for name in job.get("trusted_modules", ()):
        if name in st["modules"]:
            tests_ns[name] = st["modules"][name]
    tests_ns.update(_helpers(job, namespace, preset, rep))
    for i, (kind, src) in enumerate(job["units"]):
        rep.emit(ev="begin", u=i)
        try:
            exec_(compile_(src, f"<test {i + 1}>", "exec", dont_inherit=True, optimize=0), tests_ns)
            rep.emit(ev="end", u=i, ok=True)
        except BaseExc as exc:
            rep.emit(ev="end", u=i, ok=False, err=_describe(exc))
            if kind == "setup":
                break
        st["flush_std"]()
        rep.flush()
    else:
        rep.emit(ev="done")
    rep.flush()
    st["exit"](0)


def run_program_child(job: dict) -> None:
    """Run the program as ``__main__`` on its stdin; the exit status is the report. Never returns."""
    st = _state
    status = 0
    try:
        code_obj = st["compile"](job["code"], "<solution>", "exec", dont_inherit=True, optimize=0)
        st["exec"](code_obj, {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as exc:
        code = exc.code
        status = 0 if code is None else code if st["type"](code) is int else 1
        if st["type"](code) is not int and code is not None:
            try:
                sys.stderr.write(st["str"](code) + "\n")
            except BaseException:
                pass
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
        status = 1
    st["flush_std"]()
    st["exit"](status & 0xFF)
