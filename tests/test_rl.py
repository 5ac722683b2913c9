"""A GRPO run end to end on the shipped tiny model: outputs, metrics, summary, determinism, bad input."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_MODEL, assert_close_norm
from test_packing import fp32_rel

from rlvr import algos
from rlvr.learner import Learner
from rlvr.log import read_records
from rlvr.rl import train
from rlvr.sampler import HFSampler, make_sampler

EPS32 = torch.finfo(torch.float32).eps


def test_two_step_smoke_run_writes_every_output(tiny_cfg):
    cfg = tiny_cfg({"eval.every_steps": 1, "eval.samples": 2})
    summary = train(cfg)
    out = Path(cfg.output_dir)
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "final/config.json",
        "final/model.safetensors",
        "eval_initial_samples.jsonl",
        "eval_final_samples.jsonl",
        "curves.png",
    ):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").iterdir())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"eval/accuracy", "eval/pass@1", "eval/pass@2"} <= set(rows[0]) and "eval/accuracy" not in rows[1]
    for key in (
        "reward/math",
        "reward/format",
        "reward/total",
        "accuracy",
        "response/len",
        "entropy",
        "clip_frac",
        "grad_norm",
        "lr",
        "perf/sample_tokens_per_s",
        "perf/step_s",
        "mismatch/logprob_abs",
        "verifier/math_failures",
    ):
        assert key in rows[0], key
    # The hf sampler shares the learner's weights, so its log-probs are the learner's up to a forward's rounding
    # (rows of <= 40 + ~60 tokens), relative to mean |log p|, which the mean entropy estimates (another token's: 1e4x).
    assert rows[0]["mismatch/logprob_abs"] <= fp32_rel(100) * rows[0]["entropy"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary
    for k in ("eval_initial", "eval_final"):
        assert set(saved[k]) >= {"accuracy", "accuracy_any_format", "n"} and saved[k]["n"] == 8
        assert 0 <= saved[k]["accuracy"] <= saved[k]["accuracy_any_format"] <= 1


def test_same_seed_same_run(tmp_path, tiny_cfg):
    runs = []
    for name in ("a", "b"):
        over = {"output_dir": str(tmp_path / name), "rl.steps": 1}
        summary = train(tiny_cfg(over))
        rows = read_records(tmp_path / name / "metrics.jsonl")
        runs.append(
            (
                {k: v for k, v in summary.items() if k != "wall_s"},
                [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows],
            )
        )
    assert runs[0] == runs[1] and runs[0][1]


def test_a_learning_step_moves_probability_towards_rewarded_samples(tiny_cfg):
    """One step with a large lr on a reward that prefers the R1 format must raise the format rate."""
    from rlvr import data as data_lib, model as model_lib
    from rlvr.rl import learn, sample_and_score

    cfg = tiny_cfg(
        {
            "rewards": "[{verifier: format}]",
            "rl.prompts_per_step": 8,
            "rl.samples_per_prompt": 8,
            "rl.lr": 5e-4,
            "rl.micro_batch_seqs": 64,
        }
    )
    model, tok = model_lib.load(cfg.model)
    train_set = data_lib.load_prompt_set(cfg.data.train, "train", cfg.data, tok, limit=64)
    sampler = make_sampler(cfg.sampler, cfg.model, model, tok)
    learner = Learner(model, cfg.deepspeed, lr=cfg.rl.lr)

    def format_rate():
        ro = sampler.generate(train_set.prompts[:32], 8, temperature=1.0, max_new_tokens=40, seed=123)
        from verifiers.format import follows_format

        return sum(map(follows_format, ro.texts)) / len(ro)

    before = format_rate()
    for step in range(1, 5):
        batch, _ = sample_and_score(cfg, sampler, data_lib.PromptStream(len(train_set), step), train_set, step)
        learn(learner, None, batch, cfg, sampler.pad_id, step)
    after = format_rate()
    assert after > before + 0.1, (before, after)


def _one_learn(cfg, batch_of, shift: float = 0.0, steps: list | None = None, grads: list | None = None, critic=None):
    """A fresh tiny model, one sampled batch whose sampler log-probs are shifted by ``shift``, one learn
    (its optimizer steps' grad norms appended to ``steps``, the policy's gradient at the first to ``grads``;
    ``critic``: a Learner, for rl.advantage: gae)."""
    import dataclasses

    from rlvr import model as model_lib
    from rlvr.rl import learn

    if not batch_of:
        batch_of.append(_sample(cfg, 16)[0])
    model, tok = model_lib.load(cfg.model)
    batch = batch_of[0]
    shifted = dataclasses.replace(batch.rollout, logprobs=[[x + shift for x in lp] for lp in batch.rollout.logprobs])
    learner = Learner(model, cfg.deepspeed, lr=cfg.rl.lr)
    step = learner.step

    def spied_step():
        if grads is not None and not grads:
            grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
        norm = step()
        if steps is not None:
            steps.append(norm)
        return norm

    learner.step = spied_step
    return learn(learner, None, dataclasses.replace(batch, rollout=shifted), cfg, tok.pad_token_id, 1, critic)


def _advantages(batch, cfg) -> torch.Tensor:
    """The batch's per-sequence advantages (B,) under cfg's sequence-level estimator: a token's, its sequence's."""
    from rlvr.rl import advantages

    adv, _ = advantages(batch, cfg, batch.token_mask())
    return adv[:, 0]


def _sample(cfg, n_problems: int = 64):
    """One sample_and_score step of a freshly loaded tiny model -> (batch, metrics)."""
    from rlvr import data as data_lib, model as model_lib
    from rlvr.rl import sample_and_score

    model, tok = model_lib.load(cfg.model)
    train_set = data_lib.load_prompt_set(cfg.data.train, "train", cfg.data, tok, limit=n_problems)
    sampler = make_sampler(cfg.sampler, cfg.model, model, tok)
    return sample_and_score(cfg, sampler, data_lib.PromptStream(len(train_set), 0), train_set, 1)


SMALL = {"rl.prompts_per_step": 4, "rl.samples_per_prompt": 4, "rl.micro_batch_seqs": 8}


def test_ppo_epochs_and_optimizer_steps_per_pass(tiny_cfg):
    """2 passes x 2 optimizer steps: four updates, and after the first one the ratio to the sampler's
    log-probs moves, so a large lr gets clipped; one pass of one step never clips (ratio 1)."""
    batch, steps = [], []
    over = {**SMALL, "rl.lr": 3e-2}
    one = _one_learn(tiny_cfg(over), batch)
    many = _one_learn(tiny_cfg({**over, "rl.passes_per_step": 2, "rl.optimizer_steps_per_pass": 2}), batch, steps=steps)
    assert one["clip_frac"] == 0 and len(steps) == 4 and all(n > 0 for n in steps)
    assert many["clip_frac"] > 0.01 and many["grad_norm"] == pytest.approx(sum(steps) / 4)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("advantage", ["grpo", "rloo"])
def test_loss_aggregation_over_a_real_batch(agg, advantage, tiny_cfg):
    """At ratio 1 every token's surrogate is -A of its sequence, so each mode's loss/pg is known from the
    rewards and lengths alone: token_mean weighs tokens, seq_mean_token_mean sequences, and Dr. GRPO's
    seq_mean_token_sum_norm sequences by length / max_new_tokens (40 here). The advantages are computed
    here by hand from the rewards: GRPO's (r - mean) / (std + 1e-6), RLOO's r - the mean of the others."""
    batch = []
    m = _one_learn(tiny_cfg({**SMALL, "rl.loss_agg": agg, "rl.advantage": advantage}), batch)
    ro, r = batch[0].rollout, batch[0].rewards.double().view(-1, 4)
    if advantage == "grpo":
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).view(-1)
    else:
        adv = (r - (r.sum(1, keepdim=True) - r) / 3).view(-1)
    n = torch.tensor([len(c) for c in ro.completion_ids], dtype=torch.float64)
    loss = {
        "token_mean": lambda a: -(a * n).sum() / n.sum(),
        "seq_mean_token_mean": lambda a: -a.mean(),
        "seq_mean_token_sum_norm": lambda a: -(a * n / 40).mean(),
    }[agg]
    assert adv.abs().sum() > 0
    # The ratio is 1 up to the learner's rounding against the sampler's, and the terms +-A cancel: bounded by
    # the sum of |A|, relative as the gradients of a batch (test_packing): every token of the batch adds in.
    rel = fp32_rel(sum(map(len, ro.prompt_ids)) + int(n.sum()))
    assert_close_norm(m["loss/pg"], float(loss(adv)), rel, "loss/pg", scale=float(-loss(adv.abs())))


@pytest.mark.parametrize("policy_loss", ["gspo", "cispo"])
def test_gspo_and_cispo_have_ppo_s_gradient_at_ratio_1(policy_loss, tiny_cfg):
    """At ratio 1 (the first update) GSPO's sequence ratio and CISPO's clipped weight are 1, so both give
    PPO's gradient, -A dlogp per token, under the same aggregation (GSPO's: a token mean per sequence); a
    sign, a mask or a weight off would move it. Past the first update they part from PPO: GSPO's one
    ratio per sequence leaves its tight clip range (3e-4), CISPO's loss value is -w A logp."""
    over = {**SMALL, "rl.loss_agg": "seq_mean_token_mean", "rl.lr": 1e-3}
    batch, ppo, other = [], [], []
    _one_learn(tiny_cfg(over), batch, grads=ppo)
    _one_learn(tiny_cfg({**over, "rl.policy_loss": policy_loss}), batch, grads=other)
    tokens = sum(map(len, batch[0].rollout.prompt_ids)) + sum(map(len, batch[0].rollout.completion_ids))
    assert ppo[0].norm() > 0  # the same gradient up to a batch's rounding (test_packing)
    assert_close_norm(other[0], ppo[0], fp32_rel(tokens), f"{policy_loss} gradient")
    over = {**over, "rl.passes_per_step": 2, "rl.lr": 2e-3}
    tight = {"rl.clip_low": 3e-4, "rl.clip_high": 4e-4} if policy_loss == "gspo" else {}
    a = _one_learn(tiny_cfg(over), batch)
    b = _one_learn(tiny_cfg({**over, "rl.policy_loss": policy_loss, **tight}), batch)
    if policy_loss == "gspo":
        assert b["clip_frac"] > a["clip_frac"] + 0.1, (a["clip_frac"], b["clip_frac"])
    else:
        assert abs(b["loss/pg"] - a["loss/pg"]) > 0.1 * abs(a["loss/pg"]) + 1e-3


