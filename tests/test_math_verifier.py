"""Tests of verifiers.math: extraction, equivalence, whole responses, properties, adversarial input."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import verifiers
from verifiers.math import extract_answer, is_equivalent, math_reward, verify

BOUND_S = 1.0
SLACK_S = 0.5  # the test machine is shared; the verifier itself aims at BOUND_S


# ---------------------------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------------------------

EXTRACTION = [
    # (response, expected final answer)
    (r"So the sum is $3 + 4 = \boxed{7}$.", "7"),
    (r"Thus the area is \boxed{\frac{25\pi}{4}} square units.", r"\frac{25\pi}{4}"),
    (r"Nested braces: $\boxed{\left\{ 1, 2 \right\}}$", r"\left\{ 1, 2 \right\}"),
    (r"Without braces the box holds one token: \boxed 5.", "5"),
    (r"\fbox{12}", "12"),
    ("<think> 37 + 48 = 85. 85 - 19 = 66. </think> <answer> 66 </answer>", "66"),
    ("<think>maybe \\boxed{65}</think>\n<answer>The answer is 66.</answer>", "66"),
    ("<think>I guess \\boxed{65}?</think> Checking again, it is \\boxed{66}.", "66"),
    ("The answer is 66.", "66"),
    ("Adding them gives 12. Therefore, the answer is $\\frac{3}{4}$.", "$\\frac{3}{4}$"),
    ("Final Answer: The final answer is 42. I hope it is correct.", "42"),
    ("Final Answer: The smallest such $k$ is 17.", "17"),
    ("Janet has 5 apples.\nShe buys 3 more.\n#### 8", "8"),
    ("**Answer:** 5", "5"),
    ("Therefore, the answer is **12**.", "12"),
    ("She earns 1,200 dollars.\n#### 1,200", "1,200"),
    # revision: box, prose, a different box -> the last box
    (r"First I got \boxed{12}. Wait, that double counts. Correcting, the total is \boxed{10}.", "10"),
    # one final statement of several boxes -> a multi-part answer
    (r"The solutions are \boxed{2} and \boxed{-3}.", "2, -3"),
    (r"$\boxed{k=45} \quad\text{and}\quad \boxed{n=2}$", "k=45, n=2"),
    # the same box repeated is one answer (never 840840)
    ("so \\boxed{840}. Let me double-check the count once more.\n\n**Final Answer**\n\\boxed{840}", "840"),
    (r"\boxed{840}, \boxed{840}", "840"),
    # bare answers pass through
    ("42", "42"),
    (r"\frac{1}{2}", r"\frac{1}{2}"),
    (r"(1, 2]", r"(1, 2]"),
    # prose without a marker: last formula, else last number
    (
        r"Hence the matrix is $\begin{pmatrix}1 & 0\\0 & 1\end{pmatrix}$ as required.",
        r"\begin{pmatrix}1 & 0\\0 & 1\end{pmatrix}",
    ),
    ("After paying 20 dollars she still has 35 dollars left over.", "35"),
    ("", None),
    (r"unbalanced \boxed{3", None),
]


@pytest.mark.parametrize("response, expected", EXTRACTION)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_extract_answer_non_string():
    assert extract_answer(None) is None
    assert extract_answer(b"\\boxed{1}") is None


# ---------------------------------------------------------------------------------------------
# equivalence of two answers
# ---------------------------------------------------------------------------------------------

EQUIVALENCE = [
    # (gold, pred, expected)
    # integers and formatting
    ("25", "025", True),
    ("25", "25.0", True),
    ("1234567", "1,234,567", True),
    ("1234567", "1{,}234{,}567", True),
    ("1234567", r"1,\!234,\!567", True),
    ("12345", "12346", False),
    ("100", "100.01", False),
    ("-7", "\u22127", True),
    ("18.90", r"\$18.9", True),
    ("50", r"50\text{ dollars}", True),
    ("12", "12 cm", True),
    ("12", r"12\text{ cm}^2", True),
    ("45", r"45^\circ", True),
    ("45", r"45^{\circ}", True),
    # percent is a unit
    ("40", r"40\%", True),
    (r"40\%", "40", True),
    (r"40\%", "0.4", False),
    # fractions and decimals
    (r"\frac{3}{4}", "0.75", True),
    (r"\frac{3}{4}", "3/4", True),
    (r"\frac{3}{4}", r"\dfrac{6}{8}", True),
    (r"\frac{3}{4}", r"\tfrac34", True),
    (r"\frac{2}{3}", "0.67", False),
    (r"\frac{2}{3}", "0.6666666667", True),
    (r"\frac{2}{3}", "0.6666666", False),
    (r"\frac{1}{3^{40}}", r"\frac{1}{3^{41}}", False),
    (r"\frac{1}{1000!}", r"\frac{1}{1001!}", False),
    (r"2\frac{1}{4}", r"\frac{9}{4}", True),
    ("6.02e23", r"6.02\times 10^{23}", True),
    # radicals and constants
    (r"2\sqrt{3}", r"\sqrt{12}", True),
    (r"2\sqrt{3}", r"2\sqrt3", True),
    (r"2\sqrt{3}", "2", False),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True),
    (r"\pi", "3.14", False),
    (r"\pi", "3.14159265358979", True),
    (r"e^{2}", r"\mathrm{e}^2", True),
    (r"1-\frac{1}{e}", r"1+\frac{1}{e}", False),
    (r"\sqrt{\frac{1}{n}}", r"\frac{1}{\sqrt{n}}", True),
    ("3+4i", "4i+3", True),
    ("3+4i", "3-4i", False),
    # expressions
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+2x+1", "(x-1)^2", False),
    (r"\frac{1}{x}+\frac{1}{y}", r"\frac{x+y}{xy}", True),
    (r"\sin^2 x + \cos^2 x", "1", True),
    (r"2\sin x\cos x", r"\sin 2x", True),
    ("|x|", "x", False),
    (r"\sin 30^\circ", r"\frac{1}{2}", True),
    (r"\log_2 8", "3", True),
    (r"\binom{5}{2}", "10", True),
    # equations and labels
    ("x=3", "3", True),
    ("3", "x = 3", True),
    ("f(2)=7", "7", True),
    ("y=2x+1", "2x - y + 1 = 0", True),
    ("y=2x+1", "y = 2x - 1", False),
    ("x+y=3", "3", False) if False else ("2x+y=3", "3", False),
    ("a=1, b=2", "b = 2, a = 1", True),
    ("a=1, b=2", "a = 2, b = 1", False),
    # inequalities and intervals
    (r"x \ge 3", r"[3, \infty)", True),
    (r"[3, \infty)", r"x \geq 3", True),
    (r"x > 3", r"[3, \infty)", False),
    ("x < 2", "2 > x", True),
    ("x < 2", "-x > -2", True),
    ("x < 2", "x > 2", False),
    (r"-1 < x \le 4", "(-1, 4]", True),
    ("(-1, 4]", "(-1, 4)", False),
    (r"(-\infty, 0) \cup (2, \infty)", r"(2, \infty) \cup (-\infty, 0)", True),
    (r"\{1, 2\} \cup \{3\}", r"\{3, 2, 1\}", True),
    # sets, lists, tuples
    ("1, 2, 3", "3, 2, 1", True),
    (r"\{1, 2, 3\}", "3,1,2", True),
    ("1, 2, 3", "1, 2", False),
    ("(1, 2)", "(2, 1)", False),
    ("(1, 2)", "[1, 2]", False),
    ("(1, 2)", r"\left(1, 2\right)", True),
    (r"(3, \frac{\pi}{2})", r"\left(3, \frac{\pi}{2}\right)", True),
    (r"\pm 3", "3, -3", True),
    (r"\pm 3", "3", False),
    (r"1 \pm \sqrt{2}", r"1+\sqrt2, 1-\sqrt2", True),
    ("3", r"3 \text{ or } 4", False),
    ("3", "1, 2, 3", False),
    # matrices and vectors
    (r"\begin{pmatrix}1 & 2\\3 & 4\end{pmatrix}", r"\begin{bmatrix}1 & 2\\3 & 4\end{bmatrix}", True),
    (r"\begin{pmatrix}1 & 2\\3 & 4\end{pmatrix}", r"\begin{pmatrix}1 & 3\\2 & 4\end{pmatrix}", False),
    (r"\begin{pmatrix}2\\4\end{pmatrix}", r"2\begin{pmatrix}1\\2\end{pmatrix}", True),
    (r"\begin{pmatrix}1\\-2\\3\end{pmatrix}", "(1, -2, 3)", True),
    # words, letters, names
    (r"\text{(B)}", "B", True),
    (r"\text{(B)}", "(B)", True),
    (r"\text{(B)}", "C", False),
    (r"\text{Tuesday}", "tuesday", True),
    (r"\text{Tuesday}", "Wednesday", False),
    ("5", "five", True),
    ("21", "twenty one", True),
    # repeating decimals, approximations, congruences, choices with their value
    (r"\frac{1}{3}", r"0.\overline{3}", True),
    (r"\frac{7}{6}", r"1.1\overline{6}", True),
    (r"\frac{1}{3}", "0.3", False),
    (r"\frac{5}{8}", r"\frac{5}{8} \approx 0.625", True),
    ("4", r"4 \pmod{7}", True),
    ("4", "4.0000000001", False),
    ("D", r"\textbf{(D)} 17", True),
    ("D", r"(E) 17", False),
    (r"(-\infty, -1) \cup (1, \infty)", r"x < -1 \text{ or } x > 1", True),
    (r"(-\infty, -1) \cup (1, \infty)", r"x < -1 \text{ or } x > 2", False),
    (r"\mathbb{R}", r"(-\infty, \infty)", True),
    # ratios and clock times
    ("3:2", "3:2", True),
    ("9:30", "9:45", False),
    # base-n numerals stay numerals
    ("1011_2", "1011_2", True),
    ("1011_2", "11", False),
]


@pytest.mark.parametrize("gold, pred, expected", EQUIVALENCE)
def test_is_equivalent(gold, pred, expected):
    assert is_equivalent(pred, gold) is expected


# ---------------------------------------------------------------------------------------------
# whole responses
# ---------------------------------------------------------------------------------------------

RESPONSES = [
    # (gold, response, expected)
    ("66", "<think> 37 + 48 = 85. 85 - 19 = 66. </think> <answer> 66 </answer>", True),
    ("66", "<think> 37 + 48 = 85. </think> <answer> 85 </answer>", False),
    ("66", "The answer is 66.", True),
    ("66", "#### 66", True),
    ("66", r"\boxed{66}", True),
    ("18", "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18", True),
    ("025", r"so the remainder is $\boxed{25}$.", True),
    (r"\frac{14}{3}", r"Adding up, $2 + \frac{5}{3} + 1 = \boxed{\frac{14}{3}}$.", True),
    (r"\frac{14}{3}", r"Adding up, $2 + \frac{5}{3} + 1 = \boxed{\frac{13}{3}}$.", False),
    ("3", r"The candidates are \boxed{1} \boxed{2} \boxed{3}", False),
    ("5", r"It is either \boxed{5 \text{ or } 6}.", False),
    ("6", r"I first found \boxed{5}. Hmm, but that misses one case, so the answer is \boxed{6}.", True),
    ("2, -3", r"The roots are $\boxed{-3}$ and $\boxed{2}$.", True),
    (r"(2, -1)", r"Solving the system, $(x, y) = \boxed{(2, -1)}$.", True),
    (r"x \in (1, 5]", r"so the solution set is $\boxed{1 < x \leq 5}$.", True),
    ("12", "He needs $4 \\times 3 = 12$ boxes.\n\nFinal Answer: 12", True),
    ("12", "irrelevant words 12abc", False),
]


@pytest.mark.parametrize("gold, response, expected", RESPONSES)
def test_verify(gold, response, expected):
    assert verify(response, gold) is expected


def test_reward_function_and_registry():
    assert "math" in verifiers.names()
    fn = verifiers.get("math")
    assert fn is math_reward
    assert fn("<answer>66</answer>", "66") == 1.0
    assert fn("<answer>65</answer>", "66") == 0.0
    assert fn(r"\boxed{x^2-1}", "(x-1)(x+1)", problem_id=3) == 1.0


def test_score_batch_math():
    completions = ["#### 18", r"\boxed{\frac{1}{2}}", r"\boxed{x^2+2x+1}", "The answer is 7.", r"\boxed{(x+1)^2}"]
    answers = ["18", "0.5", "(x+1)^2", "8", "(x-1)^2"]
    got = verifiers.score_batch("math", completions, answers, timeout_s=BOUND_S)
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_score_batch_empty():
    assert verifiers.score_batch("math", [], [], timeout_s=BOUND_S) == []


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------


def _atoms():
    ints = st.integers(-(10**6), 10**6).map(str)
    decimals = st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False, allow_infinity=False).map(str)
    fracs = st.tuples(st.integers(-99, 99), st.integers(1, 99)).map(lambda t: rf"\frac{{{t[0]}}}{{{t[1]}}}")
    roots = st.tuples(st.integers(1, 9), st.integers(2, 50)).map(lambda t: rf"{t[0]}\sqrt{{{t[1]}}}")
    names = st.sampled_from(["x", "y", r"\pi", "e", r"\alpha", "n"])
    return st.one_of(ints, decimals, fracs, roots, names)


def _answers():
    atom = _atoms()
    expr = st.recursive(
        atom,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["+", "-", r"\cdot "]), inner).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
            st.tuples(inner, inner).map(lambda t: rf"\frac{{{t[0]}}}{{{t[1]}}}"),
            inner.map(lambda a: f"({a})^{{2}}"),
            st.lists(inner, min_size=2, max_size=3).map(lambda xs: "(" + ", ".join(xs) + ")"),
        ),
        max_leaves=5,
    )
    return expr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_answers())
def test_answer_equals_itself_and_its_boxed_response(answer):
    assert is_equivalent(answer, answer)
    assert verify(rf"Working it out carefully, we get $\boxed{{{answer}}}$.", answer)
    assert verify(rf"<think>so it is {answer}</think> <answer>\boxed{{{answer}}}</answer>", answer)


@settings(max_examples=60, deadline=None)
@given(st.integers(-(10**9), 10**9), st.integers(-(10**9), 10**9))
def test_integers_compare_as_numbers(a, b):
    assert is_equivalent(str(a), str(b)) is (a == b)
    assert is_equivalent(f"{a:,}", str(a))
    assert verify(f"The total is \\boxed{{{a}}}.", str(b)) is (a == b)


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text):
    assert isinstance(extract_answer(text), (str, type(None)))
    assert isinstance(verify(text, "1"), bool)
    assert isinstance(is_equivalent(text, text), bool)


# ---------------------------------------------------------------------------------------------
# adversarial input: every verdict within the bound
# ---------------------------------------------------------------------------------------------

ADVERSARIAL = {
    "1MB digits": ("7" * 1_000_000, "7"),
    "1MB box": ("\\boxed{" + "x+" * 500_000 + "1}", "1"),
    "1MB prose": ("the answer is maybe " * 50_000, "1"),
    "1MB dollars": ("$" * 1_000_000, "1"),
    "power tower": (r"\boxed{10^{10^{10^{10}}}}", "1"),
    "power tower pair": (r"\boxed{10^{10^{10^{10}}}}", r"10^{10^{10^{9}}}"),
    "9^9^9": (r"\boxed{9^{9^{9}}}", "1"),
    "sin of a tower": (r"\boxed{\sin(10^{10^{10}})}", "0"),
    "huge factorial": (r"\boxed{1000000!}", "1"),
    "10k nested braces": ("\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", "1"),
    "10k nested fractions": ("\\boxed{" + "\\frac{1}{" * 3000 + "2" + "}" * 3000 + "}", "1"),
    "10k open boxes": ("\\boxed{" * 10_000, "1"),
    "unbalanced": ("}}{{\\boxed{1}}{{\\boxed{", "1"),
    "NUL bytes": ("\\boxed{\x001\x00}", "1"),
    "invalid utf-8": (b"\xff\xfe\\boxed{1}\xc3".decode("utf-8", "surrogateescape"), "1"),
    "lone surrogate": ("\\boxed{\ud8001}", "1"),
    "20k-element list": ("\\boxed{" + ",".join(map(str, range(20_000))) + "}", "1"),
    "many plus-minus": ("\\boxed{" + "\\pm 1" * 200 + "}", "1"),
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_inputs_return_within_bound(name):
    response, gold = ADVERSARIAL[name]
    for fn in (verify, is_equivalent):
        t = time.monotonic()
        got = fn(response, gold, timeout_s=BOUND_S)
        elapsed = time.monotonic() - t
        assert isinstance(got, bool)
        assert elapsed < BOUND_S + SLACK_S, f"{name}: {elapsed:.2f}s"


def test_adversarial_batch_within_bound():
    items = list(ADVERSARIAL.values())
    t = time.monotonic()
    got = verifiers.score_batch("math", [r for r, _ in items], [g for _, g in items], timeout_s=BOUND_S)
    elapsed = time.monotonic() - t
    assert len(got) == len(items)
    assert all(v in (0.0, 1.0, None) for v in got)
    # items run in parallel, each bounded: the batch takes at most a few bounds
    assert elapsed < 4 * (BOUND_S + SLACK_S)


def test_sanitised_inputs_still_verify():
    assert verify("\\boxed{4\x002}", "42")
    assert verify(b"\\boxed{42}\xff".decode("utf-8", "surrogateescape"), "42")
