"""The math verifier: is a model's final answer mathematically equal to the gold answer?

Usage:

    from verifiers.math import extract_answer, is_equivalent, verify
    extract_answer(r"... so the total is \\boxed{\\dfrac{14}{3}}.")   # -> '\\dfrac{14}{3}'
    is_equivalent("0.5", r"\\frac{1}{2}")                             # -> True
    verify("<think>37 + 48 = 85</think> <answer> 85 </answer>", "85")  # -> True

    import verifiers
    verifiers.score_batch("math", completions, golds, timeout_s=1.0)  # what the learner calls

``verify`` and ``is_equivalent`` first try a cheap in-process path (normalised string equality,
exact comparison of plain numbers, multiple-choice letters); everything else runs in a killable
worker process of ``verifiers.pool`` with a hard wall-clock bound (``timeout_s``, default 1 s), so
no input can hang the caller; a timeout is a ``False`` verdict (``None`` in ``score_batch``, which
the learner counts). The first call starts the workers (about 0.1-0.5 s, not charged to the bound);
``warm_up()`` does that ahead of time. Extraction always runs in the caller; a worker receives the
extracted pair and runs ``judge_pair`` (spec ``"verifiers.math:judge_pair"``), never ``math_reward``.

Extraction (``extract_answer``): chat-template tokens closing the response (``<|im_end|>``,
``<|eot_id|>``, ``</s>``, a started ``<|im_start|>user``) are dropped first. Then the answer inside the
last ``<answer>...</answer>`` if any, else the latest of: the last ``\\boxed{...}`` group (also
``\\boxed 5``, ``\\fbox``; ``\\boxed{185\\}`` is 185), the last ``#### ...`` line, the last
"The answer is ..." / "Final Answer: ..." sentence (Minerva's "I hope it is correct." is not part of
it; a choice letter followed by its reason, "The answer is B because ...", is the letter B, but "A bit
more" is prose). Boxes written together as one final statement (separated only by commas, "and",
``\\quad``, math delimiters such as ``\\) and \\(``, a short label such as ``y_2 =``) form one multi-part
answer; a box followed by prose and another box is a revision and the last one counts; a repeated box
is one answer. A response with no marker is taken as a bare answer, or, if it is prose, its last
formula (``$...$``, ``\\[...\\]``) or its last whole number, whichever comes later; a number later in the
formula's own sentence wins only over a formula without a digit ("There are $9$ divisors of 196" is 9,
"The volume of $ABCD$ is 120" is 120). A prose answer is always a whole expression, never a fragment
of one: ``2/3``, ``\\frac{2}{3}``, ``-1,000.99``, ``{60}`` (also glued to a unit: ``1,000.99m^2``) are read
whole, and a number touching a digit, operator, ``^``, ``_``, brace or backslash (``2`` of ``m^2``,
``5`` of ``5-6``) is not a number of the prose; where the prose has no whole number there is no answer.

Equivalence policy (MATH/GSM8K conventions), decided here:
- units, ``\\text{}``, ``$``, ``^\\circ`` and thousands separators (``1,000``, ``1{,}000``, ``14 {, }916``,
  ``1,\\!000``, ``1 000``) are ignored; ``32, 349`` (comma and space) is a two-element list, and
  ``{,}`` before other than three digits is a decimal comma, not a separator (``3{,}14 != 314``).
- typos that LaTeX would reject are read as meant: a trailing backslash (``185\\``), a spacing or
  operator macro glued to a letter (``\\quadx_{2}`` is ``\\quad x_{2}``).
- a ``!`` after a number or bracket is a factorial, either side (``5! == 120``, ``6! != 721``); in a
  prose sentence ("The answer is 42!") it is an exclamation mark.
- percent is a unit: ``28\\%`` equals ``28`` and does NOT equal ``0.28``.
- numbers compare exactly: ``025 == 25``, ``1000.0 == 1000``, ``0.5 == \\frac12``; unreduced fractions
  are equal to their value (``\\frac{2}{4} == \\frac12``); no rounding (``1/2^{99} != 1/2^{98}``).
- a decimal with 10 or more significant digits equals an exact value it agrees with to within one
  unit in its last digit (``0.0833333333333 == 1/12``); shorter decimals never equal an irrational
  or a different rational (``3.14 != \\pi``, ``33.3 != 100/3``).
- e-notation is a number: ``6.02e23 == 6.02\\times10^{23}``; so is scientific notation written with an
  ``x`` (``2.5 x 10^6 == 2,500,000 == 2.5 \\times 10^{6}``, ``!= 250,000``).
- number words (zero..ninety, "twenty one") equal their value; other words compare as
  case-insensitive text (``\\text{Even} == even``).
- mixed numbers: ``1\\frac{4}{5} == 9/5`` (an integer directly before a numeric ``\\frac``) and
  ``7 3/4 == 31/4``.
- ``{...}`` sets and comma lists are order-free, and an item listed twice counts once
  (``(1,2), (3,4), (1,2) == (1,2), (3,4)``, but ``!= (1,2)``); a hedge written without spaces
  (``(11,7)or(7,11)``) is the list ``(11,7), (7,11)``. Tuples and intervals are ordered and their
  brackets must match (``(0,9) != [0,9)``).
- ``\\pm`` expands to both values, inside a set element by element (``\\{2, \\pm 3\\} == 2, 3, -3``,
  ``\\{1 \\pm \\sqrt2\\} == 1+\\sqrt2, 1-\\sqrt2``).
- ``A \\cup B`` compares as a set of pieces (finite sets merged). Intervals with numeric ends that
  overlap or touch at an end that either one includes are one interval (``[1,2] \\cup [2,4] == [1,4]``,
  ``(-\\infty,0) \\cup [0,3] == (-\\infty,3]``, ``(1,2) \\cup \\{2\\} == (1,2]``); ``(1,2) \\cup (2,4) != (1,4)``
  (2 is in neither) and ``[1,2] \\cup [3,4] != [1,4]``.
- ``x=2`` equals ``2`` when the left side names the answer (``x``, ``f(x)``, ``|AB|``, ``(p,q)``);
  ``a+3z=0`` does not equal ``0``. Two equations are equal when ``lhs - rhs`` differ by a nonzero
  constant factor. Inequalities in one variable are intervals (``x \\ge 5 == [5, \\infty)``,
  ``-2 \\le x \\le 7 == x \\in [-2,7]``), both ways round.
- expressions: exact sympy equality, else numeric identity testing at several generic points with
  30-digit arithmetic (both sides must agree at every positive point; at negative points where both
  are real they must agree too, which rejects ``|x|`` vs ``x``), else ``simplify(a - b) == 0``.
- matrices compare elementwise (sums and powers of matrices are evaluated); a column or row vector
  equals a tuple of its entries. Ratios ``a:b`` and clock times compare elementwise.
- multiple-choice letters: ``(C)``, ``\\text{(C)}``, ``C`` and ``(C) 17`` are the letter C.
- repeating decimals are exact (``0.1\\overline{6} == 1/6``); ``a \\approx b`` is judged by ``a``;
  a trailing ``\\pmod{n}`` is dropped; ``\\mathbb{R}`` is ``(-\\infty, \\infty)``.
- a list of one-variable inequalities ("x < -1 or x > 1") equals the union of their intervals.
- limits of the cheap guards: answers longer than 5,000 characters only match exactly; responses
  are read from their last 100,000 characters; power towers (``9^{9^9}``) are compared
  structurally, never evaluated.
- a hedge inside one box (``5 \\text{ or } 6``) is a two-element answer, so it never equals ``5``.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import time
from fractions import Fraction

import sympy

from verifiers import pool as _pool, register
from verifiers._math_extract import extract as _extract
from verifiers._math_latex import MAX_ANSWER_CHARS, ExprInfo, ParseError, _is_huge, _unlabel, normalize, parse_value

__all__ = ["extract_answer", "is_equivalent", "verify", "math_reward", "warm_up", "DEFAULT_TIMEOUT_S"]

DEFAULT_TIMEOUT_S = 1.0
WORKER_MEMORY_MB = 3072
# what the pool's workers run: resolved there with verifiers.get, so no worker re-enters math_reward
_JUDGE_SPEC = "verifiers.math:judge_pair"


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def extract_answer(text: str) -> str | None:
    """The final answer of a model response (see the module docstring), or None."""
    try:
        if not isinstance(text, str):
            return None
        text = _clean(text)
        return _extract(text)
    except Exception:
        return None


def is_equivalent(answer: str, gold: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> bool:
    """Are two answers mathematically equal? Never raises; bounded by ``timeout_s`` (None: unbounded)."""
    return _bounded(answer, gold, "equiv", timeout_s)


def verify(response: str, gold: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> bool:
    """Extract the final answer of ``response`` and compare it with ``gold``."""
    return _bounded(response, gold, "verify", timeout_s)


def math_batch(completions, answers, metas=None, *, timeout_s: float = DEFAULT_TIMEOUT_S, workers=None):
    """The batch entry point: a cheap in-process verdict where one exists, the pool for the rest."""
    n = len(completions)
    out: list[float | None] = [None] * n
    rest, pairs = [], []
    for i in range(n):
        try:
            pred, gold = _answers(completions[i], answers[i], "verify")
            v = _fast_pair(pred, gold)
        except Exception:
            pred, gold, v = None, None, False
        if v is None:
            rest.append(i)
            pairs.append((pred, gold))
        else:
            out[i] = 1.0 if v else 0.0
    if rest:
        got = _pool.run_isolated(
            _JUDGE_SPEC,
            [p for p, _ in pairs],
            [g for _, g in pairs],
            [{} for _ in rest],
            timeout_s=timeout_s,
            workers=workers,
            memory_mb=WORKER_MEMORY_MB,
        )
        for i, v in zip(rest, got, strict=True):
            out[i] = v
    return out


@register("math", batch=math_batch)
def math_reward(completion: str, answer: str, **meta) -> float:
    """1.0 if the completion's final answer equals ``answer``, else 0.0."""
    return 1.0 if _bounded(completion, answer, "verify", meta.get("timeout_s", DEFAULT_TIMEOUT_S)) else 0.0