@pytest.mark.parametrize("advantage", ["reinforce_pp", "reinforce_pp_baseline", "gae"])
def test_token_level_estimators_train_on_a_real_batch(advantage, tiny_cfg):
    """REINFORCE++ (whitened reward-to-go) and GAE (from a critic) on real samples: every token of a sequence
    gets its own advantage, the policy moves, and GAE's critic learns: over three learns on the batch its
    value loss falls and it explains more of the returns."""
    from rlvr import model as model_lib

    # discounted (gamma < 1), so even a terminal reward gives every token its own advantage
    cfg = tiny_cfg({**SMALL, "rl.advantage": advantage, "rl.gamma": 0.99, "rl.lr": 1e-3, "rl.critic.lr": 3e-3})
    batch = []
    critic = None
    if advantage == "gae":
        critic = Learner.for_stage(model_lib.load_scorer(str(TINY_MODEL))[0], cfg.deepspeed, cfg.rl.critic, 1)
    runs = [_one_learn(cfg, batch, critic=critic) for _ in range(3 if critic else 1)]
    assert runs[0]["grad_norm"] > 0 and math.isfinite(runs[0]["loss/pg"])
    from rlvr.rl import advantages

    adv, returns = advantages(
        batch[0], cfg, batch[0].token_mask(), values=torch.zeros_like(batch[0].token_mask()) if critic else None
    )
    lens = [len(c) for c in batch[0].rollout.completion_ids]
    assert any(adv[i, :n].unique().numel() > 1 for i, n in enumerate(lens))  # per token, not per sequence
    if critic:
        losses = [m["value/loss"] for m in runs]
        assert losses[2] < losses[1] < losses[0], losses
        assert runs[2]["value/explained_variance"] > runs[0]["value/explained_variance"]
        assert returns is not None and "value/clip_frac" in runs[0]


