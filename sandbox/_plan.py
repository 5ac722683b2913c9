"""Host side of ``run_tests``: rewrite the tests before they enter the sandbox, judge what comes out.

Each top-level statement of the tests is a *unit*; units that contain an ``assert`` are tests, the
others (imports, helper defs, assignments) are setup. Every ``assert`` is rewritten:

* ``assert E <op> L`` where ``L`` is a literal the host can evaluate (``== 5``, ``is True``,
  ``!= [1, 2]``, ``< 3.5``), ``assert E``, ``assert not E``, ``assert abs(E - L) < T`` and
  ``assert math.isclose(E, L, ...)`` become ``__rlvr_value__(site, E)``: the sandbox computes ``E``,
  ships it out as plain data (``_values``), and *this* process does the comparison. The expected
  value never enters the sandbox, so frame inspection, reading the tests, always-equal objects,
  lying ``int`` subclasses and patched builtins have nothing to work with.
* any other assert is checked inside the sandbox, hardened: ``==``/``!=`` compare plain-data copies
  (``__rlvr_eq__``), the asserted value must be plain data (``__rlvr_truth__``), and values returned
  by the program's functions are turned into plain data before an operator or a built-in sees them
  (``__rlvr_plain__``).
* the object an attribute is read from (``f().count``, ``Solution().two_sum``) is made plain data
  when it has a plain form (``__rlvr_recv__``: a lying ``list`` subclass loses its methods) and kept
  as it is otherwise: an object of the program's own class only runs the program's code, and what
  that code returns is judged like any other value.

``calls`` plans the function-call form (``fn(*args)`` per case, args shipped in as data): each call's
return value comes back as plain data for the caller to compare (``Report.values``).
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import math
from dataclasses import dataclass, field

from sandbox import _values

_BUILTIN_NAMES = frozenset(dir(builtins))
# Built-ins whose arguments are looked at as objects, not as values: no plain-data conversion.
_IDENTITY_BUILTINS = frozenset({"isinstance", "issubclass", "type", "callable", "hasattr", "getattr", "id"})
_CMP = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclass
class Site:
    """One assert judged in this process: ``check(value)`` -> bool."""

    kind: str  # "cmp" | "truth" | "not" | "absdiff" | "isclose" | "value" (returned to the caller)
    op: str = ""
    expected: object = None
    tol: object = None
    kwargs: dict = field(default_factory=dict)
    straight: bool = True  # runs exactly once when its unit runs
    unit: int = 0


@dataclass
class Plan:
    units: list  # [("setup" | "test", source)]
    sites: list  # [Site]
    trusted_names: list  # builtin names the tests call as built-ins
    trusted_modules: list  # module names the tests call functions of
    call: str | None = None  # the function-call form: the name called ...
    args: list = field(default_factory=list)  # ... and, per call, its arguments as ``_values.encode`` data

    @property
    def n_tests(self) -> int:
        return sum(1 for kind, _ in self.units if kind == "test")


def literal(node: ast.AST):
    """The value of a literal expression, or raise ValueError. Also float('inf'), set(), ..."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        name, args = node.func.id, node.args
        if name == "float" and len(args) == 1 and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
            return float(args[0].value)
        if name in ("set", "frozenset", "tuple", "list", "dict") and len(args) <= 1:
            ctor = {"set": set, "frozenset": frozenset, "tuple": tuple, "list": list, "dict": dict}[name]
            return ctor(literal(args[0])) if args else ctor()
        raise ValueError("not a literal")
    if isinstance(node, ast.Set) or isinstance(node, ast.List) or isinstance(node, ast.Tuple):
        items = [literal(e) for e in node.elts]
        return {ast.Set: set, ast.List: list, ast.Tuple: tuple}[type(node)](items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("not a literal")
        return {literal(k): literal(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = literal(node.operand)
        if type(v) not in (int, float, complex):
            raise ValueError("not a literal")
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        a, b = literal(node.left), literal(node.right)
        if type(a) not in (int, float) or type(b) is not complex:
            raise ValueError("not a literal")
        return a + b if isinstance(node.op, ast.Add) else a - b
    if isinstance(node, ast.Constant) and node.value is not Ellipsis:
        return node.value
    raise ValueError("not a literal")


def _is_literal(node) -> bool:
    try:
        literal(node)
        return True
    except (ValueError, TypeError, SyntaxError):
        return False


def _call(name: str, *args: ast.AST) -> ast.Call:
    return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=list(args), keywords=[])


class _Rewriter(ast.NodeTransformer):
    def __init__(self, plan: Plan, bound: set, modules: set):
        self.plan, self.bound, self.modules = plan, bound, modules
        self.unit = 0
        self.depth = 0  # > 0 inside loops, branches, defs, try, with: not straight-line

    # --- control flow: asserts below these may run zero or many times
    def _nested(self, node):
        self.depth += 1
        try:
            return self.generic_visit(node)
        finally:
            self.depth -= 1

    visit_For = visit_AsyncFor = visit_While = visit_If = visit_With = visit_AsyncWith = _nested
    visit_Try = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _nested
    visit_TryStar = visit_Match = _nested

    def _site(self, **kw) -> int:
        self.plan.sites.append(Site(straight=self.depth == 0, unit=self.unit, **kw))
        return len(self.plan.sites) - 1

    def visit_Assert(self, node: ast.Assert):
        test = node.test
        site = self._host_checked(test)
        if site is not None:
            sid, expr = site
            expr = self._guard(expr, plain=False)
            return ast.copy_location(ast.Expr(_call("__rlvr_value__", ast.Constant(sid), expr)), node)
        new_test = _call("__rlvr_truth__", self._guard(test, plain=False))
        return ast.copy_location(ast.Assert(test=new_test, msg=None), node)

    def _host_checked(self, test):
        """(site id, expression to compute inside) when the host can judge this assert."""
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            op = _CMP[type(test.ops[0])]
            left, right = test.left, test.comparators[0]
            if _is_literal(right) and not _is_literal(left):
                return self._site(kind="cmp", op=op, expected=literal(right)), left
            if _is_literal(left) and not _is_literal(right) and op in _FLIP:
                return self._site(kind="cmp", op=_FLIP[op], expected=literal(left)), right
            if (
                op in ("<", "<=")
                and _is_literal(right)
                and isinstance(left, ast.Call)
                and isinstance(left.func, ast.Name)
                and left.func.id == "abs"
                and "abs" not in self.bound
                and len(left.args) == 1
                and not left.keywords
                and isinstance(left.args[0], ast.BinOp)
                and isinstance(left.args[0].op, ast.Sub)
            ):
                a, b = left.args[0].left, left.args[0].right
                if _is_literal(b) and not _is_literal(a):
                    return self._site(kind="absdiff", op=op, expected=literal(b), tol=literal(right)), a
                if _is_literal(a) and not _is_literal(b):
                    return self._site(kind="absdiff", op=op, expected=literal(a), tol=literal(right)), b
            return None
        if (
            isinstance(test, ast.Call)
            and isinstance(test.func, ast.Attribute)
            and isinstance(test.func.value, ast.Name)
            and test.func.value.id == "math"
            and test.func.attr == "isclose"
            and "math" not in self.bound
            and len(test.args) == 2
            and all(_is_literal(k.value) and k.arg in ("rel_tol", "abs_tol") for k in test.keywords)
        ):
            a, b = test.args
            kwargs = {k.arg: literal(k.value) for k in test.keywords}
            if _is_literal(b) and not _is_literal(a):
                return self._site(kind="isclose", expected=literal(b), kwargs=kwargs), a
            if _is_literal(a) and not _is_literal(b):
                return self._site(kind="isclose", expected=literal(a), kwargs=kwargs), b
            return None
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and not _is_literal(test.operand):
            return self._site(kind="not"), test.operand
        if isinstance(test, (ast.Call, ast.Name, ast.Attribute, ast.Subscript)):
            return self._site(kind="truth"), test
        return None

    # --- guarding expressions that stay inside the sandbox
    def _trusted_callee(self, func) -> str | None:
        if isinstance(func, ast.Name) and func.id in _BUILTIN_NAMES and func.id not in self.bound:
            self.plan.trusted_names.append(func.id)
            return func.id
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in self.modules:
            self.plan.trusted_modules.append(func.value.id)
            return func.value.id + "." + func.attr
        return None

    def _guard(self, node, *, plain: bool, receiver: bool = False):
        """Rewrite ``node``; ``plain``: its value flows into a trusted consumer (convert it);
        ``receiver``: an attribute is read from it (convert it if it has a plain form)."""
        if isinstance(node, ast.Attribute):
            node.value = self._guard(node.value, plain=True, receiver=True)
            return node
        if isinstance(node, ast.Call):
            trusted = self._trusted_callee(node.func)
            args_plain = trusted is not None and trusted not in _IDENTITY_BUILTINS
            node.func = self._guard(node.func, plain=False) if not isinstance(node.func, ast.Name) else node.func
            node.args = [self._guard(a, plain=args_plain) for a in node.args]
            for k in node.keywords:
                k.value = self._guard(k.value, plain=args_plain)
            if trusted is None and plain:
                return ast.copy_location(_call("__rlvr_recv__" if receiver else "__rlvr_plain__", node), node)
            return node
        if isinstance(node, ast.Compare):
            left = self._guard(node.left, plain=True)
            comps = [self._guard(c, plain=True) for c in node.comparators]
            if len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
                eq = _call("__rlvr_eq__", left, comps[0])
                return eq if isinstance(node.ops[0], ast.Eq) else ast.UnaryOp(op=ast.Not(), operand=eq)
            node.left, node.comparators = left, comps
            return node
        if isinstance(
            node,
            (
                ast.BinOp,
                ast.UnaryOp,
                ast.BoolOp,
                ast.Subscript,
                ast.Starred,
                ast.List,
                ast.Tuple,
                ast.Set,
                ast.Dict,
                ast.IfExp,
                ast.JoinedStr,
                ast.FormattedValue,
            ),
        ):
            for name, value in ast.iter_fields(node):
                if isinstance(value, ast.expr):
                    setattr(node, name, self._guard(value, plain=True))
                elif isinstance(value, list):
                    setattr(node, name, [self._guard(v, plain=True) if isinstance(v, ast.expr) else v for v in value])
            return node
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            for gen in node.generators:
                gen.iter = self._guard(gen.iter, plain=True)
                gen.ifs = [self._guard(c, plain=True) for c in gen.ifs]
            for name in ("elt", "key", "value"):
                if getattr(node, name, None) is not None:
                    setattr(node, name, self._guard(getattr(node, name), plain=True))
            return node
        return node


def _bound_names(tree: ast.Module) -> tuple[set, set]:
    """Names the tests bind themselves, and the names of modules the tests import."""
    bound, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                name = (alias.asname or alias.name).split(".")[0]
                bound.add(name)
                if isinstance(node, ast.Import) and alias.asname is None:
                    modules.add(name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
            bound.update(
                a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            ) if not isinstance(node, ast.ClassDef) else None
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound, modules


def _program_names(code: str) -> set:
    """Top-level names the program binds (a program's ``def sum`` shadows the builtin)."""
    if len(code) > 1 << 20:
        return set()
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        else:
            names.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return names


def build(tests: str, code: str = "") -> Plan:
    """Parse and rewrite ``tests`` (raises SyntaxError when the tests themselves do not parse).

    ``code`` (the program) is only parsed for the names it defines, so that a program's own
    ``def sum(...)`` is called as the program's function, not as a trusted builtin.
    """
    return _build(tests, frozenset(_program_names(code) & _BUILTIN_NAMES))


@functools.lru_cache(maxsize=4096)
def _build(tests: str, shadowed: frozenset) -> Plan:
    """Cached: the completions of one prompt share their tests."""
    tree = ast.parse(tests)
    bound, modules = _bound_names(tree)
    bound |= shadowed
    modules |= {
        "math",
        "cmath",
        "re",
        "string",
        "collections",
        "itertools",
        "functools",
        "heapq",
        "operator",
        "statistics",
        "json",
    } - bound
    plan = Plan(units=[], sites=[], trusted_names=[], trusted_modules=[])
    rewriter = _Rewriter(plan, bound, modules)
    for stmt in tree.body:
        has_assert = any(isinstance(n, ast.Assert) for n in ast.walk(stmt))
        is_def = isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom))
        kind = "test" if has_assert and not is_def else "setup"
        rewriter.unit = len(plan.units)
        new = rewriter.visit(stmt)
        plan.units.append((kind, ast.unparse(new)))
    plan.trusted_names = sorted(set(plan.trusted_names))
    plan.trusted_modules = sorted(set(plan.trusted_modules))
    return plan


def calls(name: str, args: list) -> Plan:
    """The function-call form: one test unit per call ``name(*args[i])``, whose return value comes
    back (site ``i``, kind "value"). ``args[i]`` is a list of plain data; ValueError if it is not."""
    encoded = []
    for i, a in enumerate(args):
        if type(a) not in (list, tuple):
            raise ValueError(f"call {i}: the arguments must be a list, not {type(a).__name__}")
        try:
            encoded.append(_values.encode(list(a)))
        except (_values.Unsupported, RecursionError) as exc:
            raise ValueError(f"call {i}: {exc}") from None
    return Plan(
        units=[("test", f"__rlvr_value__({i}, __rlvr_call__({i}))") for i in range(len(args))],
        sites=[Site(kind="value", unit=i) for i in range(len(args))],
        trusted_names=[],
        trusted_modules=[],
        call=name,
        args=encoded,
    )


# ----------------------------------------------------------------------------- judging


def _compare(op: str, a, b) -> bool:
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    if op == "is":
        return a is b if b in (None, True, False) and type(b) in (type(None), bool) else a == b and type(a) is type(b)
    if op == "is not":
        return not _compare("is", a, b)
    if op == "in":
        return a in b
    if op == "not in":
        return a not in b
    raise ValueError(op)


def check_site(site: Site, value) -> bool:
    try:
        if site.kind == "value":  # it came back as plain data; the caller compares it
            return True
        if site.kind == "cmp":
            return bool(_compare(site.op, value, site.expected))
        if site.kind == "truth":
            return bool(value)
        if site.kind == "not":
            return not bool(value)
        if site.kind == "absdiff":
            if type(value) not in (int, float, bool, complex):
                return False
            return bool(_compare(site.op, abs(value - site.expected), site.tol))
        if site.kind == "isclose":
            if type(value) not in (int, float, bool):
                return False
            return math.isclose(value, site.expected, **site.kwargs)
    except Exception:
        return False
    return False


@dataclass
class Report:
    """What the result channel says, checked against the plan."""

    ok: bool  # every test unit passed and the run completed
    passed: int  # test units that passed
    reason: str
    units: list  # per unit: True (passed), a failure reason, or None (did not finish)
    values: dict  # site -> its value (rebuilt here), for "value" sites whose value arrived


class _Tampering(Exception):
    pass


def _read(plan: Plan, records: str) -> tuple[list, dict, dict, bool, str | None]:
    """(per-unit status, per-site counts, "value" site values, done, program error) from the channel."""
    status: list = [None] * len(plan.units)  # None: not finished; True: ok; str: failure reason
    failed_at: dict[int, str] = {}
    counts: dict[int, int] = {}
    values: dict[int, object] = {}
    done, code_error, current = False, None, None
    for line in records.splitlines():
        try:
            ev = json.loads(line)
            kind = ev["ev"]
        except (ValueError, TypeError, KeyError, RecursionError):
            raise _Tampering("malformed result record (tampering?)") from None
        if kind == "code_error":
            code_error = str(ev.get("err"))[:500]
        elif kind == "begin":
            current = ev.get("u")
            if not isinstance(current, int) or not 0 <= current < len(plan.units) or status[current] is not None:
                raise _Tampering("out-of-order result record (tampering?)")
        elif kind == "val":
            sid = ev.get("s")
            if current is None or not isinstance(sid, int) or not 0 <= sid < len(plan.sites):
                raise _Tampering("result record for an assert that is not running (tampering?)")
            counts[sid] = counts.get(sid, 0) + 1
            ok, why = _check_record(plan.sites[sid], ev, sid, values)
            if not ok and not isinstance(failed_at.get(current), str):
                failed_at[current] = f"assert #{sid + 1}: {why}"
        elif kind == "end":
            u = ev.get("u")
            if u != current:
                raise _Tampering("out-of-order result record (tampering?)")
            status[u] = failed_at.get(u) or (True if ev.get("ok") is True else str(ev.get("err"))[:500])
            current = None
        elif kind == "done":
            done = current is None
    return status, counts, values, done, code_error


def _check_record(site: Site, ev: dict, sid: int, values: dict) -> tuple[bool, str]:
    if "err" in ev:
        return False, str(ev["err"])[:300]
    try:
        value = _values.decode(ev.get("v"))
    except (ValueError, TypeError, KeyError, RecursionError, OverflowError, AttributeError):
        return False, "malformed value"
    if site.kind == "value":
        values[sid] = value
    return check_site(site, value), "failed"


def judge(plan: Plan, records: str) -> Report:
    """The verdict of the channel text: all passed and completed, units passed, reason, details."""
    try:
        status, counts, values, done, code_error = _read(plan, records)
    except _Tampering as exc:
        return Report(False, 0, str(exc), [None] * len(plan.units), {})
    for sid, site in enumerate(plan.sites):
        if site.straight and status[site.unit] is True and counts.get(sid, 0) != 1:
            status[site.unit] = f"assert #{sid + 1} did not run exactly once"
            values.pop(sid, None)
    passed = sum(1 for (kind, _), s in zip(plan.units, status, strict=True) if kind == "test" and s is True)
    if code_error is not None:
        return Report(False, 0, f"program failed before the tests: {code_error}", status, {})
    failures = [(i, s) for i, s in enumerate(status) if s is not True]
    if failures:
        i, s = failures[0]
        what = "did not run to completion" if s is None else s
        return Report(False, passed, f"test statement {i + 1}: {what}", status, values)
    if not done:
        return Report(False, passed, "tests did not run to completion", status, values)
    return Report(True, passed, "all tests passed", status, values)
