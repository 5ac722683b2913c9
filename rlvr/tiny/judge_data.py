"""Tiny judge data: chats that teach the tiny base model to be the LM judge of the tiny task (``rlvr.judge``), for the
CPU demos of AI feedback (recipes/tiny_judge.yaml trains it; recipes/tiny_ai_feedback.yaml uses it).

Each problem gets answers in the pre-training styles of ``rlvr.tiny.task`` (worked or guessed; in tags, a sentence,
``####`` or ``\\boxed{}``; worked ones slip 10% of the time). The judge's standard: worked step by step, the right
result in ``<answer>`` tags. Rows are ``messages``: the user message is exactly what the judge of ``--recipe``'s
``judge`` section asks (its templates and rubric), the reply its ``judge.yes_token`` or ``judge.no_token``:

- one answer: does it meet the standard (half of them do);
- two answers in both orders, one meeting it and one not, or two that do not, one better than the other by
  ``quality`` (the right result counts most, then the work, then the tags): is Answer A the better one.

    python -m rlvr.tiny.judge_data --out_dir rlvr/tiny/data --recipe recipes/tiny_ai_feedback.yaml
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from rlvr.config import JudgeConfig, load_config
from rlvr.judge import rubric_text, template
from rlvr.tiny.task import PHRASINGS, STYLES, make_problem, question, response


def quality(text: str, steps) -> int:
    """The standard, as a score: 2 for the right result, 1 for working it out, 1 for the <answer> tags (4: met)."""
    right = any(
        m in text for m in (f" {steps[-1][3]} <", f"is {steps[-1][3]}.", f"#### {steps[-1][3]}", f"{{{steps[-1][3]}}}")
    )
    return 2 * right + ("This is easy" not in text and "=" in text) + ("<answer>" in text)


def answer(steps, rng: random.Random, good: bool) -> str:
    """A response that meets the standard (``good``: worked, right, in tags) or one that does not."""
    while True:
        text = response(steps, "worked_tags" if good else rng.choice(STYLES), rng)
        if (quality(text, steps) == 4) == good:
            return text


def rows(n: int, rng: random.Random, exclude: set[str], j) -> list[dict]:
    """About n judge chats; each problem gives two single-answer ones (one answer meets the standard, one does not),
    and two pairs in both orders: that answer against one that does not, and two that do not, the better by
    ``quality`` (right before worked before tagged) against the worse."""
    single, pair, rubric = template(j, "single"), template(j, "pair"), rubric_text(j)
    out = []
    while len(out) < n:
        expr, _, steps = make_problem(rng)
        q = question(expr, rng.randrange(len(PHRASINGS)))
        if q in exclude:
            continue
        exclude.add(q)
        good, bad = answer(steps, rng, True), answer(steps, rng, False)
        x, y = sorted((answer(steps, rng, False) for _ in range(2)), key=lambda t: -quality(t, steps))
        asks = [(single.format(rubric=rubric, question=q, top=10, answer=a), v) for a, v in ((good, 1), (bad, 0))]
        for better, worse in ((good, bad), (x, y)) if quality(x, steps) > quality(y, steps) else ((good, bad),):
            asks += [
                (pair.format(rubric=rubric, question=q, top=10, answer_a=a, answer_b=b), v)
                for a, b, v in ((better, worse, 1), (worse, better, 0))
            ]
        for user, yes in asks:
            reply = j.yes_token if yes else j.no_token
            out.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]})
    return out


def main(
    out_dir: str = "rlvr/tiny/data",
    recipe: str = "recipes/tiny_ai_feedback.yaml",
    n_train: int = 3000,
    n_test: int = 200,
    seed: int = 0,
):
    # the recipe's judge section alone: its judge.model is what these rows train, so it need not exist yet
    j = load_config(None, yaml.safe_load(Path(recipe).read_text())["judge"], cls=JudgeConfig)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Held-out rows never share a question with training rows, nor with rlvr/tiny/data/test.jsonl's.
    rl_test = out / "test.jsonl"
    seen = {json.loads(line)["question"] for line in rl_test.open()} if rl_test.exists() else set()
    rng = random.Random(seed + 30)
    files = {"judge_test": rows(n_test, rng, seen, j), "judge_train": rows(n_train, rng, seen, j)}
    for name, rs in files.items():
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rs)
    print(f"wrote {', '.join(f'{k} ({len(v)})' for k, v in files.items())} to {out}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