def test_kl_in_the_reward_leaves_the_loss_and_enters_the_advantages(tiny_cfg):
    """rl.kl_penalty: reward (InstructGPT): the KL to the reference is paid in each token's reward, so the
    loss has no KL term (loss/total is loss/pg), and the KL moves the advantages, so the update."""
    import dataclasses

    from rlvr import model as model_lib
    from rlvr.rl import learn

    over = {**SMALL, "rl.advantage": "reinforce_pp", "rl.kl_penalty": "reward", "rl.kl_estimator": "k1"}
    cfg = tiny_cfg({**over, "rl.beta": 0.5, "rl.lr": 1e-3})
    batch = _sample(cfg, 16)[0]
    ref, tok = model_lib.load(cfg.model)
    ref.eval().requires_grad_(False)
    with torch.no_grad():  # a reference the policy has drifted from
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grads = []
    for beta in (0.5, 1e-4):
        model = model_lib.load(cfg.model)[0]
        learner = Learner(model, cfg.deepspeed, lr=1e-3)
        step = learner.step

        def spied(step=step, model=model):
            grads.append(torch.cat([p.grad.view(-1) for p in model.parameters()]))
            return step()

        learner.step = spied
        m = learn(learner, ref, batch, dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, beta=beta)), 0, 1)
        assert m["kl"] != 0 and m["loss/total"] == m["loss/pg"]
    assert (grads[0] - grads[1]).norm() > 0.05 * grads[1].norm()  # far beyond a batch's rounding


