"""sandbox: correctness on real rows, and one adversarial test per property of the threat model.

Safety: no real network traffic (a loopback listener on the host only), fork bombs are bounded,
memory is only ever pressed through the sandbox.
"""

import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

import sandbox

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ADD_TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\nassert add(10, 20) == 30\n"


def run(code, tests=ADD_TESTS, **kw):
    return sandbox.run_tests(textwrap.dedent(code), textwrap.dedent(tests), **kw)


def host_processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


# ----------------------------------------------------------------------------- correctness


def test_correct_solution_passes():
    v = run("def add(a, b):\n    return a + b\n")
    assert v.status == "pass", v
    assert (v.tests_passed, v.tests_total) == (3, 3)


def test_wrong_solution_fails_and_counts_passed_tests():
    v = run("def add(a, b):\n    return a + b if a != 10 else 0\n")
    assert v.status == "fail"
    assert (v.tests_passed, v.tests_total) == (2, 3)


def test_syntax_error_fails():
    v = run("def add(a, b)\n    return a + b\n")
    assert v.status == "fail" and "SyntaxError" in v.reason


def test_non_literal_asserts_loops_and_helpers():
    code = "def sq(xs):\n    return [x * x for x in xs]\n"
    tests = """
    import math
    def ref(xs):
        return [x ** 2 for x in xs]
    for n in range(4):
        assert sq(list(range(n))) == ref(list(range(n)))
    assert math.isclose(sum(sq([0.5])), 0.25)
    assert abs(sq([1.5])[0] - 2.25) < 1e-9
    assert sq([]) == [] and not sq([])
    """
    assert run(code, tests).status == "pass"
    assert run("def sq(xs):\n    return [x for x in xs]\n", tests).status == "fail"


def test_float_int_equality_follows_python():
    assert run("def f():\n    return 3.0\n", "assert f() == 3\nassert f() != 4\nassert f() is not None").passed


def test_program_shadowing_a_builtin_name_is_called():
    assert run("def sum(a, b):\n    return a - b\n", "assert sum(5, 3) == 2").passed


def test_run_program_stdin_stdout():
    v = sandbox.run_program("import sys\nfor line in sys.stdin:\n    print(int(line) * 2)\n", "1\n2\n")
    assert v.status == "pass" and v.stdout == "2\n4\n"
    v = sandbox.run_program("raise SystemExit(3)", "")
    assert v.status == "fail" and v.exit_code == 3


def test_humaneval_rows():
    path = DATA / "HumanEval.jsonl.gz"
    if not path.exists():
        pytest.skip("no HumanEval data")
    from verifiers.code import humaneval_tests

    rows = [json.loads(line) for line in gzip.open(path, "rt")][:12]
    good = sandbox.run_batch(
        [
            {"code": r["prompt"] + r["canonical_solution"], "tests": humaneval_tests(r["test"], r["entry_point"])}
            for r in rows
        ]
    )
    assert [v.status for v in good] == ["pass"] * len(rows), [v.reason for v in good if not v.passed]
    bad = sandbox.run_batch(
        [
            {"code": r["prompt"] + "    return None\n", "tests": humaneval_tests(r["test"], r["entry_point"])}
            for r in rows
        ]
    )
    assert all(v.status == "fail" for v in bad)


def test_mbpp_rows():
    path = DATA / "mbpp.jsonl"
    if not path.exists():
        pytest.skip("no MBPP data")
    rows = [json.loads(line) for line in open(path)]
    rows = [r for r in rows if 11 <= r["task_id"] <= 510][:12]
    vs = sandbox.run_batch(
        [{"code": r["code"], "tests": r["test_setup_code"] + "\n" + "\n".join(r["test_list"])} for r in rows]
    )
    assert all(v.passed for v in vs), [v.reason for v in vs if not v.passed]


# ----------------------------------------------------------------------------- resources


