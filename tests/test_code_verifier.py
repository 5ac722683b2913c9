"""verifiers/code.py: program extraction, the three test forms, reward modes, the batch entry point."""

import gzip
import json
import re
import textwrap
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
        "prompt": 'def add(a, b):\n    """Add."""\n',
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
    assert codev.code_reward("def sq(x):\n    return 2 * x\n", "", reward_mode="fraction", **meta) == pytest.approx(
        2 / 3
    )


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
    completions = [
        "def sq(x):\n    return x * x\n",
        "print(int(input()) + 1)",
        "no tests for me",
        "def sq(x): return 0",
    ]
    metas = [
        {"test_list": ["assert sq(3) == 9"]},
        {"inputs": ["1"], "outputs": ["2"]},
        {},
        {"test_list": ["assert sq(3) == 9"]},
    ]
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


# ----------------------------------------------------------------------------- LeetCode-style asserts


def test_asserts_may_build_the_programs_objects_inline():
    meta = {"test_list": ["assert Solution().add(2, 3) == 5", "assert Solution().add(-1, 1) == 0"]}
    good = "class Solution:\n    def add(self, a, b):\n        return a + b\n"
    assert codev.code_reward(good, "", **meta) == 1.0
    forged = (
        "class Eq:\n    def __eq__(self, o):\n        return True\n"
        "class Solution:\n    def add(self, a, b):\n        return Eq()\n"
    )
    assert codev.code_reward(forged, "", **meta) == 0.0


# ----------------------------------------------------------------------------- function calls


TWO_SUM = """
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = defaultdict(int)
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
"""


def test_function_call_form():
    meta = {"fn_name": "add", "inputs": [[1, 2], [3, 4]], "outputs": [3, 7]}
    assert codev.code_reward("```python\ndef add(a, b):\n    return a + b\n```", "", **meta) == 1.0
    assert codev.code_reward("def add(a, b):\n    return a * b\n", "", **meta) == 0.0
    assert codev.code_reward("def add(a, b):\n    return 3\n", "", reward_mode="fraction", **meta) == 0.5
    assert codev.code_reward("def other(a, b):\n    return a + b\n", "", **meta) == 0.0
    # LiveCodeBench: arguments as JSON lines, outputs as JSON; the prelude's names need no import
    lcb = {"fn_name": "twoSum", "inputs": ["[2, 7, 11, 15]\n9", "[3, 2, 4]\n6"], "outputs": ["[0, 1]", "[1, 2]"]}
    assert codev.code_reward(TWO_SUM, "", **lcb) == 1.0
    assert codev.code_reward(TWO_SUM, json.dumps(lcb)) == 1.0  # verl prime_code: the cases as the answer
    # APPS / TACO: input_output JSON, each expected output wrapped in a one-element list; tuples are lists
    apps = {
        "input_output": json.dumps({"fn_name": "span", "inputs": [[[3, 1, 2]], [[5]]], "outputs": [[[1, 3]], [[5, 5]]]})
    }
    assert codev.code_reward("def span(xs):\n    return (min(xs), max(xs))\n", "", **apps) == 1.0
    assert codev.code_reward("def span(xs):\n    return [[min(xs), max(xs)]]\n", "", **apps) == 1.0
    assert codev.code_reward("def span(xs):\n    return [min(xs)]\n", "", **apps) == 0.0


def test_function_call_prelude():
    code = """
    def f(xs: List[int]) -> Optional[int]:
        c = Counter(xs)
        h = []
        heappush(h, -max(c.values()))
        @lru_cache(None)
        def g(n):
            return n if n < 2 else g(n - 1) + g(n - 2)
        return -h[0] + g(10) + gcd(4, 6) + (inf > 1) + bisect_left([1, 2, 3], 2) + len(ascii_lowercase) + floor(sqrt(9))
    """
    meta = {"fn_name": "f", "inputs": [[[1, 1, 2]]], "outputs": [2 + 55 + 2 + 1 + 1 + 26 + 3]}
    assert codev.code_reward(textwrap.dedent(code), "", **meta) == 1.0
    assert (
        codev.code_reward("def f(xs):\n    return pow(2, 3, 5)\n", "", fn_name="f", inputs=[[[]]], outputs=[3]) == 1.0
    )


def test_function_call_values_are_judged_outside():
    meta = {"fn_name": "f", "inputs": [[1]], "outputs": [1]}
    hacks = [
        "class E:\n    def __eq__(s, o):\n        return True\ndef f(x):\n    return E()\n",
        "class L(int):\n    def __eq__(s, o):\n        return True\n    def __int__(s):\n        return 1\n"
        "    __index__ = __int__\n    __hash__ = int.__hash__\ndef f(x):\n    return L(0)\n",
        "import sys\ndef f(x):\n    print(1)\n    sys.exit(0)\n",
        "import os\ndef f(x):\n    os._exit(0)\n",
    ]
    assert [codev.code_reward(h, "", **meta) for h in hacks] == [0.0] * len(hacks)


