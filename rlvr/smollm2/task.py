"""SmolLM2-135M-Instruct's RL task: one-step arithmetic word problems (add, take away, multiply, share).

A problem is one operation on small numbers, phrased as a short story in one of eight templates (two per
operation), e.g. "Mia has 6 bags with 7 marbles in each bag. How many marbles does Mia have?". The
135M chat model, asked through its own chat template, usually writes the right equation but often
gets the sum wrong, states another number at the end, wanders off or runs past a short token budget: on the
first 100 held-out problems with 64 new tokens greedy decoding solves 21, and 4 samples at temperature 0.7
solve 30 of them between them (pass@4; benchmarks/smollm2.py). Weak, not hopeless: GRPO has right answers
to reinforce in most groups.

    python -m rlvr.smollm2.task --out_dir rlvr/smollm2/data     # writes train.jsonl and test.jsonl
"""

from __future__ import annotations

import random

from rlvr.tiny.task import write_splits

NAMES = ["Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Jack", "Emma", "Leo", "Zoe", "Max", "Ella"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "cards", "books", "shells"]
# (operation, template): {n} a name, {it} a plural noun, {a} and {b} the operands
TEMPLATES = [
    ("add", "{n} has {a} {it}. {n} gets {b} more {it}. How many {it} does {n} have now?"),
    ("add", "There are {a} {it} in a box and {b} {it} on the table. How many {it} are there in all?"),
    ("sub", "{n} has {a} {it}. {n} gives {b} {it} to a friend. How many {it} does {n} have left?"),
    ("sub", "A shelf holds {a} {it}. {n} takes {b} of them. How many {it} are left on the shelf?"),
    ("mul", "{n} has {a} bags with {b} {it} in each bag. How many {it} does {n} have?"),
    ("mul", "{n} buys {a} packs of {it}. Each pack has {b} {it}. How many {it} did {n} buy?"),
    ("div", "{n} shares {a} {it} equally among {b} friends. How many {it} does each friend get?"),
    ("div", "{a} {it} are put into {b} equal groups. How many {it} are in each group?"),
]


def make_problem(rng: random.Random) -> tuple[str, int]:
    """One question and its whole-number answer (every answer positive, every division exact)."""
    op, template = rng.choice(TEMPLATES)
    if op in ("add", "sub"):
        x, y = rng.randint(2, 15), rng.randint(2, 15)
        a, b, ans = (x, y, x + y) if op == "add" else (x + y, y, x)
    else:
        x, y = rng.randint(2, 9), rng.randint(2, 9)
        a, b, ans = (x, y, x * y) if op == "mul" else (x * y, y, x)
    return template.format(n=rng.choice(NAMES), it=rng.choice(ITEMS), a=a, b=b), ans


def problems(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        q, ans = make_problem(rng)
        if q not in seen:
            seen.add(q)
            out.append({"question": q, "answer": str(ans)})
    return out


def main(out_dir: str = "rlvr/smollm2/data", n_train: int = 2000, n_test: int = 200, seed: int = 0):
    write_splits(problems, out_dir, "", n_train, n_test, seed)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