def judge_pair(pred: str, gold: str, **meta) -> float:
    """The worker side of the pool: an already extracted pair, judged here without a bound of its own
    (the pool that calls it kills it when it overruns)."""
    return 1.0 if _judge(pred, gold) else 0.0


def warm_up(workers: int | None = None) -> None:
    """Start the worker processes now (otherwise the first slow verdict starts them)."""
    _pool.get_pool(WORKER_MEMORY_MB).warm(workers, spec=_JUDGE_SPEC)


# ---------------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------------


_MAX_RESPONSE_CHARS = 100_000  # extraction reads at most the last 100k characters of a response
_SURROGATES = re.compile("[\ud800-\udfff]")


def _clean(s: str) -> str:
    if len(s) > _MAX_RESPONSE_CHARS:
        s = s[-_MAX_RESPONSE_CHARS:]
    s = _SURROGATES.sub("", s)  # invalid UTF-8 decoded with surrogateescape, lone surrogates
    return s.replace("\x00", "")


_KILL_MARGIN_S = 0.03  # killing and reporting an overrunning worker takes a few milliseconds


def _bounded(a, b, mode, timeout_s) -> bool:
    t0 = time.monotonic()
    try:
        pred, gold = _answers(a, b, mode)
        v = _fast_pair(pred, gold)
        if v is not None:
            return v
        # a daemonic process (a pool worker running a user's verifier that calls this) may not start
        # the pool's workers; whoever started it bounds it
        if timeout_s is None or multiprocessing.current_process().daemon:
            return _equal_strings(pred, gold)
        left = timeout_s - (time.monotonic() - t0) - _KILL_MARGIN_S
        if left <= 0:
            return False
        got = _pool.run_isolated(
            _JUDGE_SPEC, [pred], [gold], [{}], timeout_s=left, workers=1, memory_mb=WORKER_MEMORY_MB
        )
        return got[0] == 1.0
    except Exception:
        return False