def test_timeout_kills_busy_loop():
    t = time.monotonic()
    v = run("def add(a, b):\n    while True:\n        pass\n", timeout_s=1.0)
    assert v.status == "timeout"
    assert time.monotonic() - t < 4


def test_memory_limit():
    v = run("def add(a, b):\n    x = bytearray(1 << 30)\n    return a + b\n", memory_mb=256)
    assert v.status == "fail" and "MemoryError" in v.reason


def test_memory_limit_across_processes():
    """Eight children of 200 MB each under a 512 MB limit: the memory cgroup (root) stops them."""
    if os.geteuid() != 0:
        pytest.skip("the per-jail memory cgroup needs root")
    code = """
    import os
    def add(a, b):
        pids = []
        for _ in range(8):
            pid = os.fork()
            if pid == 0:
                x = bytearray(200 << 20)
                for i in range(0, len(x), 4096):
                    x[i] = 1
                os._exit(0)
            pids.append(pid)
        return a + b if all(os.waitpid(p, 0)[1] == 0 for p in pids) else None
    """
    assert run(code, "assert add(2, 3) == 5", memory_mb=512).status == "fail"
    assert run("def add(a, b):\n    return a + b\n").passed


def test_fork_bomb_is_bounded_and_reaped():
    marker = f"forkbomb_{uuid.uuid4().hex[:8]}"
    code = f"""
    import os, time
    def add(a, b):
        for _ in range(300):
            if os.fork() == 0:
                time.sleep(60)  # {marker}
                os._exit(0)
        return a + b
    """
    code = code.replace("time.sleep(60)", f"os.execv('/usr/bin/sleep', ['sleep', '60', '{marker}'])")
    v = run(code)
    assert v.status == "fail" and "Resource temporarily unavailable" in v.reason
    assert host_processes_with(marker) == []


def test_output_flood_is_capped():
    v = run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", timeout_s=5)
    assert v.status == "fail" and "stdout" in v.reason
    assert len(v.stdout) <= 8192


def test_orphan_daemons_do_not_outlive_the_run():
    marker = f"orphan_{uuid.uuid4().hex[:8]}"
    code = f"""
    import subprocess, sys
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "{marker}"],
                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def add(a, b):
        return a + b
    """
    v = run(code)
    assert v.status == "pass"
    assert host_processes_with(marker) == []


def test_kill_parent_leaves_runner_alive():
    v = run(
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)\n"
        "def add(a, b):\n    return a + b\n"
    )
    assert v.status == "fail"
    assert run("def add(a, b):\n    return a + b\n").passed


# ----------------------------------------------------------------------------- isolation


def test_host_filesystem_hidden(tmp_path):
    canary = Path("/tmp") / f"sandbox_canary_{uuid.uuid4().hex[:8]}"
    canary.mkdir()
    repo = Path(sandbox.__file__).resolve().parents[1]
    try:
        (canary / "secret.txt").write_text("host secret")
        code = f"""
        import os
        def add(a, b):
            seen = [p for p in ("{canary}", "/root/.bashrc", "/home", "{repo}", "/dev/shm/x", "{tmp_path}",
                                "/etc/shadow") if os.path.exists(p)]
            try:
                seen.append(open("/proc/1/environ").read())  # pid 1 of the run: ours, not the host's
            except OSError:
                pass
            return a + b if not seen else seen
        """
        v = run(code)
        assert v.status == "pass", v.reason
    finally:
        (canary / "secret.txt").unlink()
        canary.rmdir()


