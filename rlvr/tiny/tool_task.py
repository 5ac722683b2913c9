"""The tiny tool demo's task: products, and pre-training text in which some are worked out with Python.

A problem is ``a * b``, a three-digit number times a two-digit one (a four- or five-digit product), phrased one
of six ways. The
pre-training corpus (``corpus``) shows each problem solved in one of three *styles*:

* ``tool``: a Python block that prints the product, its output, then the answer copied from it;
* ``hand``: long multiplication in the head (``347 * 86 = 347 * 80 + 347 * 6 = 27760 + 2082 = 29842``), which
  also slips in the data 10% of the time, and which a 0.9M-parameter model gets right far less often (with
  two-digit numbers it learnt the 810 two-digit-times-one-digit facts and got 88% right: too easy);
* ``guess``: a round number near the product, almost never right.

Every phrasing favours one style (probability 0.5, the others 0.25 each): one phrasing favours the tool, two
working by hand and three guessing, so the pre-trained model's greedy answer is mostly not from the tool and
mostly wrong. The tool's output in the corpus is exactly what ``rlvr.episodes.PythonEnv`` returns (its
default markers and output format), so with the environment on, a tool call made during RL gets the text the
model has seen in pre-training, printed by a real interpreter. Without the environment the model continues
the block with an output it invents. GRPO rewarded for the right answer only has to find "use the tool".

    python -m rlvr.tiny.tool_task --out_dir rlvr/tiny/data     # writes tool_train.jsonl and tool_test.jsonl
"""

from __future__ import annotations

import random
import re

from rlvr.tiny import task

PHRASINGS = task.PHRASINGS  # the arithmetic task's six phrasings
STYLES = ["tool", "hand", "guess"]
FAVOURITE = ["tool", "hand", "hand", "guess", "guess", "guess"]  # phrasing i's favourite style
FAVOURITE_P = 0.5  # the other two styles share the rest equally
SLIP_P = 0.1  # a hand-worked partial product is off by one digit's worth this often
# What rlvr.episodes.PythonEnv appends after a code block (its defaults); tests/test_episodes_tool.py checks
# that the two agree.
CODE_OPEN, CODE_CLOSE = "```python", "```"
OUTPUT_FORMAT = "\n```output\n{output}\n```\n"


def make_problem(rng: random.Random) -> tuple[int, int]:
    return rng.randint(100, 999), rng.randint(12, 99)


def question(a: int, b: int, phrasing: int) -> str:
    return PHRASINGS[phrasing].format(e=f"{a} * {b}")


def response(a: int, b: int, style: str, rng: random.Random) -> str:
    """One completion in the given style (what follows 'Assistant:')."""
    if style == "tool":
        code = f"print({a} * {b})"
        output = OUTPUT_FORMAT.format(output=a * b)
        return f" Let me run it.\n{CODE_OPEN}\n{code}\n{CODE_CLOSE}{output}The answer is {a * b}."
    if style == "hand":
        tens, ones = b // 10 * 10, b % 10
        p1, p2 = a * tens, a * ones
        if rng.random() < SLIP_P:
            p1 += rng.choice([-100, -10, 10, 100])
        if rng.random() < SLIP_P:
            p2 += rng.choice([-10, -1, 1, 10])
        return f" By hand: {a} * {b} = {a} * {tens} + {a} * {ones} = {p1} + {p2} = {p1 + p2}. The answer is {p1 + p2}."
    return f" The answer is {round(a * b, -2)}."


def pick_style(phrasing: int, rng: random.Random) -> str:
    fav = FAVOURITE[phrasing]
    others = (1 - FAVOURITE_P) / (len(STYLES) - 1)
    return rng.choices(STYLES, [FAVOURITE_P if s == fav else others for s in STYLES])[0]


def problems(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """``n`` distinct problems ({question, answer}), none of whose questions is in ``exclude``."""
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        a, b = make_problem(rng)
        q = question(a, b, rng.randrange(len(PHRASINGS)))
        if q in seen:
            continue
        seen.add(q)
        out.append({"question": q, "answer": str(a * b)})
    return out


def corpus(n_docs: int, seed: int, exclude: set[str], prompt_fn) -> list[str]:
    """Pre-training documents: prompt_fn(question) followed by a response in a sampled style (the signature of
    ``rlvr.tiny.task.corpus``, so ``rlvr.tiny.pretrain --task tool_task`` trains on it). No document multiplies
    the numbers of an ``exclude`` question, in any phrasing, nor shows it as a step of another (``347 * 80`` in
    ``347 * 86``): a held-out product is never seen, so it cannot be remembered rather than worked out."""
    rng, docs = random.Random(seed), []
    held_out = {m.group(0) for q in exclude for m in [re.search(r"\d+ \* \d+", q)] if m}
    while len(docs) < n_docs:
        a, b = make_problem(rng)
        phrasing = rng.randrange(len(PHRASINGS))
        q, style = question(a, b, phrasing), pick_style(phrasing, rng)
        if f"{a} * {b}" in held_out or style == "hand" and f"{a} * {b // 10 * 10}" in held_out:
            continue
        docs.append(prompt_fn(q) + response(a, b, style, rng))
    return docs


def main(out_dir: str = "rlvr/tiny/data", n_train: int = 4000, n_test: int = 500, seed: int = 0):
    task.write_splits(problems, out_dir, "tool_", n_train, n_test, seed)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