def _answers(a, b, mode) -> tuple[str | None, str | None]:
    if not isinstance(a, str) or not isinstance(b, str):
        return None, None
    a, b = _clean(a), _clean(b)
    pred = _extract(a) if mode == "verify" else (_extract(a) if "\\boxed" in a or "\\fbox" in a else a)
    gold = _extract(b) if ("\\boxed" in b or "\\fbox" in b or "<answer>" in b) else b
    if gold is not None and re.search(r"(?m)^#### ", gold):
        gold = _extract(gold)
    return pred, gold


_SIMPLE_NUM = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_SIMPLE_FRAC = re.compile(r"(-?)\s*(?:\\frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}|(\d+)\s*/\s*(\d+))")


def _simple_number(s: str) -> tuple[Fraction, int, int] | None:
    """A plain number: (value, significant digits if decimal else 0, exponent of last digit)."""
    if len(s) > 200:
        return None
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?|-?\d{1,3}( \d{3})+(\.\d+)?", s):
        s = s.replace(",", "").replace(" ", "")
    s = re.sub(r"(?<=[-/{}])\s+|\s+(?=[/{}])", "", s)
    if _SIMPLE_NUM.fullmatch(s):
        v = Fraction(s.rstrip(".") if not s.endswith(".") else s[:-1])
        if "." in s:
            body = s.lstrip("-")
            digits = body.replace(".", "").lstrip("0")
            frac = len(body.split(".", 1)[1])
            return v, len(digits), -frac
        return v, 0, 0
    m = _SIMPLE_FRAC.fullmatch(s)
    if m:
        num = int(m.group(2) or m.group(4))
        den = int(m.group(3) or m.group(5))
        if den == 0:
            return None
        v = Fraction(num, den)
        return (-v if m.group(1) else v), 0, 0
    return None