def test_only_the_path_to_the_installation_is_visible_above_it():
    """The directories above the Python installation (a venv in /work, a home...) show nothing else."""
    code = """
    import json, os, sys
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    seen = {}
    for prefix in prefixes:
        parts = prefix.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/" + "/".join(parts[:i])
            seen[d] = sorted(os.listdir(d))
    print(json.dumps({"prefixes": sorted(prefixes), "seen": seen}))
    """
    v = sandbox.run_program(textwrap.dedent(code))
    assert v.status == "pass", v.stderr
    out = json.loads(v.stdout)
    prefixes = out["prefixes"]
    for d, names in out["seen"].items():
        if any(d.startswith(p + "/") for p in prefixes):
            continue  # inside an installation, which is visible in full
        allowed = {p[len(d) + 1 :].split("/")[0] for p in prefixes if p.startswith(d + "/")}
        assert set(names) <= allowed, (d, names)


def test_etc_is_synthetic():
    """/etc holds no host account, host name or time zone: passwd and group list only the jail's users."""
    code = """
    import grp, json, os, pwd, time
    print(json.dumps({
        "passwd": [line.split(":")[0] for line in open("/etc/passwd").read().splitlines()],
        "group": [line.split(":")[0] for line in open("/etc/group").read().splitlines()],
        "pwd": sorted(p.pw_name for p in pwd.getpwall()), "grp": sorted(g.gr_name for g in grp.getgrall()),
        "etc": sorted(os.listdir("/etc")),
        "text": {n: open("/etc/" + n).read() for n in ("hosts", "hostname", "nsswitch.conf")},
        "gmtoff": time.localtime().tm_gmtoff,
    }))
    """
    v = sandbox.run_program(textwrap.dedent(code))
    assert v.status == "pass", v.stderr
    seen = json.loads(v.stdout)
    assert seen["passwd"] == ["root", "sandbox", "nobody"] and seen["pwd"] == ["nobody", "root", "sandbox"]
    assert seen["group"] == ["root", "sandbox", "nogroup"] and seen["grp"] == ["nogroup", "root", "sandbox"]
    assert set(seen["etc"]) <= {
        "passwd",
        "group",
        "hosts",
        "hostname",
        "nsswitch.conf",
        "ld.so.cache",
        "alternatives",
    }, seen["etc"]
    host_name = socket.gethostname()
    if host_name not in ("localhost", "sandbox"):
        assert not any(host_name in text for text in seen["text"].values())
    assert seen["gmtoff"] == 0  # no host /etc/localtime: UTC


@pytest.mark.parametrize("where", ["tmp", "opt", "home", "symlinked"])
def test_interpreter_reachable_wherever_python_is_installed(where):
    """A program can start the interpreter it runs under (``sys.executable``) with the installation in
    a venv under /tmp (hidden by the run's own /tmp unless made again there), /opt, a home directory or
    reached through a symlink; the venv stays read-only and nothing next to it shows."""
    parent = {"tmp": "/tmp", "opt": "/opt", "home": str(Path.home()), "symlinked": "/tmp"}[where]
    if not os.access(parent, os.W_OK):
        pytest.skip(f"{parent} is not writable here")
    base = Path(tempfile.mkdtemp(prefix="rlvr-sandbox-venv-", dir=parent))
    try:
        venv = base / "venv"
        if where == "symlinked":  # base/venv -> base/real/venv, run as base/venv/bin/python
            (base / "real").mkdir()
            venv.symlink_to(base / "real" / "venv")
            venv = base / "real" / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        site = next(venv.glob("lib/python*/site-packages"))
        (site / "rlvr_probe.py").write_text("X = 7\n")  # a package of the venv itself, not of its base
        venv = base / "venv"
        (base / "secret.txt").write_text("next to the venv")
        program = textwrap.dedent(f"""
        import os, subprocess, sys
        import rlvr_probe
        probe = "import rlvr_probe, sys; print(rlvr_probe.X * 6, sys.prefix == {str(venv)!r})"
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout
        try:
            open("{venv}/pwned", "w")
            wrote = True
        except OSError:
            wrote = False
        print(out.strip(), sys.executable.startswith("{venv}/"), os.path.exists("{base}/secret.txt"), wrote)
        """)
        driver = (
            f"import sys; sys.path.insert(0, {str(Path(sandbox.__file__).parents[1])!r}); import sandbox; "
            f"v = sandbox.run_program({program!r}); print(v.status, v.stdout.strip(), v.stderr[-300:])"
        )
        out = subprocess.run(
            [str(venv / "bin" / "python"), "-c", driver], capture_output=True, text=True, timeout=120, cwd="/"
        )
        assert out.stdout.strip() == "pass 42 True True False False", out.stdout + out.stderr
        assert not (venv / "pwned").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_host_filesystem_read_only():
    code = """
    def add(a, b):
        for path in ("/usr/rlvr_pwned", "/etc/rlvr_pwned", "/rlvr_pwned"):
            try:
                open(path, "w").write("x")
                return "wrote " + path
            except OSError:
                pass
        return a + b
    """
    assert run(code).status == "pass"
    assert not any(os.path.exists(p) for p in ("/usr/rlvr_pwned", "/etc/rlvr_pwned", "/rlvr_pwned"))


