"""Families of answers other graders' tables exercise: prose extraction without fragments, chat-template
endings, typos, factorials, scientific notation, plus-minus sets, unions of intervals, choice letters.
Every family has near misses that must stay unequal."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from verifiers.math import extract_answer, is_equivalent, verify

# ---------------------------------------------------------------------------------------------
# extraction: the whole final expression of a prose answer, never a fragment of it
# ---------------------------------------------------------------------------------------------

EXTRACTION = [
    ("Counting the favourable outcomes, the probability is 2/3.", "2/3"),
    ("so the ratio we want is 7/8", "7/8"),
    ("Adding the rooms, the floor area is 1,000.99m^2", "1,000.99"),
    (r"Dividing, we get \frac{5}{12} in the end", r"\frac{5}{12}"),
    ("Final Answer: The final answer is 12,000,023. I hope it is correct.<|im_end|>", "12,000,023"),
    ("Final Answer: The final answer is 12,000,023. I hope it is correct.<|eot_id|>", "12,000,023"),
    ("Final Answer: The final answer is 12,000,023. I hope it is correct.</s>", "12,000,023"),
    ("The answer is 9.<|im_end|>\n<|im_start|>user", "9"),
    ("Final Answer: The volume of $ABCDEFGH$ is 120. I hope it is correct.", "120"),
    ("The volume of $ABCDEFGH$ is 120. I hope it is correct.", "120"),
    (r"The roots are \(\boxed{2}\) and \(\boxed{3}\).", "2, 3"),
    (r"The roots are $\boxed{2}$ and $\boxed{3}$.", "2, 3"),
    ("So \\boxed{185\\}", "185"),
    ("The answer is B because the other options fail.", "B"),
    ("The answer is (D), since the sum is odd.", "D"),
    ("The answer is 42!", "42"),
    # no marker: the later of the last formula and the last number, unless the number only follows a
    # formula with digits in the same sentence
    ("There are $9$ divisors of 196.", "9"),
    ("We get $d = \\frac{90}{n}$. Therefore, there are 12 sequences.", "12"),
    # no whole number to take: nothing rather than a fragment
    ("the range we found is 5-6 and no more", None),
    ("so the root is 3+4i in the end", None),
]


@pytest.mark.parametrize("response, expected", EXTRACTION)
def test_extraction_reads_whole_answers(response, expected):
    assert extract_answer(response) == expected


# ---------------------------------------------------------------------------------------------
# whole responses against gold, near misses included
# ---------------------------------------------------------------------------------------------

RESPONSES = [
    # (gold, response, expected)
    # a fraction, a decimal with a unit, joined boxes: never a fragment
    ("3", "Counting the favourable outcomes, the probability is 2/3.", False),
    ("2", "Counting the favourable outcomes, the probability is 2/3.", False),
    (r"\frac{2}{3}", "Counting the favourable outcomes, the probability is 2/3.", True),
    ("8", "so the ratio we want is 7/8", False),
    ("0.875", "so the ratio we want is 7/8", True),
    ("4", r"Dividing, we get \frac{3}{4}", False),
    ("1000", "Adding the rooms, the floor area is 1,000.99m^2", False),
    ("2", "Adding the rooms, the floor area is 1,000.99m^2", False),
    ("1000.99", "Adding the rooms, the floor area is 1,000.99m^2", True),
    ("3", r"The roots are \(\boxed{2}\) and \(\boxed{3}\).", False),
    ("2, 3", r"The roots are \(\boxed{2}\) and \(\boxed{3}\).", True),
    ("5", r"I got \(\boxed{4}\). Wait, that misses a case. So it is \(\boxed{5}\).", True),
    # Minerva endings
    ("12000023", "Final Answer: The final answer is 12,000,023. I hope it is correct.<|im_end|>", True),
    ("23", "Final Answer: The final answer is 12,000,023. I hope it is correct.<|eot_id|>", False),
    ("12", "Final Answer: The final answer is 12,000,023. I hope it is correct.</s>", False),
    ("120", "Final Answer: The volume of $ABCDEFGH$ is 120. I hope it is correct.", True),
    ("121", "Final Answer: The volume of $ABCDEFGH$ is 120. I hope it is correct.", False),
    ("720", r"The answer is $3! \times 5! = 720$.", True),
    ("6", r"The answer is $3! \times 5! = 720$.", False),
    # a tuple listed twice is listed once; a missing or extra one is not
    ("(3,37,3,13), (3,17,3,7), (17,3,3,7)", r"\boxed{(3, 37, 3, 13), (3,17,3,7), (17,3,3,7), (3, 17, 3, 7)}", True),
    ("(3,37,3,13), (3,17,3,7), (17,3,3,7)", r"\boxed{(3, 37, 3, 13), (3,17,3,7), (3, 17, 3, 7)}", False),
    ("(1,2)", r"\boxed{(1,2), (3,4), (1,2)}", False),
    ("(1,2), (1,2)", r"\boxed{(1,2)}", True),
    # typos LaTeX would reject
    ("(7,11), (11,7)", r"\boxed{(11,7)or(7,11)}", True),
    ("(11,7)", r"\boxed{(11,7)or(7,11)}", False),
    ("x_1=1, x_2=2", r"\boxed{x_{1}=1,\quadx_{2}=2}", True),
    ("x_1=2, x_2=1", r"\boxed{x_{1}=1,\quadx_{2}=2}", False),
    ("14916", r"\boxed{14 {, }916}", True),
    ("14", r"\boxed{14 {, }916}", False),
    ("314", r"\boxed{3{,}14}", False),
    ("185", "So \\boxed{185\\}", True),
    ("185", "185\\", True),
    ("18", "So \\boxed{185\\}", False),
    # multiple choice inside prose
    ("B", "The answer is B because the other options fail.", True),
    ("(B)", "The answer is B because the other options fail.", True),
    ("C", "The answer is B because the other options fail.", False),
    ("C", "The answer is B", False),
    ("E", "The answer is E, since it is the only odd one.", True),
    ("A", "The answer is A bit more than 5.", False),
    ("A", "Alice wins the game in the end.", False),
    ("A", "The answer is Alice.", False),
    ("B", "The answer is B, C and D.", False),
]


@pytest.mark.parametrize("gold, response, expected", RESPONSES)
def test_verify_families(gold, response, expected):
    assert verify(response, gold) is expected


EQUIVALENCE = [
    # (gold, pred, expected)
    # factorial notation, either side
    ("120", "5!", True),
    ("5!", "120", True),
    ("721", "6!", False),
    ("5", "5!", False),
    ("3628800", "10!", True),
    # scientific notation against numbers with thousands separators
    ("2,500,000", r"2.5 \times 10^{6}", True),
    (r"2.5 \times 10^{6}", "2,500,000", True),
    ("2,500,000", "2.5 x 10^6", True),
    ("250,000", "2.5 x 10^6", False),
    ("2,500,001", r"2.5 \times 10^{6}", False),
    ("0.00025", r"2.5 \times 10^{-4}", True),
    # plus-minus inside a set, element by element
    ("2, -2", r"\{\pm 2\}", True),
    ("2", r"\{\pm 2\}", False),
    (r"1+\sqrt2, 1-\sqrt2", r"\{1 \pm \sqrt{2}\}", True),
    (r"\{1 \pm \sqrt{2}\}", r"1+\sqrt2, 1-\sqrt2", True),
    (r"1+\sqrt2", r"\{1 \pm \sqrt{2}\}", False),
    ("2, 3, -3", r"\{2, \pm 3\}", True),
    ("2, 3", r"\{2, \pm 3\}", False),
    ("1, -1, 2, -2", r"\{\pm 1, \pm 2\}", True),
    ("1, 2", r"\{\pm 1, \pm 2\}", False),
    ("2, -2", r"\{x = \pm 2\}", True),
    ("-2, 2", r"\lbrace \pm 2 \rbrace", True),
    # unions of touching intervals are one interval
    ("[1,4]", r"[1,2] \cup [2,4]", True),
    (r"[1,2] \cup [2,4]", "[1,4]", True),
    (r"(-\infty,3]", r"(-\infty,0)\cup[0,3]", True),
    ("[1,5]", r"[1,3]\cup[2,5]", True),
    ("(1,4)", r"(1,2)\cup\{2\}\cup(2,4)", True),
    ("(1,2]", r"(1,2) \cup \{2\}", True),
    ("[1,4]", r"[1,2] \cup [3,4]", False),
    ("(1,4)", r"(1,2)\cup(2,4)", False),
    ("[1,5]", r"[1,3) \cup (3,5]", False),
    ("[1,4)", r"[1,2] \cup [2,4]", False),
    (r"(-\infty,3)", r"(-\infty,0)\cup[0,3]", False),
    (r"(-\infty, 1) \cup (1, \infty)", r"x < 1 \text{ or } x > 1", True),
    ("(0,2]", r"0 < x \le 1 \text{ or } 1 \le x \le 2", False),  # a list of intervals is not merged into a tuple
]


@pytest.mark.parametrize("gold, pred, expected", EQUIVALENCE)
def test_equivalence_families(gold, pred, expected):
    assert is_equivalent(pred, gold) is expected


# ---------------------------------------------------------------------------------------------
# property: prose around an answer, in several phrasings, yields the whole answer
# ---------------------------------------------------------------------------------------------


def _number_forms():
    """(text, value, fragments): a written answer, its value and pieces of its text that are not it."""
    ints = st.integers(-(10**6), 10**6).map(lambda n: (str(n), Fraction(n), [str(abs(n))] if n < 0 else []))
    thousands = st.integers(1000, 10**9).map(lambda n: (f"{n:,}", Fraction(n), f"{n:,}".split(",")))

    def decimal(t):
        neg, whole, frac = t
        text = f"{'-' if neg else ''}{whole}.{frac:03d}"
        return text, Fraction(text), [str(whole), f"{frac:03d}"]

    decimals = st.tuples(st.booleans(), st.integers(0, 9999), st.integers(1, 999)).map(decimal)

    def fraction(t):
        neg, a, b, latex, dollars = t
        sign = "-" if neg else ""
        text = rf"{sign}\frac{{{a}}}{{{b}}}" if latex else f"{sign}{a}/{b}"
        return (f"${text}$" if dollars else text), Fraction(-a if neg else a, b), [str(a), str(b)]

    fractions = st.tuples(st.booleans(), st.integers(1, 999), st.integers(2, 999), st.booleans(), st.booleans())
    return st.one_of(ints, thousands, decimals, fractions.map(fraction))


PHRASINGS = [
    "The answer is {x}.",
    "So we get {x}",
    "Therefore, the probability is {x}.",
    "Final Answer: The final answer is {x}. I hope it is correct.",
    "Final Answer: The final answer is {x}. I hope it is correct.<|im_end|>",
    "We add 3 and 4 to get 7, then divide, and in the end we get {x}.",
    "**Answer:** {x}",
    "After simplifying, $\\boxed{{{bare}}}$.",
    "#### {x}",
]


@settings(max_examples=300, deadline=None)
@given(_number_forms(), st.sampled_from(PHRASINGS))
def test_prose_extraction_returns_the_whole_answer(form, phrasing):
    text, value, fragments = form
    response = phrasing.format(x=text, bare=text.strip("$"))
    got = extract_answer(response)
    assert got is not None, response
    assert is_equivalent(got, text), (response, got)
    for frag in fragments:
        if Fraction(frag.replace(",", "")) != value:
            assert not is_equivalent(got, frag), (response, got, frag)