def _fast_pair(pred, gold) -> bool | None:
    try:
        if pred is None or gold is None:
            return False
        if pred == gold:
            return True
        if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
            # far longer than any real answer: only an exact (white-space-free) match counts
            return "".join(pred.split()) == "".join(gold.split())
        np_, ng = normalize(pred), normalize(gold)
        if np_ == ng:
            return True
        if not np_ or not ng:
            return False
        x, y = _simple_number(np_), _simple_number(ng)
        if x is not None and y is not None:
            return _numbers_equal(x, y)
        if x is not None and re.fullmatch(r"\\?\(?[A-E]\)?", ng) or y is not None and re.fullmatch(r"\(?[A-E]\)?", np_):
            return False
        return None
    except Exception:
        return None


def _numbers_equal(x, y) -> bool:
    if x[0] == y[0]:
        return True
    # a long decimal against an exact fraction: within one unit of its last digit
    for (v1, d1, e1), (v2, d2, _) in ((x, y), (y, x)):
        if d1 >= 10 and d2 == 0 and abs(v1 - v2) < Fraction(10) ** e1:
            return True
    return False


def _judge(pred, gold) -> bool:
    try:
        fast = _fast_pair(pred, gold)
        if fast is not None:
            return fast
        return _equal_strings(pred, gold)
    except Exception:
        return False


@functools.lru_cache(maxsize=8192)
def _parsed(s: str):
    n = normalize(s)
    if len(n) > MAX_ANSWER_CHARS:
        return ("text", n.lower()), n
    try:
        return parse_value(n), n
    except (
        ParseError,
        RecursionError,
        ValueError,
        TypeError,
        ZeroDivisionError,
        AttributeError,
        IndexError,
        KeyError,
        sympy.SympifyError,
        NotImplementedError,
        OverflowError,
    ):
        return None, n
    except Exception:
        return None, n


_CHOICE = re.compile(r"^\(\s*([A-E])\s*\)|^([A-E])\s*[).:](?:\s|$)")


def _choice(v, n: str) -> str | None:
    """The multiple-choice letter of an answer: 'C', '(C)', '(C) 12', 'C) 12'."""
    if v is not None and v[0] == "letter":
        return v[1]
    m = _CHOICE.match(n)
    return (m.group(1) or m.group(2)) if m else None


