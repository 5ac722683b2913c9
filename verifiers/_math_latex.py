"""Private helpers of ``verifiers.math``: answer normalisation and a small LaTeX-to-sympy parser.

An answer string becomes a ``Value``: a tree of plain tuples whose leaves are sympy expressions.

    ("expr", sympy_expr, info)      info: ExprInfo (decimal literal, significant digits, ...)
    ("text", "evelyn")              words; compared case-insensitively
    ("letter", "C")                 a multiple-choice letter
    ("coll", [values])              an order-free collection ({...} sets, "enter all" lists)
    ("tuple", "(", ")", [values])   ordered: tuples, points, intervals (brackets kept)
    ("union", [values])             A \\cup B
    ("matrix", sympy Matrix)
    ("rel", op, lhs_value, rhs_value, label)   op in = < <= > >= !=; label: lhs is a name (x, f(x), |AB|)
    ("ratio", [values])             a:b (12:00, 11:21), compared elementwise

The parser is a hand-written recursive-descent parser over a regex tokenizer: every step consumes
input, so it runs in time linear in the answer (plus sympy's construction cost). Numbers that would
be huge (9^{9^9}, 10^{10^{10^{10}}}, 10^6!) are built unevaluated so that construction stays cheap;
the caller's process isolation bounds whatever sympy does with them later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy
from sympy import Integer, Rational

MAX_ANSWER_CHARS = 5000
MAX_DEPTH = 60


class ParseError(Exception):
    pass


@dataclass(frozen=True)
class ExprInfo:
    decimal_digits: int = 0  # significant digits if the whole answer is one decimal literal, else 0
    decimal_last: int = 0  # exponent of its last digit (0.0833 -> -4)
    has_float: bool = False  # any decimal literal with a fractional part


# ---------------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------------

_UNICODE = {
    "\u2212": "-",
    "\u2013": "-",
    "\u2014": "-",
    "\u00d7": r"\times ",
    "\u00f7": r"\div ",
    "\u03c0": r"\pi ",
    "\u221e": r"\infty ",
    "\u2264": r"\le ",
    "\u2265": r"\ge ",
    "\u2260": r"\ne ",
    "\u00b7": r"\cdot ",
    "\u22c5": r"\cdot ",
    "\u00b0": r"^\circ ",
    "\u222a": r"\cup ",
    "\u2229": r"\cap ",
    "\u2208": r"\in ",
    "\u00b1": r"\pm ",
    "\u221a": r"\sqrt ",
    "\u2205": r"\emptyset ",
    "\u00a0": " ",
    "\u2009": " ",
    "\u202f": " ",
    "\u3000": " ",
    "\u200b": "",
    "\u20ac": "",
    "\u00a3": "",
    "\u00a5": "",
    "\u2019": "'",
    "\uff0c": ",",
    "\uff1a": ":",
    "\u00bd": "1/2",
    "\u00bc": "1/4",
    "\u00be": "3/4",
    "\u2153": "1/3",
    "\u2154": "2/3",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))

# words that are units or filler when they follow a number (MATH/GSM8K answers carry units)
_UNIT_WORDS = set(
    """
