"""verifiers/code.py: program extraction, the three test forms, reward modes, the batch entry point."""

import gzip
import json
from pathlib import Path

import pytest

import verifiers
from verifiers import code as codev

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_extract_program_prefers_python_block_defining_entry_point():
    completion = (
        "Here is a sketch:\n```\nprint('not this')\n```\n"
        "```python\ndef helper():\n    pass\n```\n"
        "Final:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    )
    assert codev.extract_program(completion, "add").strip().startswith("def add")
    assert codev.extract_program("def f():\n    return 1\n") == "def f():\n    return 1\n"
    assert "return 2" in codev.extract_program("```python\ndef f():\n    return 2\n")  # unclosed fence


def test_registered_and_humaneval_form():
    fn = verifiers.get("code")
    meta = {
        "prompt": "def add(a, b):\n    \"\"\"Add.\"\"\"\n",
        "entry_point": "add",
        "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\n",
    }
    assert fn("```python\ndef add(a, b):\n    return a + b\n```", "", **meta) == 1.0
    assert fn("    return a + b\n", "", **meta) == 1.0  # continues the prompt
    assert fn("    return a * b\n", "", **meta) == 0.0
    assert fn("    return a * b\n", "", reward_mode="fraction", **meta) == 0.5


def test_mbpp_form_and_fraction():
    meta = {"test_list": ["assert sq(2) == 4", "assert sq(3) == 9", "assert sq(0) == 0"], "test_setup_code": ""}
    assert codev.code_reward("def sq(x):\n    return x * x\n", "", **meta) == 1.0
    assert codev.code_reward("def sq(x):\n    return 2 * x\n", "", **meta) == 0.0
    assert codev.code_reward("def sq(x):\n    return 2 * x\n", "", reward_mode="fraction", **meta) == pytest.approx(2 / 3)


def test_stdin_stdout_cases():
    prog = "```python\nn = int(input())\nprint(n * 2)\n```"
    meta = {"inputs": ["1\n", "5\n", "7\n"], "outputs": ["2\n", "10", "15\n"]}
    assert codev.code_reward(prog, "", **meta) == 0.0
    assert codev.code_reward(prog, "", reward_mode="fraction", **meta) == pytest.approx(2 / 3)
    cases = json.dumps([{"input": "3\n", "output": "6\n"}])
    assert codev.code_reward(prog, cases) == 1.0


def test_forged_completion_gets_zero():
    meta = {"test_list": ["assert add(2, 3) == 5"]}
    hacks = [
        "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n",
        "print('All tests passed')\ndef add(a, b):\n    return 0\n",
        "class E:\n    def __eq__(s, o):\n        return True\ndef add(a, b):\n    return E()\n",
        "import os\ndef add(a, b):\n    os._exit(0)\n",
    ]
    assert [codev.code_reward(h, "", **meta) for h in hacks] == [0.0] * len(hacks)


def test_score_batch_mixed_rows():
    completions = ["def sq(x):\n    return x * x\n", "print(int(input()) + 1)", "no tests for me", "def sq(x): return 0"]
    metas = [{"test_list": ["assert sq(3) == 9"]}, {"inputs": ["1"], "outputs": ["2"]}, {}, {"test_list": ["assert sq(3) == 9"]}]
    rewards = verifiers.score_batch("code", completions, [""] * 4, metas, timeout_s=5.0)
    assert rewards == [1.0, 1.0, None, 0.0]


def test_humaneval_canonical_solutions_score_one():
    path = DATA / "HumanEval.jsonl.gz"
    if not path.exists():
        pytest.skip("no HumanEval data")
    rows = [json.loads(line) for line in gzip.open(path, "rt")][:16]
    completions = [f"```python\n{r['prompt']}{r['canonical_solution']}\n```" for r in rows]
    metas = [{k: r[k] for k in ("prompt", "test", "entry_point")} for r in rows]
    assert codev.score_batch(completions, [""] * len(rows), metas, timeout_s=10.0) == [1.0] * len(rows)


def test_mbpp_reference_solutions_score_one():
    path = DATA / "mbpp.jsonl"
    if not path.exists():
        pytest.skip("no MBPP data")
    rows = [r for r in map(json.loads, open(path)) if 11 <= r["task_id"] <= 510][:16]
    metas = [{"test_list": r["test_list"], "test_setup_code": r["test_setup_code"]} for r in rows]
    assert codev.score_batch([r["code"] for r in rows], [""] * len(rows), metas, timeout_s=10.0) == [1.0] * len(rows)