def _equal_strings(pred: str, gold: str) -> bool:
    vp, np_ = _parsed(pred)
    vg, ng = _parsed(gold)
    if np_ == ng:
        return True
    cg, cp = _choice(vg, ng), _choice(vp, np_)
    if (
        cg is not None
        and cp is not None
        and (vg is not None and vg[0] == "letter" or vp is not None and vp[0] == "letter")
    ):
        return cg == cp
    if vp is None or vg is None:
        return _text_key(np_) == _text_key(ng)
    try:
        return _eq(vg, vp)
    except RecursionError:
        return False


def _text_key(s: str) -> str:
    return re.sub(r"[\s{}]|\\text|\\mathrm", "", s).lower()


# ---------------------------------------------------------------------------------------------
# structural comparison of parsed values
# ---------------------------------------------------------------------------------------------


def _simplify_value(v):
    kind = v[0]
    if kind == "coll":
        items = v[1]
        if len(items) == 1:
            return _simplify_value(items[0])
        return v
    if kind == "union":
        finite, pieces = [], []
        for part in v[1]:
            part = _simplify_value(part)
            for q in part[1] if part[0] == "union" else [part]:
                if q[0] == "coll":
                    finite.extend(q[1])
                elif q[0] == "tuple":
                    pieces.append(q)
                else:
                    finite.append(q)
        pieces, finite = _merge_intervals(pieces, finite)
        if finite:
            pieces.append(("coll", finite))
        if len(pieces) == 1:
            return pieces[0]
        return ("union", pieces)
    if kind == "rel" and v[1] in ("<", "<=", ">", ">="):
        iv = _interval_of(v)
        if iv is not None:
            return iv
    return v


def _bounds(v) -> list | None:
    """[lo, hi, lo closed, hi closed] of an interval with numeric ends (the ends kept as values)."""
    if v[0] != "tuple" or len(v[3]) != 2 or v[1] not in "([" or v[2] not in ")]":
        return None
    if not all(e[0] == "expr" and e[1].is_extended_real and not e[1].free_symbols for e in v[3]):
        return None
    return [v[3][0], v[3][1], v[1] == "[", v[2] == "]"]


def _cmp(a, b) -> int:
    """-1, 0 or 1 for two real numbers given as values; raises TypeError when undecidable."""
    x, y = a[1], b[1]
    if x == y or (x - y).is_zero:
        return 0
    return -1 if bool(x < y) else 1


def _merge_intervals(pieces, finite):
    """A union of intervals and points with touching or overlapping pieces joined: [1,2] U [2,4] is
    [1,4] and (1,2) U {2} is (1,2]; (1,2) U (2,4) stays two pieces (2 is in neither)."""
    ivs = [_bounds(p) for p in pieces]
    if not ivs or None in ivs or not all(f[0] == "expr" and f[1].is_extended_real for f in finite):
        return pieces, finite
    try:
        rest = []
        for pt in finite:
            hit = next((iv for iv in ivs if _cmp(iv[0], pt) <= 0 and _cmp(pt, iv[1]) <= 0), None)
            if hit is None:
                rest.append(pt)
            else:
                hit[2] = hit[2] or _cmp(hit[0], pt) == 0
                hit[3] = hit[3] or _cmp(pt, hit[1]) == 0
        ivs.sort(key=functools.cmp_to_key(lambda a, b: _cmp(a[0], b[0])))
        out = [ivs[0]]
        for iv in ivs[1:]:
            cur = out[-1]
            gap = _cmp(cur[1], iv[0])
            if gap < 0 or gap == 0 and not (cur[3] or iv[2]):
                out.append(iv)
                continue
            cur[2] = cur[2] or _cmp(cur[0], iv[0]) == 0 and iv[2]
            top = _cmp(iv[1], cur[1])
            if top > 0:
                cur[1], cur[3] = iv[1], iv[3]
            elif top == 0:
                cur[3] = cur[3] or iv[3]
    except TypeError:
        return pieces, finite
    return [("tuple", "[" if lc else "(", "]" if hc else ")", [lo, hi]) for lo, hi, lc, hc in out], rest


