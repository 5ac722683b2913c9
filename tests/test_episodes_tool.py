"""The tiny tool demo (recipes/tiny_tool.yaml): its corpus shows exactly what the python environment returns, no
held-out product is in it, its data files are what the generator writes, and the shipped tool model calls the
tool, token for token, and answers from the tool's output.

    python -m pytest tests/test_episodes_tool.py       # ~20 s on 2 CPU cores
"""

import json
import re

import pytest
from conftest import REPO, TINY_DATA
from test_episodes import Recording, assert_token_exact

import verifiers
from rlvr import episodes, model as model_lib
from rlvr.config import ModelConfig
from rlvr.data import Problem
from rlvr.episodes import PythonEnv
from rlvr.sampler import HFSampler
from rlvr.tiny import tool_task

TOOL_MODEL = REPO / "rlvr" / "tiny" / "tool_model"


def prompt(q: str) -> str:
    return f"User: {q} Assistant:"


def test_the_corpus_shows_what_the_python_environment_returns():
    docs = [d for d in tool_task.corpus(200, 5, set(), prompt) if "```python" in d]
    assert len(docs) > 20
    for d in docs:
        end = d.index("```", d.index("```python") + len("```python")) + 3  # where the model's turn stops
        out = PythonEnv().step(d[:end])
        assert not out.error and d[end:].startswith(out.observation), d
        assert d[end + len(out.observation) :].startswith("The answer is ")


def test_no_held_out_product_is_in_the_corpus():
    test = tool_task.problems(500, 1)
    docs = tool_task.corpus(20_000, 3, {p["question"] for p in test}, prompt)
    held = {re.search(r"\d+ \* \d+", p["question"]).group(0) for p in test}
    seen = {m for d in docs for m in re.findall(r"(?<!\d)\d+ \* \d+(?!\d)", d)}
    assert len(seen) > 2000 and not held & seen


def test_the_tool_data_files_are_what_the_generator_writes(tmp_path):
    tool_task.main(out_dir=str(tmp_path))
    for name in ("tool_train.jsonl", "tool_test.jsonl"):
        assert (tmp_path / name).read_bytes() == (TINY_DATA / name).read_bytes(), name


@pytest.fixture(scope="module")
def tool_model():
    model, tok = model_lib.load(ModelConfig(path=str(TOOL_MODEL)))
    rows = [json.loads(line) for line in open(TINY_DATA / "tool_test.jsonl")]
    # "What is a * b?": the phrasing whose favourite style, in pre-training, is the tool
    rows = [r for r in rows if r["question"].startswith("What is")][:12]
    problems = [Problem(r["question"], r["answer"], id=str(i)) for i, r in enumerate(rows)]
    return model, tok, problems, [tok(prompt(p.question))["input_ids"] for p in problems]


def test_the_tool_model_calls_the_tool_and_answers_from_its_output(tool_model):
    model, tok, problems, prompts = tool_model
    rec = Recording(HFSampler(model, tok))
    make = episodes.make_env("python", {"timeout_s": 5.0})
    eps = episodes.generate(rec, make, problems, prompts, 1, temperature=0.0, max_new_tokens=96, max_turns=3)
    assert sum(eps.tool_calls) >= 10 and not any(eps.failed) and sum(eps.tool_errors) == 0
    assert_token_exact(eps, rec.calls, tok, lambda k, text: PythonEnv().step(text).observation)
    scores = verifiers.score_batch("math", eps.rollout.texts, [p.answer for p in problems], timeout_s=5.0)
    assert sum(s == 1.0 for s in scores) >= 9, eps.rollout.texts
    # Without the environment the model writes the output itself, and it is wrong.
    ro = HFSampler(model, tok).generate(prompts, 1, temperature=0.0, max_new_tokens=96)
    assert sum("```output" in t for t in ro.texts) >= 10
    scores = verifiers.score_batch("math", ro.texts, [p.answer for p in problems], timeout_s=5.0)
    assert sum(s == 1.0 for s in scores) <= 3, ro.texts


def test_sampled_tool_episodes_are_token_exact(tool_model):
    model, tok, problems, prompts = tool_model
    rec = Recording(HFSampler(model, tok))
    make = episodes.make_env("python", {"timeout_s": 5.0})
    eps = episodes.generate(rec, make, problems[:6], prompts[:6], 4, temperature=1.0, max_new_tokens=96, seed=1)
    assert sum(eps.tool_calls) >= 8
    assert_token_exact(eps, rec.calls, tok, lambda k, text: PythonEnv().step(text).observation)