def test_arguments_and_inputs_are_passed_as_given():
    code = "def f(*args):\n    return [type(a).__name__ for a in args]\n"
    meta = {
        "fn_name": "f",
        "inputs": [[None, "None", 1.5, [1], {"a": 1}]],
        "outputs": [["NoneType", "str", "float", "list", "dict"]],
    }
    assert codev.code_reward(code, "", **meta) == 1.0
    echo = "import sys\nprint(repr(sys.stdin.read()))\n"
    assert codev.code_reward(echo, "", inputs=[None], outputs=["''"]) == 1.0  # no input, not the text "None"
    assert codev.code_reward(echo, "", inputs=[["1 2", "3"]], outputs=["'1 2\\n3\\n'"]) == 1.0  # a list of lines


# ----------------------------------------------------------------------------- malformed rows


@pytest.mark.parametrize(
    "meta, why",
    [
        ({"inputs": ["1\n"], "outputs": ["1", "2"]}, "test case 1: no input"),
        ({"inputs": ["1", "2"], "outputs": ["1"]}, "test case 1: no expected output"),
        ({"inputs": [], "outputs": []}, "no test cases"),
        ({"inputs": "1", "outputs": "1"}, "'inputs' must be a list"),
        ({"inputs": ["1"]}, "'outputs' is missing"),
        ({"inputs": [1], "outputs": ["1"]}, "test case 0: the input is int"),
        ({"inputs": ["1"], "outputs": [None]}, "test case 0: the output is NoneType"),
        ({"cases": [{"input": "1", "output": "1"}, {"input": "1"}]}, "test case 1: no 'output'"),
        ({"cases": [{"input": "1", "output": "1"}, "1"]}, "test case 1: a str"),
        ({"cases": "[{"}, "cases is not valid JSON"),
        ({"fn_name": "f", "inputs": [[1], 1], "outputs": [1, 1]}, "test case 1: the input is int"),
        ({"fn_name": "f", "inputs": [[1]], "outputs": [1, 1]}, "test case 1: no input"),
        ({"fn_name": "f", "inputs": ["1\n[2"], "outputs": ["1"]}, "test case 0: input line 2 is not JSON"),
        ({"fn_name": "f", "inputs": ["1"], "outputs": ["x"]}, "test case 0: the output is not JSON"),
        ({"fn_name": "f(", "inputs": [[1]], "outputs": [1]}, "fn_name must be a function name"),
        (
            {"fn_name": "f", "inputs": [[1], [object()]], "outputs": [1, 1]},
            "test case 1: the arguments are not plain data",
        ),
        ({"test_list": []}, "'test_list' is empty"),
        ({"test_list": ["assert f(1) == 1", 3]}, "test_list[1] is int"),
        ({"test_list": ["assert f(1) =="]}, "the tests do not parse"),
        ({"test": 3, "entry_point": "f"}, "'test' must be a str"),
    ],
)
def test_malformed_rows_are_errors_naming_the_case(meta, why):
    program = "import sys\nprint(1)\ndef f(*a):\n    return 1\n"  # would pass whatever a lenient reader made of it
    with pytest.raises(ValueError, match=re.escape(why)):
        codev.code_reward(program, "", **meta)
    errors = []
    assert verifiers.score_batch(
        "code", [program, program], ["", ""], [meta, {"inputs": ["1"], "outputs": ["1"]}], timeout_s=5.0, errors=errors
    ) == [None, 1.0]
    assert len(errors) == 1 and errors[0][0] == 0 and why in errors[0][1]


def test_sandbox_failures_are_reported(monkeypatch):
    import sandbox

    monkeypatch.setattr(
        sandbox,
        "run_batch",
        lambda requests, pool=None: [sandbox.Verdict("fail", "the jail died", sandbox_error=True) for _ in requests],
    )
    errors: list = []
    rewards = codev.score_batch(["x = 1", "x = 1"], ["", ""], [{"test_list": ["assert x == 1"]}, {}], errors=errors)
    assert rewards == [None, None]
    assert errors == [
        (
            1,
            "ValueError: no tests in meta (test+entry_point, test_list, fn_name+inputs/outputs, "
            "inputs/outputs, cases, input_output) or answer",
        ),
        (0, "sandbox failure: the jail died"),
    ]