def _interval_of(v):
    """x >= 5 -> ("tuple", "[", ")", [5, oo]) when the relation is linear in one variable."""
    op, lhs, rhs = v[1], v[2], v[3]
    if lhs[0] != "expr" or rhs[0] != "expr":
        return None
    d = lhs[1] - rhs[1]
    syms = d.free_symbols
    if len(syms) != 1:
        return None
    x = next(iter(syms))
    a = sympy.diff(d, x)
    if a.free_symbols or a == 0 or not a.is_real:
        return None
    b = sympy.expand(d - a * x)
    if b.free_symbols:
        return None
    root = -b / a
    if a < 0:
        op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
    info = ExprInfo()
    if op in ("<", "<="):
        return ("tuple", "(", ")" if op == "<" else "]", [("expr", -sympy.oo, info), ("expr", root, info)])
    return ("tuple", "(" if op == ">" else "[", ")", [("expr", root, info), ("expr", sympy.oo, info)])


def _name_key(v) -> str | None:
    if v[0] == "expr":
        return re.sub(r"[\s{}]", "", str(v[1]))
    return None


def _eq(g, p) -> bool:
    g, p = _simplify_value(g), _simplify_value(p)
    kg, kp = g[0], p[0]

    if kg == "rel" or kp == "rel":
        return _eq_rel(g, p)
    if (kg == "coll") != (kp == "coll"):
        c = g if kg == "coll" else p
        if 1 < len(c[1]) <= _MAX_ITEMS and all(_eq(c[1][0], q) for q in c[1][1:]):
            # \boxed{15\frac{39}{40}} or \boxed{\frac{639}{40}}: one value twice is that value
            return _eq(c[1][0], p) if c is g else _eq(g, c[1][0])
    if {kg, kp} == {"coll", "union"}:
        # "x < -2 or x > 2" against (-oo, -2) U (2, oo): a list of intervals is their union
        items = [_simplify_value(v) for v in (g if kg == "coll" else p)[1]]
        if items and all(v[0] == "tuple" and v[1] in "([" and len(v[3]) == 2 for v in items):
            return _eq(g, ("union", items)) if kg == "union" else _eq(("union", items), p)
        return False
    if kg != kp:
        if {kg, kp} == {"matrix", "tuple"}:
            m, t = (g, p) if kg == "matrix" else (p, g)
            mat = m[1]
            if 1 in mat.shape and len(t[3]) == len(mat) and t[1] == "(":
                return all(_eq(("expr", mat[i], ExprInfo()), t[3][i]) for i in range(len(mat)))
            return False
        if {kg, kp} == {"text", "expr"}:
            t = g if kg == "text" else p
            e = p if kg == "text" else g
            return t[1] == str(e[1]).replace(" ", "").replace("*", "").lower()
        return False
    if kg == "expr":
        return _scalar_equal(g[1], g[2], p[1], p[2])
    if kg == "text":
        return g[1] == p[1]
    if kg == "letter":
        return g[1] == p[1]
    if kg == "tuple":
        return (
            g[1] == p[1]
            and g[2] == p[2]
            and len(g[3]) == len(p[3])
            and all(_eq(a, b) for a, b in zip(g[3], p[3], strict=True))
        )
    if kg == "ratio":
        return len(g[1]) == len(p[1]) and all(_eq(a, b) for a, b in zip(g[1], p[1], strict=True))
    if kg == "matrix":
        a, b = g[1], p[1]
        return a.shape == b.shape and all(_scalar_equal(a[i], ExprInfo(), b[i], ExprInfo()) for i in range(len(a)))
    if kg == "coll":
        return _eq_coll(g[1], p[1])
    if kg == "union":
        return _eq_coll(g[1], p[1])
    return False


_MAX_ITEMS = 64  # longer collections are compared by their text only


def _eq_coll(gs, ps) -> bool:
    if max(len(gs), len(ps)) > _MAX_ITEMS:
        return False
    # named values (x = 1, y = 2) on both sides: compare by name
    if len(gs) == len(ps) and all(v[0] == "rel" and v[1] == "=" and v[4] for v in gs + ps):
        gk = {_name_key(v[2]): v[3] for v in gs}
        pk = {_name_key(v[2]): v[3] for v in ps}
        if None not in gk and None not in pk and len(gk) == len(gs) and set(gk) == set(pk):
            return all(_eq(gk[k], pk[k]) for k in gk)
    gs = [_unlabel(v) for v in gs]
    ps = [_unlabel(v) for v in ps]
    if len(gs) == len(ps) and _matched(gs, ps):
        return True
    # a collection is a set: an item listed twice counts once
    dg, dp = _distinct(gs), _distinct(ps)
    return (len(dg), len(dp)) != (len(gs), len(ps)) and len(dg) == len(dp) and _matched(dg, dp)


