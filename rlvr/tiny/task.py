"""The tiny demo task: multi-step arithmetic word problems, and the base model's pre-training text.

A problem is ``a ± b ± c`` with two-digit numbers, phrased one of six ways. The pre-training corpus
(``corpus``) shows each problem solved in one of six *styles*: worked step by step or answered
with a one-shot guess that drops the last operation, each in the R1-Zero
``<think>..</think> <answer>..</answer>`` format or another common answer format. Worked solutions
also slip (a wrong intermediate sum) 10% of the time. Every phrasing favours a different style, so
the pre-trained model's greedy answer is right, and in the rewarded format, only for some
phrasings: the right behaviour (work it out, answer in the tags) is in the model but not dominant.
That is the R1-Zero situation in miniature, and GRPO has something real to find.

    python -m rlvr.tiny.task --out_dir rlvr/tiny/data     # writes train.jsonl and test.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PHRASINGS = [
    "What is {e}?",
    "Compute {e}.",
    "Calculate {e}.",
    "Evaluate {e}.",
    "Find the value of {e}.",
    "Work out {e}.",
]
STYLES = ["worked_tags", "guess_tags", "worked_sentence", "guess_sentence", "worked_hash", "guess_boxed"]
# Phrasing i prefers style i (probability 0.4); the other styles share the rest equally.
FAVOURITE_P = 0.4
SLIP_P = 0.1


def make_problem(rng: random.Random) -> tuple[str, int, list[tuple[int, str, int, int]]]:
    """Returns (expression, answer, steps) with every intermediate value positive."""
    while True:
        a, b, c = (rng.randint(10, 99) for _ in range(3))
        op1, op2 = rng.choice("+-"), rng.choice("+-")
        s1 = a + b if op1 == "+" else a - b
        s2 = s1 + c if op2 == "+" else s1 - c
        if s1 > 0 and s2 > 0:
            return f"{a} {op1} {b} {op2} {c}", s2, [(a, op1, b, s1), (s1, op2, c, s2)]


def question(expr: str, phrasing: int) -> str:
    return PHRASINGS[phrasing].format(e=expr)


def response(steps, style: str, rng: random.Random) -> str:
    """One completion in the given style (what follows 'Assistant:')."""
    if style.startswith("guess"):
        value = steps[0][3]  # the one-shot guess forgets the last operation
        work = "This is easy."
    else:
        lines, carry = [], None
        for x, op, y, _ in steps:
            x = carry if carry is not None else x
            value = x + y if op == "+" else x - y
            if rng.random() < SLIP_P:
                value += rng.choice([-10, -1, 1, 10])
            lines.append(f"{x} {op} {y} = {value}.")
            carry = value
        work = " ".join(lines)
    if style.endswith("tags"):
        return f" <think> {work} </think> <answer> {value} </answer>"
    if style == "worked_sentence":
        return f" {work} The answer is {value}."
    if style == "guess_sentence":
        return f" The answer is {value}."
    if style == "worked_hash":
        return f" {work}\n#### {value}"
    return f" So the answer is \\boxed{{{value}}}."


def pick_style(phrasing: int, rng: random.Random) -> str:
    others = (1 - FAVOURITE_P) / (len(STYLES) - 1)
    weights = [FAVOURITE_P if i == phrasing else others for i in range(len(STYLES))]
    return rng.choices(STYLES, weights)[0]


def problems(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        expr, ans, _ = make_problem(rng)
        q = question(expr, rng.randrange(len(PHRASINGS)))
        if q in seen:
            continue
        seen.add(q)
        out.append({"question": q, "answer": str(ans)})
    return out


def corpus(n_docs: int, seed: int, exclude: set[str], prompt_fn) -> list[str]:
    """Pre-training documents: prompt_fn(question) followed by a response in a sampled style."""
    rng, docs = random.Random(seed), []
    while len(docs) < n_docs:
        expr, _, steps = make_problem(rng)
        phrasing = rng.randrange(len(PHRASINGS))
        q = question(expr, phrasing)
        if q in exclude:
            continue
        docs.append(prompt_fn(q) + response(steps, pick_style(phrasing, rng), rng))
    return docs


def write_splits(problems_fn, out_dir: str, prefix: str = "", n_train: int = 4000, n_test: int = 500, seed: int = 0):
    """``problems_fn(n, seed, exclude)``'s held-out and training problems (no training question is a held-out
    one) -> OUT_DIR/{prefix}train.jsonl and {prefix}test.jsonl."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = problems_fn(n_test, seed + 1)
    train = problems_fn(n_train, seed + 2, exclude={p["question"] for p in test})
    for name, rows in ((f"{prefix}train", train), (f"{prefix}test", test)):
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"wrote {len(train)} train and {len(test)} test problems to {out}")


def main(out_dir: str = "rlvr/tiny/data", n_train: int = 4000, n_test: int = 500, seed: int = 0):
    write_splits(problems, out_dir, "", n_train, n_test, seed)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
