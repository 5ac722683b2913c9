"""A GRPO run end to end on the shipped tiny model: outputs, metrics, summary, determinism, bad input."""

import json
import math
import subprocess
import sys

import pytest
import torch

from rlvr import algos
from rlvr.config import load_config
from rlvr.grpo import train
from rlvr.learner import Learner
from rlvr.sampler import HFSampler
from tests.conftest import REPO, TINY_MODEL


def test_two_step_smoke_run_writes_every_output(tiny_overrides):
    cfg = load_config(REPO / "recipes" / "tiny_zero.yaml", {**tiny_overrides, "eval.every_steps": 1, "eval.samples": 2})
    summary = train(cfg)
    out = REPO / cfg.output_dir if not cfg.output_dir.startswith("/") else __import__("pathlib").Path(cfg.output_dir)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "final/config.json", "final/model.safetensors",
                 "eval_initial_samples.jsonl", "eval_final_samples.jsonl", "curves.png"):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").iterdir())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"eval/accuracy", "eval/pass@1", "eval/pass@2"} <= set(rows[0]) and "eval/accuracy" not in rows[1]
    for key in ("reward/math", "reward/format", "reward/total", "accuracy", "response/len", "entropy", "clip_frac",
                "grad_norm", "lr", "perf/sample_tokens_per_s", "perf/step_s", "mismatch/logprob_abs", "verifier/math_failures"):
        assert key in rows[0], key
    # The hf sampler shares the learner's weights, so its log-probs are the learner's up to float noise.
    assert rows[0]["mismatch/logprob_abs"] < 1e-4
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary
    for k in ("eval_initial", "eval_final"):
        assert set(saved[k]) >= {"accuracy", "accuracy_any_format", "n"} and saved[k]["n"] == 8
        assert 0 <= saved[k]["accuracy"] <= saved[k]["accuracy_any_format"] <= 1


def test_same_seed_same_run(tiny_overrides, tmp_path):
    a = train(load_config(REPO / "recipes" / "tiny_zero.yaml", {**tiny_overrides, "output_dir": str(tmp_path / "a"), "grpo.steps": 1}))
    b = train(load_config(REPO / "recipes" / "tiny_zero.yaml", {**tiny_overrides, "output_dir": str(tmp_path / "b"), "grpo.steps": 1}))
    strip = lambda s: {k: v for k, v in s.items() if k != "wall_s"}  # noqa: E731
    assert strip(a) == strip(b)
    ma = [{k: v for k, v in json.loads(l).items() if not k.startswith("perf/")} for l in open(tmp_path / "a" / "metrics.jsonl")]
    mb = [{k: v for k, v in json.loads(l).items() if not k.startswith("perf/")} for l in open(tmp_path / "b" / "metrics.jsonl")]
    assert ma == mb


def test_a_learning_step_moves_probability_towards_rewarded_samples(tiny_overrides):
    """One step with a large lr on a reward that prefers the R1 format must raise the format rate."""
    from rlvr import data as data_lib, model as model_lib
    from rlvr.grpo import make_sampler, sample_and_score, learn

    cfg = load_config(REPO / "recipes" / "tiny_zero.yaml", {**tiny_overrides, "rewards": "[{verifier: format}]",
                                                             "grpo.prompts_per_step": 8, "grpo.samples_per_prompt": 8,
                                                             "grpo.lr": 5e-4, "grpo.micro_batch_seqs": 64})
    model, tok = model_lib.load(cfg.model)
    problems = data_lib.load_problems(cfg.data.train, "train", "question", "answer")[:64]
    prompts = data_lib.encode_prompts(problems, tok, "r1_zero", 512)
    texts = [tok.decode(p) for p in prompts]
    sampler = make_sampler(cfg, model, tok)
    learner = Learner(model, cfg.deepspeed, lr=cfg.grpo.lr)

    def format_rate():
        ro = sampler.generate(prompts[:32], 8, temperature=1.0, max_new_tokens=40, seed=123)
        from verifiers.format import follows_format
        return sum(map(follows_format, ro.texts)) / len(ro)

    before = format_rate()
    for step in range(1, 5):
        batch, _ = sample_and_score(cfg, sampler, data_lib.PromptStream(len(problems), step), problems, prompts, texts, step)
        learn(learner, None, batch, cfg, sampler.pad_id, step)
    after = format_rate()
    assert after > before + 0.1, (before, after)