def _distinct(vs):
    out = []
    for v in vs:
        if not any(_eq(u, v) for u in out):
            out.append(v)
    return out


def _matched(gs, ps) -> bool:
    """Every item of ``gs`` equals a different item of ``ps`` (the lists have the same length)."""
    used = [False] * len(ps)
    for gv in gs:
        for j, pv in enumerate(ps):
            if not used[j] and _eq(gv, pv):
                used[j] = True
                break
        else:
            return False
    return True


def _eq_rel(g, p) -> bool:
    if g[0] == "rel" and p[0] == "rel":
        if g[1] != p[1] and not (g[1] in "<><=>=" and p[1] in "<><=>="):
            return False
        if g[1] == "=" and p[1] == "=":
            if _equations_equal(g, p):
                return True
            if g[4] and p[4]:
                return _eq(g[3], p[3]) and _names_compatible(g[2], p[2])
            return False
        if g[1] == "!=" and p[1] == "!=":
            return _equations_equal(g, p)
        return _inequalities_equal(g, p)
    r, other = (g, p) if g[0] == "rel" else (p, g)
    if r[1] == "=" and r[4]:
        return _eq(r[3], other) if r is p else _eq(other, r[3])
    return False


def _names_compatible(a, b) -> bool:
    return True


def _diff(rel):
    if rel[2][0] != "expr" or rel[3][0] != "expr":
        return None
    return rel[2][1] - rel[3][1]


def _equations_equal(g, p) -> bool:
    """lhs - rhs of the two equations differ by a nonzero constant factor."""
    if g[2][0] != "expr" or p[2][0] != "expr" or g[3][0] != "expr" or p[3][0] != "expr":
        # structured sides (tuples): same name and equal values
        return _eq(g[2], p[2]) and _eq(g[3], p[3])
    d1, d2 = _diff(g), _diff(p)
    if d1 == d2 or d1 == -d2:
        return True
    if d1.free_symbols != d2.free_symbols:
        return False
    if not d1.free_symbols:
        return False
    ratio = _constant_ratio(d1, d2)
    return ratio is not None and ratio != 0


def _inequalities_equal(g, p) -> bool:
    def norm(rel):
        d = _diff(rel)
        if d is None:
            return None
        op = rel[1]
        if op in ("<", "<="):
            return -d, op == "<"
        return d, op == ">"

    a, b = norm(g), norm(p)
    if a is None or b is None or a[1] != b[1]:
        return False
    if a[0].free_symbols != b[0].free_symbols:
        return False
    ratio = _constant_ratio(a[0], b[0])
    return ratio is not None and ratio > 0


# -- numbers and expressions -------------------------------------------------------------------

_POS_POINTS = [
    sympy.Rational(p)
    for p in (
        "1.3247179572447",
        "2.2360679774998",
        "1.6180339887499",
        "3.1415926535898",
        "2.7182818284590",
        "1.4142135623731",
    )
]
_NEG_POINTS = [sympy.Rational(p) for p in ("-0.5772156649015", "-1.9021130325903", "-2.6651441426902")]
_PREC = 30
_TOL = sympy.Float("1e-20", 40)


def _num(e, prec=_PREC):
    """A numeric value (mpmath-backed sympy Float or complex) of a closed expression, or None."""
    try:
        v = e.evalf(prec, chop=False)
    except Exception:
        return None
    if v.free_symbols or v.has(sympy.zoo, sympy.nan):
        return None
    if not v.is_number:
        return None
    if v.is_infinite:
        return v
    try:
        re_, im_ = v.as_real_imag()
        complex(re_), complex(im_)
    except Exception:
        return None
    return v