def test_workdir_is_private_writable_and_removed():
    code = """
    import os
    STALE = os.path.exists("left_behind.txt")
    open("left_behind.txt", "w").write("x")
    def add(a, b):
        return a + b if not STALE else 0
    """
    assert run(code).passed
    assert run(code).passed  # the previous run's file is gone


def test_network_blocked():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    hits = []

    def accept():
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                hits.append(srv.accept())
            except OSError:
                pass

    t = threading.Thread(target=accept)
    t.start()
    code = f"""
    import socket
    def add(a, b):
        s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
        return a + b
    """
    try:
        v = run(code)
    finally:
        t.join()
        srv.close()
    assert v.status == "fail" and "unreachable" in v.reason.lower()
    assert hits == []


def test_environment_is_empty(monkeypatch):
    monkeypatch.setenv("RLVR_TEST_SECRET", "canary-91c2")
    code = """
    import os
    def add(a, b):
        assert set(os.environ) <= {"PATH", "HOME", "TMPDIR", "LANG"}, dict(os.environ)
        return a + b
    """
    assert run(code).passed


def test_not_root_and_no_capabilities():
    code = """
    def add(a, b):
        import os
        caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith(("CapEff", "CapPrm", "CapBnd"))]
        assert os.getuid() != 0 and os.geteuid() != 0 and set(caps) == {"0000000000000000"}, (os.getuid(), caps)
        return a + b
    """
    assert run(code).passed