def _one_learn(cfg, batch_of, shift: float = 0.0, steps: list | None = None):
    """A fresh tiny model, one sampled batch whose sampler log-probs are shifted by ``shift``, one learn
    (its optimizer steps' grad norms appended to ``steps``)."""
    import dataclasses

    from rlvr import model as model_lib
    from rlvr.grpo import learn, make_sampler

    if not batch_of:
        batch_of.append(_sample(cfg, 16)[0])
    model, tok = model_lib.load(cfg.model)
    sampler = make_sampler(cfg, model, tok)
    batch = batch_of[0]
    shifted = dataclasses.replace(batch.rollout, logprobs=[[x + shift for x in lp] for lp in batch.rollout.logprobs])
    learner = Learner(model, cfg.deepspeed, lr=cfg.grpo.lr)
    if steps is not None:
        step = learner.step
        learner.step = lambda: steps.append(step()) or steps[-1]
    return learn(learner, None, dataclasses.replace(batch, rollout=shifted), cfg, sampler.pad_id, 1)


def _sample(cfg, n_problems: int = 64):
    """One sample_and_score step of a freshly loaded tiny model -> (batch, metrics)."""
    from rlvr import data as data_lib, model as model_lib
    from rlvr.grpo import make_sampler, sample_and_score

    model, tok = model_lib.load(cfg.model)
    problems = data_lib.load_problems(cfg.data.train, "train", "question", "answer")[:n_problems]
    prompts = data_lib.encode_prompts(problems, tok, "r1_zero", 512)
    return sample_and_score(cfg, make_sampler(cfg, model, tok), data_lib.PromptStream(len(problems), 0), problems,
                            prompts, [tok.decode(p) for p in prompts], 1)


SMALL = {"grpo.prompts_per_step": 4, "grpo.samples_per_prompt": 4, "grpo.micro_batch_seqs": 8}


def test_ppo_epochs_and_optimizer_steps_per_pass(tiny_overrides):
    """2 passes x 2 optimizer steps: four updates, and after the first one the ratio to the sampler's
    log-probs moves, so a large lr gets clipped; one pass of one step never clips (ratio 1)."""
    batch, steps = [], []
    over = {**tiny_overrides, **SMALL, "grpo.lr": 3e-2}
    one = _one_learn(load_config(REPO / "recipes" / "tiny_zero.yaml", over), batch)
    many = _one_learn(load_config(REPO / "recipes" / "tiny_zero.yaml", {
        **over, "grpo.passes_per_step": 2, "grpo.optimizer_steps_per_pass": 2}), batch, steps=steps)
    assert one["clip_frac"] == 0 and len(steps) == 4 and all(n > 0 for n in steps)
    assert many["clip_frac"] > 0.01 and many["grad_norm"] == pytest.approx(sum(steps) / 4)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_loss_aggregation_over_a_real_batch(agg, tiny_overrides):
    """At ratio 1 every token's surrogate is -A of its sequence, so each mode's loss/pg is known from the
    advantages and lengths alone: token_mean weighs tokens, seq_mean_token_mean sequences, and Dr. GRPO's
    seq_mean_token_sum_norm sequences by length / max_new_tokens (40 here)."""
    batch = []
    m = _one_learn(load_config(REPO / "recipes" / "tiny_zero.yaml", {**tiny_overrides, **SMALL, "grpo.loss_agg": agg}),
                   batch)
    adv = batch[0].advantages.double()
    n = torch.tensor([len(c) for c in batch[0].rollout.completion_ids], dtype=torch.float64)
    want = {"token_mean": -(adv * n).sum() / n.sum(), "seq_mean_token_mean": -adv.mean(),
            "seq_mean_token_sum_norm": -(adv * n / 40).mean()}[agg]
    assert adv.abs().sum() > 0 and m["loss/pg"] == pytest.approx(float(want), abs=1e-5)


