"""Tiny data for the post-training stages, generated from the arithmetic task of ``rlvr.tiny.task``.

- ``sft_{train,test}.jsonl``: chats (``messages``, with a system message; a third of them two
  exchanges long) whose assistant replies use a format the base model never saw in pre-training:
  ``Result: 95 + 49 + 42 = 186``. SFT has to teach it (``SFT_FORMAT`` is the regex that checks it).
- ``prefs_{train,test}.jsonl``: ``prompt``/``chosen``/``rejected`` pairs for DPO and the reward model.
  Chosen: the problem worked step by step with the answer in ``<answer>`` tags (R1-Zero's format).
  Rejected: a one-shot guess that forgets the last operation, the right work without the tags, or
  the work with a slip. The base model writes all of these, so it starts without a preference.

    python -m rlvr.tiny.chat_data --out_dir rlvr/tiny/data
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rlvr.tiny.task import PHRASINGS, make_problem, question

SYSTEM = "Reply with the result only."
SFT_FORMAT = r"Result: \d+ [+-] \d+ [+-] \d+ = -?\d+"
# A chat template for the tiny tokenizer (it has none): close to the pre-training prompt's "User: ...
# Assistant:", each reply ended by the EOS token so generation stops there. Recipes set it as
# data.chat_template; it is saved with the checkpoint.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}<|endoftext|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
REJECTED_KINDS = {"guess": 0.45, "untagged": 0.45, "slip": 0.10}


def worked(steps, slip_rng: random.Random | None = None) -> tuple[str, int]:
    """The step-by-step work; with slip_rng, one intermediate result is off (and carried on)."""
    lines, carry = [], None
    slip_at = slip_rng.randrange(len(steps)) if slip_rng else -1
    for k, (x, op, y, _) in enumerate(steps):
        x = carry if carry is not None else x
        value = x + y if op == "+" else x - y
        if k == slip_at:
            value += slip_rng.choice([-10, -1, 1, 10])
        lines.append(f"{x} {op} {y} = {value}.")
        carry = value
    return " ".join(lines), carry


def sft_rows(n: int, rng: random.Random, exclude: set[str]) -> list[dict]:
    rows = []
    while len(rows) < n:
        msgs = [{"role": "system", "content": SYSTEM}]
        for _ in range(2 if rng.random() < 1 / 3 else 1):
            expr, ans, _ = make_problem(rng)
            q = question(expr, rng.randrange(len(PHRASINGS)))
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": f"Result: {expr} = {ans}"}]
        if msgs[1]["content"] in exclude:
            continue
        exclude.add(msgs[1]["content"])
        rows.append({"messages": msgs})
    return rows


def pref_rows(n: int, rng: random.Random, exclude: set[str]) -> list[dict]:
    rows = []
    kinds, weights = list(REJECTED_KINDS), list(REJECTED_KINDS.values())
    while len(rows) < n:
        expr, ans, steps = make_problem(rng)
        q = question(expr, rng.randrange(len(PHRASINGS)))
        if q in exclude:
            continue
        exclude.add(q)
        work, _ = worked(steps)
        kind = rng.choices(kinds, weights)[0]
        if kind == "guess":
            rejected = f" <think> This is easy. </think> <answer> {steps[0][3]} </answer>"
        elif kind == "untagged":
            rejected = f" {work} The answer is {ans}."
        else:
            slipped, wrong = worked(steps, rng)
            rejected = f" <think> {slipped} </think> <answer> {wrong} </answer>"
        rows.append(
            {
                "prompt": q,
                "chosen": f" <think> {work} </think> <answer> {ans} </answer>",
                "rejected": rejected,
                "kind": kind,
            }
        )
    return rows


def main(out_dir: str = "rlvr/tiny/data", n_train: int = 2000, n_test: int = 200, seed: int = 0):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Held-out rows never share a question with training rows (nor with rlvr/tiny/data/test.jsonl's).
    rl_test = out / "test.jsonl"
    seen = {json.loads(line)["question"] for line in rl_test.open()} if rl_test.exists() else set()
    files = {}
    for name, fn, s in (("sft", sft_rows, 10), ("prefs", pref_rows, 20)):
        rng = random.Random(seed + s)
        test = fn(n_test, rng, seen)
        train = fn(n_train, rng, seen)
        files[f"{name}_test"], files[f"{name}_train"] = test, train
    for name, rows in files.items():
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"wrote {', '.join(f'{k} ({len(v)})' for k, v in files.items())} to {out}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