def test_refuses_to_run_without_namespaces():
    """Where user namespaces are unavailable, it fails with a message that names the fix."""
    script = (
        "import sandbox\ntry:\n    sandbox.run_tests('x = 1', 'assert x == 1')\n"
        "except sandbox.SandboxUnavailable as e:\n    print('UNAVAILABLE', e)\n"
    )
    # A user namespace whose limit on nested user namespaces is 0 stands in for such a host.
    cmd = [
        "unshare",
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        f'echo 0 > /proc/sys/user/max_user_namespaces && exec {sys.executable} -c "$0"',
        script,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    if "UNAVAILABLE" not in out.stdout and "Permission denied" in out.stderr:
        pytest.skip("cannot simulate a host without user namespaces here")
    assert "UNAVAILABLE" in out.stdout, out.stdout + out.stderr
    assert "isolation='none'" in out.stdout and "unprivileged_userns_clone" in out.stdout


# ----------------------------------------------------------------------------- forged verdicts


def test_forge_sys_exit_zero_before_tests():
    assert run("import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n").status == "fail"


def test_forge_os_exit_zero_during_tests():
    assert run("import os\ndef add(a, b):\n    os._exit(0)\n").status == "fail"


def test_forge_systemexit_from_function():
    assert run("def add(a, b):\n    raise SystemExit(0)\n").status == "fail"


def test_forge_atexit_hook():
    code = """
    import atexit, os, sys
    atexit.register(lambda: (print("3 passed"), os._exit(0)))
    def add(a, b):
        sys.exit(0)
    """
    assert run(code).status == "fail"


def test_forge_printed_pass_lines():
    code = "print('All tests passed!')\nprint('OK')\ndef add(a, b):\n    return 0\n"
    assert run(code).status == "fail"


def test_forge_redefined_assertion_error():
    code = """
    import builtins
    class AssertionError(Exception):
        pass
    builtins.AssertionError = AssertionError
    def add(a, b):
        return 0
    """
    assert run(code).status == "fail"
    # the same against asserts judged inside the sandbox (both sides computed)
    assert run(code, "assert add(2, 3) == add(3, 2) + 1").status == "fail"


def test_forge_always_equal_object():
    code = """
    class Eq:
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        def __lt__(self, other): return True
        def __sub__(self, other): return 0
        __hash__ = object.__hash__
    def add(a, b):
        return Eq()
    """
    assert run(code).status == "fail"
    assert run(code, "assert add(2, 3) == add(1, 1) + 3").status == "fail"
    assert run(code, "assert abs(add(2, 3) - 5) < 1e-9").status == "fail"


def test_forge_int_subclass_with_lying_eq():
    code = """
    class Liar(int):
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        __hash__ = int.__hash__
    def add(a, b):
        return Liar(0)
    """
    assert run(code).status == "fail"
    # an honest int subclass is judged by the int it holds
    assert run("class I(int):\n    pass\ndef add(a, b):\n    return I(a + b)\n").passed


def test_forge_monkeypatched_builtins():
    code = """
    import builtins, math
    builtins.len = lambda x: 3
    builtins.abs = lambda x: 0
    builtins.isinstance = lambda *a: True
    math.isclose = lambda *a, **k: True
    def f():
        return []
    """
    tests = """
    import math
    assert len(f()) == 3
    assert abs(len(f()) - 3) < 0.5
    assert math.isclose(len(f()), 3.0)
    assert isinstance(f(), dict)
    """
    v = run(code, tests)
    assert v.status == "fail" and v.tests_passed == 0


def test_forge_reexec_under_python_O():
    code = """
    import os, sys
    if sys.flags.optimize == 0:
        os.execv(sys.executable, [sys.executable, "-O", "-c", "assert False; print('passed')"])
    def add(a, b):
        return 0
    """
    assert run(code).status == "fail"


def test_forge_test_file_tampering_and_reading():
    code = """
    import os, sys
    found = []
    for root in (os.getcwd(), "/tmp", os.path.dirname(os.path.abspath(sys.argv[0]))):
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if os.path.isfile(path) and "assert" in open(path, errors="ignore").read():
                found.append(path)
                open(path, "w").write("pass\\n")
    def add(a, b):
        return 0 if not found else found
    """
    assert run(code).status == "fail"


def test_forge_frame_inspection():
    code = """
    import inspect, sys
    def add(a, b):
        frame = sys._getframe(1)
        consts = [c for f in (frame, frame.f_back) if f for c in f.f_code.co_consts if type(c) is int]
        for line in inspect.stack()[1].code_context or []:
            if "==" in line:
                return int(line.split("==")[1].split(",")[0])
        return consts[-1] if consts else None
    """
    assert run(code).status == "fail"


def test_forge_writing_fake_records():
    code = """
    import os
    for fd in range(3, 20):
        try:
            os.write(fd, b'{"ev":"begin","u":0}\\n{"ev":"end","u":0,"ok":true}\\n{"ev":"done"}\\n')
        except OSError:
            pass
    os._exit(0)
    """
    assert run(code).status == "fail"


def test_explicit_opt_out_still_judges_verdicts():
    """isolation='none' is the documented opt-out: no namespaces, but the same unforgeable verdicts."""
    pool = sandbox.Pool(1, isolation="none")
    try:
        good, hack = sandbox.run_batch(
            [
                {"code": "def add(a, b):\n    return a + b\n", "tests": ADD_TESTS},
                {"code": "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n", "tests": ADD_TESTS},
            ],
            pool=pool,
        )
    finally:
        pool.close()
    assert good.status == "pass" and hack.status == "fail"


def test_objects_built_inside_an_assert_are_judged_by_what_they_return():
    """LeetCode style: ``Solution().f(x) == y`` builds the program's object inline; the value its
    method returns is what gets compared (outside), so the object itself still cannot forge a pass."""
    honest = """
    class Solution:
        def add(self, a, b):
            return a + b
        def pair(self, a, b):
            return [a, b]
    """
    tests = """
    assert Solution().add(2, 3) == 5
    assert Solution().pair(1, 2)[0] == 1
    assert Solution().add(2, 3) == Solution().add(3, 2)
    """
    v = run(honest, tests)
    assert v.passed and v.tests_passed == 3, v.reason
    forged = """
    class Eq:
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        __hash__ = object.__hash__
    class Liar(int):
        def __eq__(self, other): return True
        __hash__ = int.__hash__
    class Solution:
        def __eq__(self, other): return True
        __hash__ = object.__hash__
        def add(self, a, b):
            return Eq()
        def pair(self, a, b):
            return Liar(0)
    """
    assert run(forged, tests).tests_passed == 0
    assert run(forged, "assert Solution() == 5").status == "fail"
    assert run(forged, "assert Solution().pair(1, 2) == 1").status == "fail"


def test_receiver_with_a_plain_form_is_made_plain():
    """A ``list`` subclass returned by the program is read as the list it holds: its own ``count`` is not run."""
    code = """
    class Lying(list):
        def count(self, x): return 2
    def f(honest):
        return [1, 1] if honest else Lying([])
    """
    assert run(code, "assert f(True).count(1) == 2").passed
    assert run(code, "assert f(False).count(1) == 2").status == "fail"


def test_run_calls_ships_values_out_and_arguments_in_as_given():
    code = """
    class Eq:
        def __eq__(self, other): return True
    class Liar(int):
        def __eq__(self, other): return True
        __hash__ = int.__hash__
    def kinds(*args):
        return [type(a).__name__ for a in args] + [sorted(type(k).__name__ for k in args[2])]
    def eq():
        return Eq()
    def liar():
        return Liar(5)
    """
    code = textwrap.dedent(code)
    v = sandbox.run_calls(code, "kinds", [[None, (1, 2), {1: "a"}, "None"]])
    assert v.passed and v.calls[0].value == ["NoneType", "tuple", "dict", "str", ["int"]]
    v = sandbox.run_calls(code, "eq", [[]])
    assert v.status == "fail" and not v.calls[0].returned and "not plain data" in v.calls[0].error
    v = sandbox.run_calls(code, "liar", [[]])
    assert type(v.calls[0].value) is int and v.calls[0].value == 5 and v.calls[0].value != 6
    v = sandbox.run_calls(code, "missing", [[1], [2]])
    assert v.status == "fail" and all("no function 'missing'" in c.error for c in v.calls)
    v = sandbox.run_calls("x = 1", "add", [[1, 2]], prelude="from operator import *")
    assert "no function 'add'" in v.calls[0].error  # the prelude's names are not the program's
    assert (
        sandbox.run_calls("add = lambda a, b: a - b", "add", [[1, 2]], prelude="from operator import *").calls[0].value
        == -1
    )
    solution = (
        "class Solution:\n    def f(self, x):\n        self.n = getattr(self, 'n', 0) + 1\n        return x * self.n\n"
    )
    assert [c.value for c in sandbox.run_calls(solution, "f", [[2], [3]]).calls] == [2, 3]  # fresh instance each
    with pytest.raises(ValueError, match="call 1"):
        sandbox.run_calls(code, "kinds", [[1], 2])