def _close(a, b) -> bool:
    if a.is_infinite or b.is_infinite:
        return a == b
    diff = abs(a - b)
    scale = max(abs(a), abs(b), sympy.Float(1e-300))
    try:
        return bool(diff <= _TOL * scale) or bool(diff == 0)
    except TypeError:
        return False


def _points(syms, k):
    syms = sorted(syms, key=str)
    pts = []
    for i in range(k):
        pts.append({s: _POS_POINTS[(i + 2 * j) % len(_POS_POINTS)] + j for j, s in enumerate(syms)})
    return pts


def _neg_points(syms):
    syms = sorted(syms, key=str)
    return [{s: _NEG_POINTS[(i + j) % len(_NEG_POINTS)] - j for j, s in enumerate(syms)} for i in range(2)]


def _is_real(v) -> bool:
    try:
        return v.is_real is True or abs(sympy.im(v)) <= _TOL * max(abs(v), 1)
    except Exception:
        return False


def _constant_ratio(d1, d2):
    """d1/d2 if it is the same constant at generic points, else None."""
    syms = d1.free_symbols | d2.free_symbols
    ratio = None
    for pt in _points(syms, 3):
        a, b = _num(d1.subs(pt)), _num(d2.subs(pt))
        if a is None or b is None:
            if _opaque(d1) or _opaque(d2):
                return None
            try:
                q = sympy.simplify(d1 / d2)
                return q if not q.free_symbols else None
            except Exception:
                return None
        if b == 0 or abs(b) < 1e-25:
            if abs(a) < 1e-25:
                continue
            return None
        r = a / b
        if ratio is None:
            ratio = r
        elif not _close(r, ratio):
            return None
    if ratio is None:
        return None
    try:
        if not _is_real(ratio):
            return None
        return sympy.re(ratio)
    except Exception:
        return None


def _scalar_equal(a, ia: ExprInfo, b, ib: ExprInfo) -> bool:
    if a == b:
        return True
    if _is_huge(a) or _is_huge(b):
        return False  # power towers are compared structurally only: evaluating them never ends
    if a.is_Rational and b.is_Rational:
        return _decimal_close(a, ia, b, ib)
    sa, sb = a.free_symbols, b.free_symbols
    if not sa and not sb:
        va, vb = _num(a), _num(b)
        if va is None or vb is None:
            return _simplify_zero(a, b)
        if ia.decimal_digits or ib.decimal_digits:
            return _decimal_close(a, ia, b, ib, va, vb)
        if ia.has_float != ib.has_float and (ia.has_float or ib.has_float):
            # an expression with a short decimal in it against an exact one: exact only
            return _close(va, vb) and _simplify_zero(a, b)
        return _close(va, vb)
    syms = sa | sb
    # identity testing at generic points
    for pt in _points(syms, 3):
        va, vb = _num(a.subs(pt)), _num(b.subs(pt))
        if va is None or vb is None:
            return _simplify_zero(a, b)
        if not _close(va, vb):
            return False
    for pt in _neg_points(syms):
        va, vb = _num(a.subs(pt)), _num(b.subs(pt))
        if va is None or vb is None:
            continue
        if _is_real(va) and _is_real(vb) and not _close(va, vb):
            return False
    return True


def _decimal_close(a, ia, b, ib, va=None, vb=None) -> bool:
    if a == b:
        return True
    for (x, ix), (y, iy) in (((a, ia), (b, ib)), ((b, ib), (a, ia))):
        if ix.decimal_digits >= 10 and not iy.has_float:
            vy = _num(y, 60)
            if vy is None:
                continue
            if _is_real(vy) and abs(sympy.re(vy) - x) < sympy.Rational(10) ** ix.decimal_last:
                return True
    return False


def _opaque(e) -> bool:
    """Sums, products and unknown functions: simplify() on these is slow and rarely conclusive."""
    from sympy.core.function import AppliedUndef

    return e.has(sympy.Sum, sympy.Product) or bool(e.atoms(AppliedUndef))


def _simplify_zero(a, b) -> bool:
    try:
        d = a - b
        if d == 0:
            return True
        if sympy.expand(d) == 0:
            return True
        if _opaque(d) or sympy.count_ops(d) > 400:
            return False
        return sympy.simplify(d) == 0
    except Exception:
        return False