percent percents pct percentage cent cents dollar dollars usd yuan euro euros pound pounds rupees rs
unit units sq square cubic cm cm2 cm3 mm km m2 m3 meter meters metre metres kilometer kilometers
kilometre kilometres centimeter centimeters millimeter millimeters inch inches ft feet foot yard yards
yd mile miles mi mph kph kmh km/h mps hour hours hr hrs h minute minutes min mins second seconds sec
secs s day days week weeks month months year years yr yrs decade decades century centuries
degree degrees deg radian radians rad gram grams g kg kilogram kilograms mg lb lbs ounce ounces oz
ton tons tonne tonnes liter liters litre litres ml l gallon gallons gal quart quarts pint pints cup
cups tablespoon tablespoons teaspoon teaspoons people persons person students student children child
kids adults men women boys girls players teams items pieces piece apples oranges eggs books pages
cookies cakes pies marbles balls cards candies candy bottles boxes bags times point points mark marks
page sheets stamps coins tickets trees flowers cars miles/hour km/hr sqft sqm am pm a.m. p.m. o'clock
ways numbers integers values solutions triangles squares rectangles days. base
""".split()
)
_CONNECTOR_WORDS = {"and", "or", "und", "y", "et"}
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
_NUMBER_WORDS = {w: i for i, w in enumerate((_ONES + " seventeen eighteen nineteen").split())}
_NUMBER_WORDS.update(
    {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
)

_TEXT_CMD = (
    r"\\(?:text|textbf|textit|textnormal|textrm|textsf|texttt|mbox|hbox|mathrm|mathbf|mathit|mathsf|mathtt"
    r"|boldsymbol|bm|operatorname|emph)"
)
_TEXT_RE = re.compile(_TEXT_CMD + r"\s*\{([^{}]*)\}")
_SPACING_RE = re.compile(
    r"(?<!\\)\\[,;:! ]|\\(?:quad|qquad|enspace|thinspace|medspace|thickspace|hspace\{[^{}]*\}|displaystyle|textstyle"
    r"|limits|nolimits|mathstrut|strut|middle)(?![a-zA-Z])|~"
)


def _sanitize(s: str) -> str:
    if not isinstance(s, str):
        s = str(s)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in s[:0]) or True:
        s = s.encode("utf-8", "replace").decode("utf-8", "replace")
    return s.replace("\x00", "")


def _strip_text_commands(s: str) -> str:
    """``\\text{...}`` and friends: unwrap; a unit after a number goes, 'and'/'or' become commas."""
    for _ in range(20):
        m = _TEXT_RE.search(s)
        if not m:
            break
        inner = m.group(1)
        words = inner.strip().lower()
        before = s[: m.start()].rstrip()
        after = s[m.end() :]
        if words in _CONNECTOR_WORDS or words in {"and ", "or "}:
            rep = ","
        elif words.rstrip(".s") in {"", "cm^2", "cm^3"} and not before:
            rep = inner
        elif before and _is_unitish(words) and re.search(r"[\d}).]$", before):
            rep = " "
            after = re.sub(r"^\s*\^\s*(\{\s*\d\s*\}|\d)", "", after)  # cm^2
        else:
            rep = inner if not re.search(r"[a-zA-Z]{2}", inner) or before or after.strip() else inner
            if re.fullmatch(r"\s*[a-zA-Z][a-zA-Z ]*\s*", inner) and (before or after.strip()):
                # words next to math: a connector ("x is"), unit, or label -> drop unless single letter
                w = inner.strip()
                if len(w) > 1:
                    rep = "," if w.lower() in _CONNECTOR_WORDS else " "
        s = s[: m.start()] + " " + rep + " " + after
    return s


def _repeating(m) -> str:
    """0.1\\overline{6} -> \\frac{1}{6}: a repeating decimal as an exact fraction."""
    ip, fixed, rep = (m.group(1), m.group(2), m.group(3)) if m.group(3) else (m.group(4), m.group(5), m.group(6))
    if len(fixed) + len(rep) > 50:
        return m.group(0)
    num = int(fixed + rep) - (int(fixed) if fixed else 0)
    den = (10 ** len(rep) - 1) * 10 ** len(fixed)
    whole = int(ip) if ip else 0
    return rf"\frac{{{whole * den + num}}}{{{den}}}"


def _is_unitish(words: str) -> bool:
    ws = re.findall(r"[a-zA-Z/.']+", words)
    return bool(ws) and all(re.fullmatch(r"[a-zA-Z/.']+", w) for w in ws) and len(words) < 40


def normalize(s: str) -> str:
    """Canonical text of an answer: LaTeX noise removed, ready for string comparison and parsing."""
    s = _sanitize(s).strip()
    if len(s) > MAX_ANSWER_CHARS:
        return s
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)
    s = s.replace("\\$", " ").replace("$", " ")
    s = re.sub(
        r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![a-zA-Z])\s*(\\[{}|]|[()\[\]|.])?",
        lambda m: "" if m.group(1) in (None, ".") else m.group(1),
        s,
    )
    s = re.sub(r"(?<!\\)\\(?:[\[\]()])", " ", s)  # \[ \] \( \) display delimiters
    s = re.sub(r"\\lbrace(?![a-zA-Z])", r"\\{", s)
    s = re.sub(r"\\rbrace(?![a-zA-Z])", r"\\}", s)
    # thousands separators written for LaTeX; {,} before other than three digits is a decimal comma
    s = re.sub(r"(\d)\s*\{\s*,\s*\}\s*(?=\d{3}(?!\d))", r"\1", s)
    s = re.sub(r"(\d),\\!\s*(?=\d{3}(?!\d))", r"\1", s)
    s = re.sub(r"\\(?:dfrac|tfrac|cfrac)(?![a-zA-Z])", r"\\frac", s)
    s = re.sub(r"\\(?:dbinom|tbinom)(?![a-zA-Z])", r"\\binom", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])", " \u00b0 ", s)
    # models glue a macro to the next letter (\quadx_2); LaTeX would read one unknown macro
    s = re.sub(r"\\(qquad|quad|cdot(?!s)|times)(?=[a-zA-Z])", r"\\\1 ", s)
    s = _SPACING_RE.sub(" ", s)
    s = re.sub(r"\\(?:mathrm|mathbf|mathit|operatorname)\s*\{\s*e\s*\}", "e", s)
    s = _strip_text_commands(s)
    s = re.sub(r"\\mathbb\s*\{?\s*R\s*\}?", r"(-\\infty,\\infty)", s)
    s = re.sub(r"\(?\s*\\(?:pmod|bmod|mod)\s*\{?\s*\d+\s*\}?\s*\)?\s*$", "", s)  # 11 \pmod{13}
    s = re.sub(r"\(\s*mod\s*\d+\s*\)\s*$", "", s)
    s = re.sub(r"(\d*)\.(\d*)\\(?:overline|bar)\s*\{(\d+)\}|(\d*)\.(\d*)\\(?:overline|bar)\s*(\d)", _repeating, s)
    if "\\approx" in s:  # "3/8 \approx 0.375": the exact value before the approximation
        s = s.split("\\approx", 1)[0]
    s = re.sub(r"\\%|%", " ", s)
    s = re.sub(r"\\(?:ge|geq|geqslant)(?![a-zA-Z])", ">=", s)
    s = re.sub(r"\\(?:le|leq|leqslant)(?![a-zA-Z])", "<=", s)
    s = re.sub(r"\\(?:ne|neq)(?![a-zA-Z])", "!=", s)
    s = re.sub(r"\\gt(?![a-zA-Z])", ">", s)
    s = re.sub(r"\\lt(?![a-zA-Z])", "<", s)
    s = re.sub(r"\\varnothing(?![a-zA-Z])", r"\\emptyset", s)
    s = re.sub(r"\\(?:rm|bf|it|cal|mathcal|mathbb)(?![a-zA-Z])\s*", "", s) if re.search(r"\\(?:rm|bf|it)\b", s) else s
    s = re.sub(r"(?<=[)\]])\s*(?:or|and)\s*(?=[(\[])", ", ", s)  # (11,7)or(7,11)
    s = re.sub(r"\s+", " ", s).strip()
    # trailing punctuation and words that are units/filler after a number
    for _ in range(6):
        old = s
        # a '!' after a number or bracket is a factorial; a lone trailing backslash is a typo
        s = re.sub(r"(?:[\s.;,:?]|(?<![\d)}!])!|\\)+$", "", s)
        m = re.search(r"(?<=[\d})\s])\s*([a-zA-Z][a-zA-Z/.']*)(\s*\^\s*(?:\{\s*\d\s*\}|\d))?$", s)
        if m and m.group(1).lower().rstrip(".") in _UNIT_WORDS and re.search(r"[\d}]\s*$", s[: m.start()]):
            s = s[: m.start()].rstrip()
        m = re.match(r"^(?:x\s*\\in|\\in)\s+", s)
        if m:
            s = s[m.end() :]
        if s == old:
            break
    s = s.replace("\u00b0", " \u00b0 ")
    if not re.search(r"\\(?:sin|cos|tan|cot|sec|csc)(?![a-zA-Z])", s):
        s = re.sub(r"\s*\u00b0\s*$", "", s)  # a trailing degree sign is a unit
    s = re.sub(r"\s+", " ", s).strip()
    return _whole_number(s)


_SCI_X_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s*[xX]\s*(10\s*\^\s*(?:\{\s*-?\d+\s*\}|-?\d+))")


def _whole_number(s: str) -> str:
    """An answer that is one number written with thousands separators or as ``2.5 x 10^6``."""
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        return s.replace(",", "")
    m = _SCI_X_RE.fullmatch(s)
    if m:
        return f"{m.group(1)} \\times {m.group(2)}"
    return s


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------

_TOK = re.compile(
    r"(?P<num>\d+(?:\.\d*)?(?:[eE][+-]?\d+(?![\d.]))?|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<cmd>\\[a-zA-Z]+|\\.)"
    r"|(?P<word>[a-zA-Z]+)"
    r"|(?P<op><=|>=|!=|==|=<|=>|[-+*/^_()\[\]{}|,;:=<>!'&.\u00b0])"
    r"|(?P<sp>\s+)"
    r"|(?P<bad>.)",
    re.S,
)

_FUNCS = {
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "cot": sympy.cot,
    "sec": sympy.sec,
    "csc": sympy.csc,
    "arcsin": sympy.asin,
    "arccos": sympy.acos,
    "arctan": sympy.atan,
    "arccot": sympy.acot,
    "arcsec": sympy.asec,
    "arccsc": sympy.acsc,
    "sinh": sympy.sinh,
    "cosh": sympy.cosh,
    "tanh": sympy.tanh,
    "coth": sympy.coth,
    "exp": sympy.exp,
    "ln": sympy.log,
    "log": sympy.log,
    "lg": lambda x: sympy.log(x, 10),
    "det": None,
    "gcd": None,
    "lcm": None,
    "max": None,
    "min": None,
}
_TRIG = {"sin", "cos", "tan", "cot", "sec", "csc"}
# commands whose argument is a name (\overline{AB}, \angle ABC), not a value
_NAME_COMMANDS = set(
    "overline bar vec hat widehat overrightarrow angle triangle mathbf mathrm mathit boldsymbol mathbb mathcal".split()
)
_GREEK = set(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi "
    "rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Phi Psi Omega".split()
)


def tokenize(s: str) -> list[tuple[str, str]]:
    out = []
    for m in _TOK.finditer(s):
        kind = m.lastgroup
        text = m.group(kind)
        if kind == "sp":
            continue
        if kind == "bad":
            raise ParseError(f"unexpected character {text!r}")
        if kind == "cmd" and text in ("\\{", "\\}"):
            kind, text = "op", text
        out.append((kind, text))
    return out


# ---------------------------------------------------------------------------------------------
# expression parser
# ---------------------------------------------------------------------------------------------

_BIG_DIGITS = 5000  # numbers with more digits than this are kept unevaluated


def _log10_abs(x) -> float | None:
    try:
        if isinstance(x, sympy.Integer) or isinstance(x, sympy.Rational):
            p, q = abs(int(x.p)), abs(int(x.q))
            return (p.bit_length() - q.bit_length()) * 0.30103
        if isinstance(x, sympy.Pow) and not x.free_symbols:
            return None
    except Exception:
        return None
    return None


def _safe_pow(base, exp):
    if base.is_Number and exp.is_Number:
        if isinstance(exp, sympy.Integer):
            lb = _log10_abs(base)
            if lb is not None and abs(lb) * abs(int(exp)) > _BIG_DIGITS and abs(int(exp)) > 64:
                return sympy.Pow(base, exp, evaluate=False)
        if isinstance(exp, sympy.Rational) and abs(exp.q) > 1000:
            return sympy.Pow(base, exp, evaluate=False)
        return sympy.Pow(base, exp)
    if _is_huge(base) or _is_huge(exp):
        return sympy.Pow(base, exp, evaluate=False)
    return sympy.Pow(base, exp)


def _is_huge(e) -> bool:
    """True for an unevaluated power tower or a number too large to touch."""
    if isinstance(e, sympy.Pow) and e.base.is_Number:
        x = e.exp
        if x.is_Integer and abs(int(x)) > 64 or x.is_Rational and abs(x.q) > 1000 or _is_huge(x):
            return True  # only _safe_pow leaves such powers unevaluated
    if isinstance(e, sympy.Integer) and int(e).bit_length() > 20000:
        return True
    return (
        any(_is_huge(a) for a in getattr(e, "args", ())[:4])
        if isinstance(e, sympy.Basic) and len(e.args) < 5 and not e.is_Atom
        else False
    )


def _safe_mul(a, b):
    if _is_huge(a) or _is_huge(b):
        return sympy.Mul(a, b, evaluate=False)
    return a * b


def _safe_add(a, b):
    if _is_huge(a) or _is_huge(b):
        return sympy.Add(a, b, evaluate=False)
    return a + b


class _Parser:
    """Recursive descent over tokens. Grammar (loosest first): relation > sum > product > unary >
    power > postfix > atom, with implicit multiplication between adjacent atoms."""

    def __init__(self, tokens, *, trig_degrees=False):
        self.t = tokens
        self.i = 0
        self.depth = 0
        self.decimals: list[str] = []
        self.trig_depth = 0

    # -- helpers
    def peek(self, k=0):
        j = self.i + k
        return self.t[j] if j < len(self.t) else ("eof", "")

    def next(self):
        tok = self.peek()
        self.i += 1
        return tok

    def accept(self, text):
        if self.peek()[1] == text:
            self.i += 1
            return True
        return False

    def expect(self, text):
        if not self.accept(text):
            raise ParseError(f"expected {text!r} at token {self.i}: {self.peek()!r}")

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError("nesting too deep")

    # -- grammar
    def parse_sum(self):
        self.enter()
        try:
            if self.peek()[1] in ("+", "-"):
                left = None
            else:
                left = self.parse_product()
            while self.peek()[1] in ("+", "-"):
                op = self.next()[1]
                right = self.parse_product()
                if op == "-":
                    right = _safe_mul(Integer(-1), right)
                left = right if left is None else _safe_add(left, right)
            if left is None:
                raise ParseError("empty expression")
            return left
        finally:
            self.depth -= 1

    _STOP = set(
        r"+ - = < > <= >= != == =< => ) ] } \} , ; : & | eof \\ \cup \cap \to \in \pm \mp \rfloor \rceil \end \right"
        r" \rangle".split()
    )

    def parse_product(self, stop_at_func=False):
        left = self.parse_unary()
        while True:
            kind, text = self.peek()
            if text in ("*", "\\cdot", "\\times", "\\ast"):
                self.next()
                left = _safe_mul(left, self.parse_unary())
            elif text in ("/", "\\div"):
                self.next()
                right = self.parse_unary()
                if right == 0:
                    raise ParseError("division by zero")
                left = _safe_mul(left, _safe_pow(right, Integer(-1)))
            elif text in self._STOP or kind == "eof" or text == "\u00b0":
                return left
            elif text == "|":
                return left
            elif stop_at_func and (kind == "cmd" and text[1:] in _FUNCS or kind == "word" and text in _FUNCS):
                return left
            else:  # implicit multiplication
                left = _safe_mul(left, self.parse_power())

    def parse_unary(self):
        if self.accept("-"):
            return _safe_mul(Integer(-1), self.parse_unary())
        if self.accept("+"):
            return self.parse_unary()
        return self.parse_power()

    def parse_power(self):
        base = self.parse_postfix()
        while self.peek()[1] == "^":
            self.next()
            exp = self.parse_exponent()
            base = _safe_pow(base, exp)
            base = self.parse_factorials(base)
        return base

    def parse_exponent(self):
        self.enter()
        try:
            if self.peek()[1] == "{":
                return self.parse_group()
            if self.peek()[1] in ("-", "+"):
                sign = -1 if self.next()[1] == "-" else 1
                return _safe_mul(Integer(sign), self.parse_exponent())
            kind, text = self.peek()
            if kind == "num":  # x^23 in LaTeX means x^2 3; but models write x^23 meaning 23 -- keep whole
                self.next()
                return self._number(text)
            return self.parse_postfix()
        finally:
            self.depth -= 1

    def parse_factorials(self, e):
        while self.peek()[1] == "!" and self.peek(1)[1] != "=":
            self.next()
            if e.is_Integer and int(e) > 3000:
                e = sympy.factorial(e, evaluate=False)
            else:
                e = sympy.factorial(e)
        return e

    def parse_postfix(self):
        e = self.parse_atom()
        e = self.parse_factorials(e)
        if self.peek()[1] == "\u00b0":  # degrees: radians inside a trig function, else a unit
            self.next()
            if self.trig_depth:
                e = e * sympy.pi / 180
        while self.peek()[1] == "'":  # f' as a name
            self.next()
            e = sympy.Symbol(str(e) + "'")
        return e

    def parse_group(self):
        """{ ... } as a grouping."""
        self.expect("{")
        e = self.parse_sum()
        self.expect("}")
        return e

    def parse_arg(self):
        """A command argument: {group} or a single token (\\frac12, \\sqrt3)."""
        kind, text = self.peek()
        if text == "{":
            return self.parse_group()
        if kind == "num":
            self.next()
            # \frac12: one digit per argument
            if len(text) > 1 and text.isdigit():
                self.t[self.i - 1 : self.i] = [("num", text[0]), ("num", text[1:])]
                return Integer(int(text[0]))
            return self._number(text)
        if kind == "word":
            self.next()
            if len(text) > 1:
                self.t[self.i - 1 : self.i] = [("word", text[0]), ("word", text[1:])]
            return self._symbol(text[0])
        return self.parse_atom()

    def _number(self, text):
        if "e" in text or "E" in text:
            mant, _, ex = text.replace("E", "e").partition("e")
            if abs(int(ex)) > 400:
                raise ParseError("exponent too large")
            self.decimals.append(mant)
            return Rational(mant) * Integer(10) ** int(ex)
        if "." in text:
            self.decimals.append(text)
            if text.endswith("."):
                text = text[:-1]
            return Rational(text)
        if len(text) > 4000:
            raise ParseError("number too long")
        return Integer(int(text))

    def _symbol(self, name):
        if name == "e":
            return sympy.E
        if name == "i":
            return sympy.I
        return sympy.Symbol(name)

    def _subscript(self, base_name):
        """x_1, x_{12}, a_{n-1}: a named symbol; an expression subscript makes an indexed function."""
        self.next()  # '_'
        kind, text = self.peek()
        if text == "{":
            start = self.i
            depth = 0
            parts = []
            while True:
                k, t = self.next()
                if k == "eof":
                    raise ParseError("unbalanced subscript")
                if t == "{":
                    depth += 1
                    if depth == 1:
                        continue
                elif t == "}":
                    depth -= 1
                    if depth == 0:
                        break
                parts.append(t)
            sub = "".join(parts)
            if re.fullmatch(r"[A-Za-z0-9]+", sub):
                return sympy.Symbol(f"{base_name}_{sub}")
            # expression subscript: F_{n-k-1} -> F_(n - k - 1)
            end = self.i
            inner = _Parser(self.t[start + 1 : end - 1])
            try:
                expr = inner.parse_sum()
            except ParseError:
                return sympy.Symbol(f"{base_name}_{sub}")
            return sympy.Function(base_name + "_")(expr)
        if kind in ("num", "word"):
            self.next()
            if kind == "word" and len(text) > 1:
                self.t[self.i - 1 : self.i] = [("word", text[0]), ("word", text[1:])]
                text = text[0]
            elif kind == "num" and len(text) > 1 and not text.isdigit():
                raise ParseError("bad subscript")
            return sympy.Symbol(f"{base_name}_{text}")
        if kind == "cmd":
            self.next()
            return sympy.Symbol(f"{base_name}_{text[1:]}")
        raise ParseError("bad subscript")

    def parse_atom(self):
        self.enter()
        try:
            return self._atom()
        finally:
            self.depth -= 1

    def _atom(self):
        kind, text = self.next()
        if kind == "num":
            if self.peek()[1] == "_":  # base-n numeral 204_5: keep as a name
                base = self._subscript(text)
                return sympy.Symbol("num" + str(base))
            return self._number(text)
        if text in ("(", "["):
            e = self.parse_sum()
            close = self.next()[1]
            if close not in (")", "]"):
                raise ParseError("unbalanced bracket")
            if text == "[" and close == "]" or text == "(" and close == ")":
                return e
            raise ParseError("interval inside an expression")
        if text == "{":
            e = self.parse_sum()
            self.expect("}")
            return e
        if text == "|":
            e = self.parse_sum()
            self.expect("|")
            return sympy.Abs(e)
        if kind == "word":
            return self._word(text)
        if kind == "cmd":
            return self._command(text[1:])
        raise ParseError(f"unexpected token {text!r}")

    def _word(self, text):
        if text in _FUNCS or text == "sqrt":
            return self._function(text)
        if text == "pi":
            return sympy.pi
        if len(text) > 1:  # implicit product of letters: split off the first one
            self.t[self.i - 1 : self.i] = [("word", text[0]), ("word", text[1:])]
            text = text[0]
        if self.peek()[1] == "_":
            return self._subscript(text)
        if self.peek()[1] == "(" and text in "fghFGHpqPQ" and self._looks_like_call():
            self.next()
            arg = self.parse_sum()
            args = [arg]
            while self.accept(","):
                args.append(self.parse_sum())
            self.expect(")")
            return sympy.Function(text)(*args)
        return self._symbol(text)

    def _looks_like_call(self):
        # f(x), g(2), p(x) -- a single-letter function applied to something short
        return True

    def _function(self, name):
        power = None
        if self.peek()[1] == "^":  # \sin^2 x
            self.next()
            power = self.parse_exponent()
        base = None
        if name == "log" and self.peek()[1] == "_":
            self.next()
            base = self.parse_arg()
        if name == "sqrt":
            arg = self.parse_arg()
            val = sympy.sqrt(arg)
        else:
            self.trig_depth += name in _TRIG
            if self.peek()[1] in ("(", "{"):
                open_ = self.next()[1]
                arg = self.parse_sum()
                self.expect(")" if open_ == "(" else "}")
                if self.peek()[1] == "\u00b0":
                    self.next()
                    arg = arg * sympy.pi / 180
            else:
                arg = self.parse_product(stop_at_func=True)
                if self.peek()[1] == "\u00b0":
                    self.next()
                    arg = arg * sympy.pi / 180
            self.trig_depth -= name in _TRIG
            fn = _FUNCS.get(name)
            if fn is None:
                raise ParseError(f"unsupported function {name}")
            if name == "log" and base is not None:
                val = sympy.log(arg, base)
            else:
                val = fn(arg)
        if power is not None:
            if power == -1 and name in ("sin", "cos", "tan"):
                val = {"sin": sympy.asin, "cos": sympy.acos, "tan": sympy.atan}[name](val.args[0])
            else:
                val = _safe_pow(val, power)
        return val

    def _command(self, name):
        if name == "frac":
            num = self.parse_arg()
            den = self.parse_arg()
            if den == 0:
                raise ParseError("division by zero")
            return _safe_mul(num, _safe_pow(den, Integer(-1)))
        if name == "binom":
            n = self.parse_arg()
            k = self.parse_arg()
            return sympy.binomial(n, k)
        if name == "sqrt":
            if self.peek()[1] == "[":
                self.next()
                idx = self.parse_sum()
                self.expect("]")
                arg = self.parse_arg()
                return _safe_pow(arg, _safe_pow(idx, Integer(-1)))
            return sympy.sqrt(self.parse_arg())
        if name in _FUNCS:
            return self._function(name)
        if name == "pi":
            return sympy.pi
        if name == "infty" or name == "infinity":
            return sympy.oo
        if name in _GREEK:
            if self.peek()[1] == "_":
                return self._subscript(name)
            return sympy.Symbol(name)
        if name in ("lfloor", "lceil"):
            e = self.parse_sum()
            self.expect("\\rfloor" if name == "lfloor" else "\\rceil")
            return sympy.floor(e) if name == "lfloor" else sympy.ceiling(e)
        if name in _NAME_COMMANDS:
            if self.peek()[1] == "{":
                # a name: \overline{AB}, \angle ABC
                self.next()
                depth = 1
                parts = []
                while depth:
                    k, t = self.next()
                    if k == "eof":
                        raise ParseError("unbalanced")
                    depth += (t == "{") - (t == "}")
                    if depth:
                        parts.append(t)
                inner = "".join(parts)
                return sympy.Symbol(name + ":" + inner, commutative=not inner.startswith("MAT"))
            if name in ("angle", "triangle"):
                k, t = self.next()
                return sympy.Symbol(name + ":" + t)
            return self.parse_atom()
        if name == "sum" or name == "prod":
            return self._sum(name)
        if name in ("emptyset",):
            raise ParseError("set")
        if name == "%":
            return Integer(1)
        if name in ("ell",):
            return sympy.Symbol("l")
        raise ParseError(f"unsupported command \\{name}")

    def _sum(self, name):
        # \sum_{k=a}^{b} body
        self.expect("_")
        self.expect("{")
        var = self.next()
        if var[0] != "word" or len(var[1]) != 1:
            raise ParseError("sum variable")
        self.expect("=")
        lo = self.parse_sum()
        self.expect("}")
        self.expect("^")
        hi = self.parse_exponent()
        body = self.parse_product(stop_at_func=False)
        k = sympy.Symbol(var[1])
        cls = sympy.Sum if name == "sum" else sympy.Product
        return cls(body, (k, lo, hi))


def parse_expr(s: str):
    """One scalar expression (no relations, lists or intervals); raises ParseError."""
    toks = tokenize(s)
    if not toks:
        raise ParseError("empty")
    p = _Parser(toks)
    e = p.parse_sum()
    if p.peek()[0] != "eof":
        raise ParseError(f"trailing tokens at {p.peek()!r}")
    info = ExprInfo()
    if p.decimals:
        info = ExprInfo(has_float=any("." in d for d in p.decimals))
        if len(p.decimals) == 1 and re.fullmatch(r"-?\s*(\d+\.?\d*|\.\d+)", s.strip()):
            d = p.decimals[0]
            digits = d.replace(".", "").lstrip("0")
            frac = len(d.split(".", 1)[1]) if "." in d else 0
            info = ExprInfo(decimal_digits=len(digits), decimal_last=-frac, has_float=True)
    return e, info


# ---------------------------------------------------------------------------------------------
# answer structure: lists, sets, tuples, intervals, relations, matrices
# ---------------------------------------------------------------------------------------------

_OPEN = {"(": ")", "[": "]", "{": "}", "\\{": "\\}"}
_RELOPS = ("<=", ">=", "!=", "=<", "=>", "==", "=", "<", ">")


def split_top(s: str, seps: tuple[str, ...]) -> list[str]:
    """Split at separators that are outside every bracket. Half-open intervals are brackets too."""
    out, depth, start, i, n = [], 0, 0, 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\" and depth == 0:
            hit = next(
                (
                    sep
                    for sep in seps
                    if sep.startswith("\\")
                    and sep != "\\\\"
                    and s.startswith(sep, i)
                    and not (i + len(sep) < n and s[i + len(sep)].isalpha())
                ),
                None,
            )
            if hit:
                out.append(s[start:i])
                start = i = i + len(hit)
                continue
        if c == "\\" and i + 1 < n:
            two = s[i : i + 2]
            if two == "\\{":
                depth += 1
            elif two == "\\}":
                depth -= 1
            elif two == "\\\\" and depth == 0 and "\\\\" in seps:
                out.append(s[start:i])
                start = i + 2
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            for sep in seps:
                if s.startswith(sep, i) and sep != "\\\\":
                    if sep.isalpha() or sep.startswith("\\"):
                        # word separators need boundaries
                        before = s[i - 1] if i else " "
                        after = s[i + len(sep)] if i + len(sep) < n else " "
                        if before.isalpha() or after.isalpha():
                            continue
                    out.append(s[start:i])
                    start = i + len(sep)
                    i = start - 1
                    break
        i += 1
    out.append(s[start:])
    return out


def _matching_close(s: str, i: int) -> int:
    """Index of the bracket closing the one at s[i] (any of ( [ with ) ] ), or -1."""
    depth = 0
    j = i
    while j < len(s):
        c = s[j]
        if c == "\\" and j + 1 < len(s):
            if s[j + 1] == "{":
                depth += 1
            elif s[j + 1] == "}":
                depth -= 1
            j += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return -1


def _expand_pm(s: str) -> list[str] | None:
    if "\\pm" not in s and "\\mp" not in s:
        return None
    outs = [s]
    for _ in range(3):
        nxt = []
        for t in outs:
            m = re.search(r"\\(pm|mp)(?![a-zA-Z])", t)
            if not m:
                nxt.append(t)
                continue
            a, b = ("+", "-") if m.group(1) == "pm" else ("-", "+")
            nxt.append(t[: m.start()] + a + t[m.end() :])
            nxt.append(t[: m.start()] + b + t[m.end() :])
        outs = nxt
    if any("\\pm" in t or "\\mp" in t for t in outs):
        raise ParseError("too many \\pm")
    return outs


_MATRIX_RE = re.compile(
    r"^\\begin\{(pmatrix|bmatrix|Bmatrix|vmatrix|Vmatrix|matrix|smallmatrix|array)\}(\{[^{}]*\})?(.*?)\\end\{\1\}$",
    re.S,
)


def _parse_matrix(s: str):
    m = _MATRIX_RE.match(s.strip())
    if not m:
        return None
    if m.group(1) in ("vmatrix", "Vmatrix"):
        raise ParseError("determinant")
    body = m.group(3)
    rows = [r for r in re.split(r"\\\\", body) if r.strip() and not re.fullmatch(r"\s*\\hline\s*", r)]
    cells = [[parse_expr(c.strip())[0] for c in r.replace("\\hline", "").split("&")] for r in rows]
    if not cells or any(len(r) != len(cells[0]) for r in cells):
        raise ParseError("ragged matrix")
    return sympy.ImmutableMatrix(cells)


def _matrix_expr(s: str):
    """A matrix, or a sum/product of matrices (and scalars): replace each by a placeholder, parse."""
    envs = list(re.finditer(r"\\begin\{(pmatrix|bmatrix|Bmatrix|matrix|smallmatrix|array)\}.*?\\end\{\1\}", s, re.S))
    if not envs:
        return None
    mats = {}
    out, last = [], 0
    for k, m in enumerate(envs):
        name = f"MAT{k}"
        mats[name] = _parse_matrix(m.group(0))
        out.append(s[last : m.start()])
        out.append(f" \\mathrm{{{name}}} ")
        last = m.end()
    out.append(s[last:])
    text = "".join(out).strip()
    text = re.sub(r"^\[\s*(\\mathrm\{MAT\d+\})\s*\]$", r"\1", text)  # \left[ array \right]
    if re.fullmatch(r"\\mathrm\{MAT0\}", text):
        return mats["MAT0"]
    # products and sums of matrices: parse with non-commutative symbols, then substitute
    toks = tokenize(text)
    p = _Parser(toks)
    e = p.parse_sum()
    if p.peek()[0] != "eof":
        raise ParseError("trailing tokens after matrix")
    subs = {}
    for sym in e.free_symbols:
        nm = str(sym)
        if nm.startswith("mathrm:MAT"):
            subs[sym] = nm
    # rebuild with matrices: evaluate the expression tree by hand (Add/Mul/Pow only)
    return _eval_matrix_tree(e, {s_: mats[str(s_).split(":", 1)[1]] for s_ in subs})


def _eval_matrix_tree(e, env):
    if e in env:
        return env[e]
    if e.is_Number or not e.free_symbols & set(env):
        return e
    if isinstance(e, sympy.Add):
        acc = None
        for a in e.args:
            v = _eval_matrix_tree(a, env)
            acc = v if acc is None else acc + v
        return acc
    if isinstance(e, sympy.Mul):
        # matrix placeholders are non-commutative symbols, so sympy keeps their order
        acc = sympy.Integer(1)
        for a in e.args:
            v = _eval_matrix_tree(a, env)
            acc = v * acc if isinstance(acc, sympy.Integer) and acc == 1 else acc * v
        return acc
    if isinstance(e, sympy.Pow) and e.exp.is_Integer and 0 < int(e.exp) <= 20:
        return _eval_matrix_tree(e.base, env) ** int(e.exp)
    raise ParseError("unsupported matrix expression")


def _is_label(s: str) -> bool:
    """Left side of ``x = 3`` that names the answer: x, a_3, f(x), |AB|, A:B, \\frac{NO}{BO}, (p,q)."""
    t = s.strip()
    if not t or len(t) > 40:
        return False
    if re.fullmatch(r"\(\s*[A-Za-z](?:_\{?\w+\}?)?(\s*,\s*[A-Za-z](?:_\{?\w+\}?)?)+\s*\)", t):
        return True
    # digits only inside subscripts or function arguments
    core = re.sub(r"_\{[^{}]*\}|_\w|\([^()]*\)|\\[a-zA-Z]+", "", t)
    if re.search(r"\d", core):
        return False
    if re.search(r"(?<!^)[+\-]", core.replace(" ", "")) or core.strip().startswith("-"):
        return False
    return bool(re.search(r"[A-Za-z]", t))


def parse_value(s: str, depth: int = 0):
    """The structure of a normalised answer. Raises ParseError when it is not mathematics."""
    if depth > 8:
        raise ParseError("too deep")
    s = s.strip()
    if not s:
        raise ParseError("empty")
    # multiple choice
    m = re.fullmatch(r"\(?\s*([A-E])\s*\)?", s)
    if m and (s.startswith("(") or len(s) == 1):
        return ("letter", m.group(1))
    # union
    parts = split_top(s, ("\\cup",))
    if len(parts) > 1:
        return ("union", [parse_value(p, depth + 1) for p in parts])
    # top-level lists: ';' groups of ',' items
    semi = split_top(s, (";",))
    if len(semi) > 1:
        groups = [split_top(g, (",",)) for g in semi]
        if any(len(g) > 1 for g in groups):
            vals = []
            for g in groups:
                items = [parse_value(x, depth + 1) for x in g if x.strip()]
                items = [_unlabel(v) for v in items]
                vals.append(items[0] if len(items) == 1 else ("tuple", "(", ")", items))
            return ("coll", vals)
        return ("coll", [parse_value(x, depth + 1) for x in semi if x.strip()])
    items = split_top(s, (",", " and ", " or ", "\\text{and}"))
    items = [x for x in items if x.strip()]
    if len(items) > 1:
        return ("coll", [v for x in items for v in _flatten_pm(parse_value(x, depth + 1))])
    if len(items) == 1 and items[0].strip() != s:
        return parse_value(items[0], depth + 1)
    # "and"/"or" words without spaces around already handled; plus-minus expands to a collection,
    # inside each element of a set or tuple (expanding the whole would multiply out the signs)
    pm = None if _is_bracketed_list(s) else _expand_pm(s)
    if pm is not None:
        return ("coll", [parse_value(x, depth + 1) for x in pm])
    # relations (a chain a < x < b, or lhs = rhs)
    rel = _split_relation(s)
    if rel is not None:
        return _relation_value(rel, depth)
    # ratio a:b
    if ":" in s and "\\" not in s.replace("\\frac", ""):
        parts = split_top(s, (":",))
        if len(parts) == 2 and all(p.strip() for p in parts):
            return ("ratio", [parse_value(p, depth + 1) for p in parts])
    v = _bracketed_value(s, depth)
    return v if v is not None else _scalar_value(s)


def _bracketed_value(s: str, depth: int):
    """Sets ``\\{...\\}``, ``{...}`` groups, tuples and intervals; None for anything else."""
    # sets
    if s.startswith("\\{") and s.endswith("\\}") and _matching_brace(s) == len(s) - 2:
        inner = s[2:-2].strip()
        if not inner:
            return ("coll", [])
        items = split_top(inner, (",", ";"))
        return ("coll", [v for x in items if x.strip() for v in _flatten_pm(parse_value(x, depth + 1))])
    if s in ("\\emptyset", "\\{\\}", "{}"):
        return ("coll", [])
    if s.startswith("{") and s.endswith("}") and _matching_close(s, 0) == len(s) - 1:
        inner = s[1:-1].strip()
        items = split_top(inner, (",",))
        if len(items) > 1:
            return ("coll", [parse_value(x, depth + 1) for x in items if x.strip()])
        return parse_value(inner, depth + 1)
    # tuples and intervals
    if s[0] in "([" and s[-1] in ")]" and _matching_close(s, 0) == len(s) - 1:
        inner = s[1:-1]
        items = split_top(inner, (",", ";"))
        if len(items) > 1:
            return ("tuple", s[0], s[-1], [parse_value(x, depth + 1) for x in items])
    return None


def _scalar_value(s: str):
    """Matrices, number words, text, mixed numbers, and else one expression."""
    # matrices
    if "\\begin" in s:
        m = _matrix_expr(s)
        if m is not None:
            if isinstance(m, sympy.MatrixBase):
                return ("matrix", sympy.ImmutableMatrix(m))
            raise ParseError("not a matrix")
    # number words
    w = s.lower().replace("-", " ").split()
    if w and all(x in _NUMBER_WORDS for x in w) and len(w) <= 2:
        return ("expr", Integer(sum(_NUMBER_WORDS[x] for x in w)), ExprInfo())
    # words are text
    if re.fullmatch(r"[A-Za-z][A-Za-z' ]*", s) and (len(s.replace(" ", "")) >= 3 or " " in s):
        return ("text", s.lower().replace(" ", ""))
    # mixed numbers: 2\frac13, 7 3/4
    m = re.fullmatch(r"(-?)(\d+)\s*\\frac\s*(\{\s*\d+\s*\}|\d)\s*(\{\s*\d+\s*\}|\d)", s)
    if m:
        a, b, c = int(m.group(2)), int(m.group(3).strip("{} ")), int(m.group(4).strip("{} "))
        if c and b < c:
            v = Integer(a) + Rational(b, c)
            return ("expr", -v if m.group(1) else v, ExprInfo())
    m = re.fullmatch(r"(-?)(\d+)\s+(\d+)\s*/\s*(\d+)", s)
    if m and int(m.group(4)) and int(m.group(3)) < int(m.group(4)):
        v = Integer(int(m.group(2))) + Rational(int(m.group(3)), int(m.group(4)))
        return ("expr", -v if m.group(1) else v, ExprInfo())
    e, info = parse_expr(s)
    return ("expr", e, info)


def _is_bracketed_list(s: str) -> bool:
    """A whole ``\\{...\\}`` set, or a tuple or interval of several items."""
    if s.startswith("\\{") and s.endswith("\\}"):
        return _matching_brace(s) == len(s) - 2
    if s[0] in "([" and s[-1] in ")]" and _matching_close(s, 0) == len(s) - 1:
        return len(split_top(s[1:-1], (",", ";"))) > 1
    return False


def _matching_brace(s: str) -> int:
    """For s starting with '\\{': index of the matching '\\}'."""
    depth = 0
    i = 0
    while i < len(s):
        if s.startswith("\\{", i):
            depth += 1
            i += 2
            continue
        if s.startswith("\\}", i):
            depth -= 1
            if depth == 0:
                return i
            i += 2
            continue
        i += 1
    return -1


def _flatten_pm(v):
    if v[0] == "coll" and v is not None:
        return v[1]
    return [v]


def _split_relation(s: str):
    """[(operand, op, operand, op, ...)] at top level, or None."""
    out, depth, start, i, n = [], 0, 0, 0, len(s)
    ops = []
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n:
            depth += (s[i + 1] == "{") - (s[i + 1] == "}")  # a set \{x = 1\} is not a relation
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and c in "<>=!":
            for op in _RELOPS:
                if s.startswith(op, i):
                    if op == "!=" or c != "!":
                        out.append(s[start:i])
                        ops.append({"=<": "<=", "=>": ">=", "==": "="}.get(op, op))
                        i += len(op)
                        start = i
                        break
            else:
                i += 1
            continue
        i += 1
    if not ops:
        return None
    out.append(s[start:])
    if any(not x.strip() for x in out):
        raise ParseError("empty side of a relation")
    return out, ops


def _relation_value(rel, depth):
    sides, ops = rel
    if all(op == "=" for op in ops):
        vals = [parse_value(x, depth + 1) for x in sides]
        if all(v[0] == "expr" and not v[1].free_symbols for v in vals):
            return vals[-1]  # a computation 1/2 + 1/3 = 5/6: its result
    if len(ops) == 1:
        lhs, rhs = sides
        return ("rel", ops[0], parse_value(lhs, depth + 1), parse_value(rhs, depth + 1), _is_label(lhs))
    if all(op == "=" for op in ops):  # a = b = 11: the last value, named by the first side
        return ("rel", "=", parse_value(sides[0], depth + 1), parse_value(sides[-1], depth + 1), _is_label(sides[0]))
    if len(ops) == 2 and ops[0] in ("<", "<=") and ops[1] in ("<", "<="):
        a, mid, b = sides
        return (
            "tuple",
            "(" if ops[0] == "<" else "[",
            ")" if ops[1] == "<" else "]",
            [parse_value(a, depth + 1), parse_value(b, depth + 1)],
        )
    if len(ops) == 2 and ops[0] in (">", ">=") and ops[1] in (">", ">="):
        b, mid, a = sides
        return (
            "tuple",
            "(" if ops[1] == ">" else "[",
            ")" if ops[0] == ">" else "]",
            [parse_value(a, depth + 1), parse_value(b, depth + 1)],
        )
    raise ParseError("unsupported relation chain")


def _unlabel(v):
    if v[0] == "rel" and v[1] == "=" and v[4]:
        return v[3]
    return v