def test_entropy_bonus_enters_the_loss(tiny_cfg):
    """token_mean over one optimizer step: loss/total = loss/pg - entropy_coef x mean token entropy."""
    batch = []
    m = _one_learn(tiny_cfg({**SMALL, "rl.entropy_coef": 0.05}), batch)
    adv, n = _advantages(batch[0], tiny_cfg(SMALL)), torch.tensor([len(c) for c in batch[0].rollout.completion_ids])
    size = float((adv.abs() * n).sum() / n.sum()) + 0.05 * m["entropy"]  # the terms' size: +-A, entropies
    assert m["entropy"] > 0  # the same per-token values, summed in another grouping: eps x n for n fp32 terms
    assert_close_norm(m["loss/total"], m["loss/pg"] - 0.05 * m["entropy"], EPS32 * int(n.sum()), "loss/total", size)


def test_dynamic_sampling_and_overlong_shaping_on_real_samples(tiny_cfg):
    over = {**SMALL, "rl.prompts_per_step": 16, "rl.samples_per_prompt": 2, "rl.advantage": "drgrpo"}
    base = tiny_cfg(over)
    flat = lambda b: [bool(r.max() == r.min()) for r in b.rewards.view(-1, 2)]  # noqa: E731
    plain, _ = _sample(base)
    assert any(flat(plain))  # without it some groups' rewards are all equal: no signal
    kept, m = _sample(tiny_cfg({**over, "rl.dynamic_sampling": True}))
    assert not any(flat(kept)) and m["sampling/rounds"] > 1 and len(kept.rollout) == 2 * m["sampling/kept_groups"]
    masked, _ = _sample(tiny_cfg({**over, "rl.overlong": "mask"}))
    cut = torch.tensor(masked.rollout.truncated)
    assert cut.any() and (~cut).any()
    masked_adv, plain_adv = _advantages(masked, tiny_cfg({**over, "rl.overlong": "mask"})), _advantages(plain, base)
    assert not masked_adv[cut].any() and torch.equal(masked_adv[~cut], plain_adv[~cut])
    # DAPO's soft penalty over the last 16 of 40 tokens: drgrpo advantages move by the penalty minus its group mean.
    soft, _ = _sample(tiny_cfg({**over, "rl.overlong": "penalty", "rl.overlong_buffer_tokens": 16}))
    pen = algos.overlong_penalty(torch.tensor([len(c) for c in soft.rollout.completion_ids]), 40, 16, 1.0)
    assert pen.min() < 0 and soft.rollout.completion_ids == plain.rollout.completion_ids
    shift = (pen.view(-1, 2) - pen.view(-1, 2).mean(1, keepdim=True)).view(-1)
    # A few fp32 roundings (r + pen, a 2-term mean, the differences) of values up to the rewards' total weight 2.
    moved = _advantages(soft, base) - plain_adv
    assert_close_norm(moved, shift, 8 * EPS32, "shift", 2 * math.sqrt(len(shift)))