def test_entropy_bonus_enters_the_loss(tiny_overrides):
    """token_mean over one optimizer step: loss/total = loss/pg - entropy_coef x mean token entropy."""
    m = _one_learn(load_config(REPO / "recipes" / "tiny_zero.yaml", {**tiny_overrides, **SMALL,
                                                                      "grpo.entropy_coef": 0.05}), [])
    assert m["entropy"] > 0 and m["loss/total"] == pytest.approx(m["loss/pg"] - 0.05 * m["entropy"], rel=1e-5)


def test_dynamic_sampling_and_overlong_shaping_on_real_samples(tiny_overrides):
    over = {**tiny_overrides, **SMALL, "grpo.prompts_per_step": 16, "grpo.samples_per_prompt": 2,
            "grpo.advantage": "drgrpo"}
    base = load_config(REPO / "recipes" / "tiny_zero.yaml", over)
    flat = lambda b: [bool(a.abs().max() == 0) for a in b.advantages.view(-1, 2)]  # noqa: E731
    plain, _ = _sample(base)
    assert any(flat(plain))  # without it some groups' rewards are all equal: no signal
    kept, m = _sample(load_config(REPO / "recipes" / "tiny_zero.yaml", {**over, "grpo.dynamic_sampling": True}))
    assert not any(flat(kept)) and m["sampling/rounds"] > 1 and len(kept.rollout) == 2 * m["sampling/kept_groups"]
    masked, _ = _sample(load_config(REPO / "recipes" / "tiny_zero.yaml", {**over, "grpo.overlong": "mask"}))
    cut = torch.tensor(masked.rollout.truncated)
    assert cut.any() and (~cut).any()
    assert not masked.advantages[cut].any() and torch.equal(masked.advantages[~cut], plain.advantages[~cut])
    # DAPO's soft penalty over the last 16 of 40 tokens: drgrpo advantages move by the penalty minus its group mean.
    soft, _ = _sample(load_config(REPO / "recipes" / "tiny_zero.yaml", {**over, "grpo.overlong": "penalty",
                                                                         "grpo.overlong_buffer_tokens": 16}))
    pen = algos.overlong_penalty(torch.tensor([len(c) for c in soft.rollout.completion_ids]), 40, 16, 1.0)
    assert pen.min() < 0 and soft.rollout.completion_ids == plain.rollout.completion_ids
    shift = (pen.view(-1, 2) - pen.view(-1, 2).mean(1, keepdim=True)).view(-1)
    torch.testing.assert_close(soft.advantages - plain.advantages, shift, atol=1e-6, rtol=0)


def test_tis_weights_each_token_by_the_capped_learner_to_sampler_ratio(tiny_overrides):
    """A sampler whose log-probs sit 0.3 above the learner's (vLLM drift, exaggerated): TIS clips against
    the learner's own log-probs, so the surrogate is that of an exact sampler, scaled by e^-0.3 on every
    token; 1.0 below, the ratio e^1 is capped at 2."""
    over = {**tiny_overrides, **SMALL, "grpo.lr": 1e-3}
    batch = []
    exact = _one_learn(load_config(REPO / "recipes" / "tiny_zero.yaml", over), batch)
    tis = load_config(REPO / "recipes" / "tiny_zero.yaml", {**over, "grpo.tis_cap": 2.0})
    above, below = _one_learn(tis, batch, 0.3), _one_learn(tis, batch, -1.0)
    assert exact["grad_norm"] > 0 and "mismatch/tis_weight" not in exact
    assert above["mismatch/tis_weight"] == pytest.approx(math.exp(-0.3), rel=1e-4)
    assert above["mismatch/tis_capped_frac"] == 0 and below["mismatch/tis_capped_frac"] == 1
    for k in ("loss/pg", "grad_norm"):
        assert above[k] == pytest.approx(math.exp(-0.3) * exact[k], rel=1e-4), k
        assert below[k] == pytest.approx(2.0 * exact[k], rel=1e-4), k
    assert above["clip_frac"] == exact["clip_frac"] == 0  # the clip sees ratio 1, not the sampler's e^0.3
    untreated = _one_learn(load_config(REPO / "recipes" / "tiny_zero.yaml", over), batch, -1.0)
    # Without TIS the ratio sees the drift, e^1 > 1 + clip_high: every positive-advantage token is clipped
    # and its gradient lost.
    assert untreated["clip_frac"] > 0.2