def test_tis_weights_each_token_by_the_capped_learner_to_sampler_ratio(tiny_cfg):
    """A sampler whose log-probs sit 0.3 above the learner's (vLLM drift, exaggerated): TIS clips against
    the learner's own log-probs, so the surrogate is that of an exact sampler, scaled by e^-0.3 on every
    token; 1.0 below, the ratio e^1 is capped at 2."""
    over = {**SMALL, "rl.lr": 1e-3}
    batch = []
    exact = _one_learn(tiny_cfg(over), batch)
    tis = tiny_cfg({**over, "rl.tis_cap": 2.0})
    above, below = _one_learn(tis, batch, 0.3), _one_learn(tis, batch, -1.0)
    assert exact["grad_norm"] > 0 and "mismatch/tis_weight" not in exact
    # The learner's log-probs are the sampler's up to rounding, in each token's weight e^(-0.3 + rounding) and
    # in the exact run's ratio: bounded as the gradients of a batch (test_packing); +-A cancel in loss/pg.
    ro, adv = batch[0].rollout, _advantages(batch[0], tiny_cfg(over))
    n = torch.tensor([len(c) for c in ro.completion_ids])
    rel, size = fp32_rel(sum(map(len, ro.prompt_ids)) + int(n.sum())), float((adv.abs() * n).sum() / n.sum())
    assert_close_norm(above["mismatch/tis_weight"], math.exp(-0.3), rel, "tis_weight")
    assert above["mismatch/tis_capped_frac"] == 0 and below["mismatch/tis_capped_frac"] == 1
    for run, w in ((above, math.exp(-0.3)), (below, 2.0)):
        assert_close_norm(run["loss/pg"], w * exact["loss/pg"], rel, f"loss/pg at weight {w}", scale=w * size)
        assert_close_norm(run["grad_norm"], w * exact["grad_norm"], rel, f"grad_norm at weight {w}")
    assert above["clip_frac"] == exact["clip_frac"] == 0  # the clip sees ratio 1, not the sampler's e^0.3
    untreated = _one_learn(tiny_cfg(over), batch, -1.0)
    # Without TIS the ratio sees the drift, e^1 > 1 + clip_high: every positive-advantage token is clipped
    # and its gradient lost.
    assert untreated["clip_frac"] > 0.2


def test_hf_sampler_greedy_is_deterministic_and_logprobs_are_consistent():
    from rlvr import model as model_lib
    from rlvr.config import ModelConfig

    model, tok = model_lib.load(ModelConfig(path=str(TINY_MODEL)))
    s = HFSampler(model, tok)
    prompts = [
        tok("User: What is 12 + 30 - 5? Assistant:")["input_ids"],
        tok("User: Compute 40 - 11 + 2. Assistant:")["input_ids"],
    ]
    a = s.generate(prompts, 1, temperature=0.0, max_new_tokens=40)
    b = s.generate(prompts, 1, temperature=0.0, max_new_tokens=40)
    assert a.texts == b.texts and not any(a.truncated)
    # The learner's log-probs of the sampled tokens equal the sampler's (same weights, same distribution).
    ro = s.generate(prompts, 3, temperature=0.8, max_new_tokens=40, seed=5)
    ids, attn, mask = model_lib.pad_batch(ro.prompt_ids, ro.completion_ids, s.pad_id)
    with torch.no_grad():
        logp, m = model_lib.completion_logprobs(model, ids, attn, mask, temperature=0.8)
    rows = enumerate(zip(ro.prompt_ids, ro.logprobs))
    want = torch.cat([logp[i, len(p) - 1 : len(p) - 1 + len(lp)] for i, (p, lp) in rows])
    # a forward's rounding: a token's log-prob attends over its row and runs the MLPs (test_sampler_static)
    assert_close_norm([x for lp in ro.logprobs for x in lp], want, fp32_rel(ids.shape[1]), "sampler vs learner")