def test_hf_sampler_greedy_is_deterministic_and_logprobs_are_consistent():
    from rlvr import model as model_lib
    from rlvr.config import ModelConfig

    model, tok = model_lib.load(ModelConfig(path=str(TINY_MODEL)))
    s = HFSampler(model, tok)
    prompts = [tok("User: What is 12 + 30 - 5? Assistant:")["input_ids"], tok("User: Compute 40 - 11 + 2. Assistant:")["input_ids"]]
    a = s.generate(prompts, 1, temperature=0.0, max_new_tokens=40)
    b = s.generate(prompts, 1, temperature=0.0, max_new_tokens=40)
    assert a.texts == b.texts and not any(a.truncated)
    # The learner's log-probs of the sampled tokens equal the sampler's (same weights, same distribution).
    ro = s.generate(prompts, 3, temperature=0.8, max_new_tokens=40, seed=5)
    ids, attn, mask = model_lib.pad_batch(ro.prompt_ids, ro.completion_ids, s.pad_id)
    with torch.no_grad():
        logp, m = model_lib.completion_logprobs(model, ids, attn, mask, temperature=0.8)
    for i, (p, lp) in enumerate(zip(ro.prompt_ids, ro.logprobs)):
        assert torch.allclose(logp[i, len(p) - 1: len(p) - 1 + len(lp)], torch.tensor(lp), atol=1e-4)


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "rlvr.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("overrides, needle", [
    (["--grpo.lrr=1"], "did you mean 'grpo.lr'"),
    (["--model.path=/nonexistent/model"], "model.path '/nonexistent/model' does not exist"),
    (["--data.train=/nonexistent/train.jsonl"], "not found"),
    (["--grpo.micro_batch_seqs=7"], "pick a divisor"),
    (["--data.max_prompt_tokens=10"], "over data.max_prompt_tokens=10"),
    (["--sampler.max_new_tokens=100000"], "exceeds the model's context"),
])
def test_bad_input_gets_one_paragraph_not_a_traceback(overrides, needle, tmp_path):
    r = run_cli("recipes/tiny_zero.yaml", f"--output_dir={tmp_path}", *overrides)
    assert r.returncode == 1
    assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_a_shared_error_prints_on_rank_0_only_and_a_rank_s_own_with_its_rank(tmp_path, monkeypatch, capsys):
    """Under torchrun every rank hits the same config error: one copy, not one per rank."""
    from rlvr import train as train_cli

    argv = ["recipes/tiny_zero.yaml", f"--output_dir={tmp_path}", "--grpo.lrr=1"]
    monkeypatch.chdir(REPO)
    for rank, printed in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        assert train_cli.main(argv) == 1
        assert ("did you mean 'grpo.lr'" in capsys.readouterr().err) == printed
    monkeypatch.setattr(train_cli, "run", lambda *a, **k: open(tmp_path / "no" / "such" / "file"))
    assert train_cli.main(argv) == 1  # still rank 1: an OSError may be this rank's alone
    assert capsys.readouterr().err.startswith("[rank 1] error: ")


def test_row_without_answer_field_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q1", "answer": "1"}\n{"question": "q2"}\n')
    r = run_cli("recipes/tiny_zero.yaml", f"--output_dir={tmp_path}/o", f"--data.train={bad}")
    assert r.returncode == 1 and f"{bad}:2" in r.stderr and "answer" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_the_demo_recipe_learns(tmp_path):
    """The README's demo as is: held-out greedy accuracy must rise by the margins the demo promises."""
    s = train(load_config(REPO / "recipes" / "tiny_zero.yaml", {"output_dir": str(tmp_path / "demo"),
                                                                 "model.path": str(TINY_MODEL),
                                                                 "data.train": str(REPO / "rlvr/tiny/data/train.jsonl"),
                                                                 "data.test": str(REPO / "rlvr/tiny/data/test.jsonl")}))
    assert s["eval_final"]["n"] >= 200
    assert s["eval_final"]["accuracy"] - s["eval_initial"]["accuracy"] >= 0.25
    assert s["eval_final"]["accuracy_any_format"] - s["eval_initial"]["accuracy_any_format"] >= 0.15