def run_cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "rlvr.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["--rl.lrr=1"], "did you mean 'rl.lr'"),
        (["--model.path=/nonexistent/model"], "model.path '/nonexistent/model' does not exist"),
        (["--data.train=/nonexistent/train.jsonl"], "data.train '/nonexistent/train.jsonl' does not exist"),
        (["--rl.micro_batch_seqs=7"], "pick a divisor"),
        (["--data.max_prompt_tokens=10"], "over data.max_prompt_tokens=10"),
        (["--sampler.max_new_tokens=100000"], "exceeds the model's context"),
    ],
)
def test_bad_input_gets_one_paragraph_not_a_traceback(overrides, needle, tmp_path):
    r = run_cli("recipes/tiny_zero.yaml", f"--output_dir={tmp_path}", *overrides)
    assert r.returncode == 1
    assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_a_shared_error_prints_on_rank_0_only_and_a_rank_s_own_with_its_rank(tmp_path, monkeypatch, capsys):
    """Under torchrun every rank hits the same config error: one copy, not one per rank."""
    from rlvr import train as train_cli

    argv = ["recipes/tiny_zero.yaml", f"--output_dir={tmp_path}", "--rl.lrr=1"]
    monkeypatch.chdir(REPO)
    for rank, printed in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        assert train_cli.main(argv) == 1
        assert ("did you mean 'rl.lr'" in capsys.readouterr().err) == printed
    monkeypatch.setattr(train_cli, "run", lambda *a, **k: open(tmp_path / "no" / "such" / "file"))
    assert train_cli.main(argv) == 1  # still rank 1: an OSError may be this rank's alone
    assert capsys.readouterr().err.startswith("[rank 1] error: ")


def test_row_without_answer_field_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q1", "answer": "1"}\n{"question": "q2"}\n')
    r = run_cli("recipes/tiny_zero.yaml", f"--output_dir={tmp_path}/o", f"--data.train={bad}")
    assert r.returncode == 1 and f"{bad}:2" in r.stderr and "answer" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_the_demo_recipe_learns(tmp_path, tiny_cfg):
    """The README's demo as is: held-out greedy accuracy must rise by the margins the demo promises."""
    s = train(
        tiny_cfg(
            {
                "output_dir": str(tmp_path / "demo"),
                "model.path": str(TINY_MODEL),
                "data.train": str(REPO / "rlvr/tiny/data/train.jsonl"),
                "data.test": str(REPO / "rlvr/tiny/data/test.jsonl"),
            }
        )
    )
    assert s["eval_final"]["n"] >= 200
    assert s["eval_final"]["accuracy"] - s["eval_initial"]["accuracy"] >= 0.25
    assert s["eval_final"]["accuracy_any_format"] - s["eval_initial"]["accuracy_any_format"] >= 0.15


def test_ppo_ptx_mixes_the_sft_loss_into_every_optimizer_step(tiny_cfg):
    """rl.ptx_coef (InstructGPT's PPO-ptx): each optimizer step also learns the next tokens of SFT rows, so
    after a few steps on the same rollouts the policy fits those rows better than without the term."""
    from conftest import TINY_DATA

    from rlvr import data as data_lib, model as model_lib
    from rlvr.rl import Ptx, learn

    over = {
        **SMALL,
        "rl.lr": 1e-3,
        "rl.ptx_coef": 1.0,
        "rl.ptx_seqs_per_step": 8,
        "data.ptx": str(TINY_DATA / "prefs_test.jsonl"),
        "data.response_field": "chosen",
    }
    cfg = tiny_cfg(over)
    batch = _sample(cfg, 16)[0]
    nll = {}
    for coef in (1.0, 0.0):
        model, tok = model_lib.load(cfg.model)
        ptx = Ptx.load(cfg, tok)
        learner = Learner(model, cfg.deepspeed, lr=cfg.rl.lr)
        for step in range(3):
            m = learn(learner, None, batch, cfg, tok.pad_token_id, step, ptx=ptx if coef else None)
            assert ("ptx/loss" in m) == bool(coef)
        with torch.no_grad():
            seen = [ptx.rows[i] for i in ptx.order[:24]]  # the rows of the 3 optimizer steps
            loss, n = model_lib.nll_sum(model, *data_lib.collate(seen, tok.pad_token_id))
        nll[coef] = float(loss) / n
    assert nll[1.0] < 0.8 * nll[0.0], nll
