"""The RL stage: sample -> verify -> advantages -> loss -> step -> sync, one screen per stage. GRPO by default;
PPO with a learned critic, RLOO, REINFORCE++, GSPO and CISPO by two config keys.

    python -m rlvr.train recipes/tiny_zero.yaml                          # GRPO, the CPU demo, a few minutes
    python -m rlvr.train recipes/tiny_zero.yaml --rl.advantage=gae --rl.critic.lr=3e-3 --rl.lam=1   # PPO
    python -m rlvr.train recipes/tiny_ppo.yaml                           # RLHF as InstructGPT did it (CPU)
    python -m rlvr.train recipes/r1_zero.yaml --rl.lr=1e-6               # the GPU recipe
    python -m rlvr.train recipes/tiny_tool.yaml                          # episodes with a Python tool (CPU)

Each step draws ``prompts_per_step`` problems, samples ``samples_per_prompt`` completions of each and
scores them with the recipe's verifiers; with an environment (``env.name``: ``python``, the sandboxed tool, or a
class of yours; ``rlvr.episodes``) a sample is a multi-turn episode of model turns and observations, the
observations masked out of the loss, per-turn rewards added to the verifiers'. ``rl.advantage`` turns the
rewards into advantages (group mean and std, leave-one-out, whitened reward-to-go, or GAE from the critic,
which then learns its values beside the policy), and ``rl.policy_loss`` (PPO's clip, GSPO, CISPO) takes
``passes_per_step`` x ``optimizer_steps_per_pass`` steps with the importance ratio against the sampler's own
log-probabilities (with ``rl.tis_cap``: against the learner's own, each token weighted by the truncated
learner/sampler ratio).
The KL to the reference goes in the loss, or (``rl.kl_penalty: reward``) into every token's reward. The
algorithm math lives in ``rlvr.algos``; the run's lifecycle (resume, signals, checkpoints, logging) in
``rlvr.run``.

With ``async_rl`` the samplers run in processes of their own, up to ``async_rl.max_off_policy_steps`` steps ahead
(``rlvr.async_sampler``): this loop then takes each step's batch from them and pushes the weights after the step,
and a stale sample's loss is decoupled PPO's (``targets``).

    python -m rlvr.train recipes/tiny_zero_async.yaml                    # the CPU demo, sampler one step ahead

``stage: distill`` (on-policy distillation) is this loop with a teacher: a frozen causal LM with the student's
tokenizer (``distill.teacher``) scores, in the learner's micro-batches, the very token ids the student sampled, and
each token's advantage is -``distill.kl_coef`` x (student - teacher log-prob), the reverse KL's one-sample estimate,
plus ``distill.reward_coef`` x the verifiers' advantage. The policy loss, its clipping and the rest are the RL stage's.

    python -m rlvr.train recipes/tiny_distill.yaml     # the GRPO-trained tiny model teaches the base one (CPU)
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from dataclasses import dataclass

import torch

from rlvr import (
    algos,
    async_sampler,
    checkpoint as ckpt,
    data as data_lib,
    dist,
    episodes,
    grading,
    model as model_lib,
    packing,
)
from rlvr.config import LoraConfig
from rlvr.learner import Learner, micro_batches
from rlvr.log import Tally
from rlvr.plots import plot_run
from rlvr.rollout import Batch
from rlvr.run import Run, RunStopped
from rlvr.sampler import make_sampler
from rlvr.sampling import SamplerCrash, SyncProbe, rank_means, sample_and_score


class SyncDrift(RuntimeError):
    """The weight-sync guard tripped: the sampler's log-probabilities of the probe left the learner's."""

    def __init__(self, step: int, gap: float, max_gap: float, backend: str):
        super().__init__(
            f"weight-sync guard before step {step} samples: the {backend} sampler and the learner disagree on the "
            f"fixed probe by a mean |log-prob gap| of {gap:.3g} per token, above rl.sync_max_gap={max_gap:.3g}: "
            f"the sampler is not generating from the learner's weights. Likely causes: the weights were not "
            f"delivered (a skipped or failed update_weights, a sleep/wake that dropped them), a tensor left out "
            f"of the sync, or a name the sampler does not map (tied or renamed weights, an adapter not merged). "
            f"Raise rl.sync_max_gap only if this is float noise (0 turns the guard off)"
        )


def train(cfg) -> dict:
    """The RL stage in this process: a learner with its sampler beside it, or (``async_rl``) a learner fed by
    sampler processes, or one of those samplers (``rlvr.async_sampler``)."""
    place = async_sampler.place(cfg)  # None: the sampler is colocated
    if place is None:
        return train_learner(cfg)
    with place:
        if place.role == "sampler":
            return async_sampler.sampler_main(cfg, place)
        return train_learner(cfg, place)


def train_learner(cfg, place: async_sampler.Placement | None = None) -> dict:
    distill = cfg.stage == "distill"
    show = {"reward": "reward/total", "acc": "accuracy"} | ({"kl": "distill/reverse_kl"} if distill else {})
    run = Run(cfg, cfg.rl, show=show)
    g, d = cfg.rl, cfg.data
    model, tok = model_lib.load(run.model_config(cfg.model))  # the reference below stays the base model
    teacher = load_teacher(cfg, tok) if distill else None  # frozen, on every rank, like the reference
    ref_model = None
    if g.beta > 0:  # with LoRA, the policy itself with its adapters off (targets): no second copy
        ref_model = model if model_lib.is_lora(model) else model_lib.load(cfg.model)[0].eval().requires_grad_(False)
    critic = None
    if g.advantage in algos.ADVANTAGES_WITH_CRITIC:  # PPO: a value model learns beside the policy, in full
        critic_cfg = dataclasses.replace(cfg.model, path=g.critic.path or cfg.model.path, lora=LoraConfig())
        path = run.model_config(critic_cfg, "critic").path
        critic = Learner.for_stage(model_lib.load_scorer(path, cfg.model.dtype)[0], cfg.deepspeed, g.critic, g.steps)
    train_set, test_set = data_lib.load_train_test(cfg, tok, getattr(model.config, "max_position_embeddings", None))
    ptx = Ptx.load(cfg, tok) if g.ptx_coef else None
    env = episodes.from_config(cfg.env)  # None: single-turn completions
    learner = Learner.for_stage(model, cfg.deepspeed, g)
    # Asynchronous, the samplers are elsewhere: this one, on the learner's own weights, runs the evaluations.
    sampler_cfg = cfg.sampler if place is None else dataclasses.replace(cfg.sampler, backend="hf")
    sampler = make_sampler(sampler_cfg, run.model_config(cfg.model), learner.module, tok, cfg.seed)
    if model_lib.is_lora(model):  # a vLLM engine loaded the base model: a resumed (or given) adapter must reach it
        sampler.update_weights(learner.named_parameters_for_sync())
    stream = data_lib.PromptStream(len(train_set), cfg.seed, d.shuffle)
    out = run.out if run.main else None  # where the greedy evaluations save their samples
    probe = SyncProbe.build(cfg, test_set, train_set, min(len(tok), model.config.vocab_size))
    remote = None if place is None else async_sampler.Remote(place, cfg, learner, stream, probe, sampler.pad_id)

    def initial() -> dict:
        if remote is not None:  # a fresh run's samplers get the weights first, and sample while the learner evaluates
            remote.push(0)
        return {"eval_initial": greedy_eval(cfg, sampler, test_set, out, "eval_initial", env)}

    summary = run.begin(learner, tok, stream, {}, initial=initial, others={"critic": critic} if critic else None)
    if remote is not None and not remote.started:  # resumed: the samplers start from the checkpoint's version
        remote.push(run.first - 1)
    with run:
        for step in run.steps():
            at_start = {"data": stream.state(), "rng": ckpt.rng_state()}  # + untouched weights: step - 1's state
            try:
                batch, metrics = next_batch(cfg, remote, sampler, stream, train_set, step, env, probe, learner)
            except (SamplerCrash, SyncDrift, async_sampler.SamplerFailed) as e:
                raise stopped_by(e, run, step, at_start) from e
            if not dist.global_max(batch is None):  # all ranks learn, or none: the learner's calls are collective
                t0 = time.time()
                sampler.sleep()
                metrics.update(learn(learner, ref_model, batch, cfg, sampler.pad_id, step, critic, ptx, teacher))
                sampler.wake()
                if remote is None:
                    sampler.update_weights(learner.named_parameters_for_sync())
                metrics.update(batch_metrics(batch, metrics["perf/sample_s"], time.time() - t0, g.passes_per_step))
            if remote is not None and step < g.steps:  # a skipped step too: the samplers wait for its version
                metrics["async/push_s"] = remote.push(step)
            metrics["perf/step_s"] = time.time() - run.t_step
            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step != g.steps:
                metrics.update(periodic_eval(cfg, sampler, test_set, step, env))
            run.end_step(step, metrics)
    if remote is None:  # the last step's sync, before the final eval
        try:
            check_sync(probe, probe and probe.gap(learner, sampler), g.steps + 1, cfg)
        except SyncDrift as e:
            raise stopped_by(e, run, g.steps + 1, {}) from e
    summary["eval_final"] = greedy_eval(cfg, sampler, test_set, out, "eval_final", env)
    summary = run.finish(summary)
    if run.main:
        plot_run(str(run.out))
    dist.print0(f"({summary['wall_s']} s; outputs in {run.out}, curves in {run.out / 'curves.png'})")
    return summary


def next_batch(cfg, remote, sampler, stream, train_set, step: int, env, probe, learner) -> tuple[Batch | None, dict]:
    """The batch ``step`` trains on and its metrics: sampled here, the guard first checking the last sync, or
    (``remote``) taken from the samplers, which measured the guard's gap after loading the weights they used."""
    if remote is None:
        sync = check_sync(probe, probe and probe.gap(learner, sampler), step, cfg)
        batch, metrics = sample_and_score(cfg, sampler, stream, train_set, step, env)
        return batch, rank_means(metrics) | sync
    batch, metrics = remote.next(step)
    return batch, metrics | check_sync(probe, metrics.get("sync/probe_gap"), step, cfg)


def load_teacher(cfg, student_tok):
    """``distill.teacher`` -> the frozen teacher (eval mode, no gradients; in ``distill.teacher_dtype``), once its
    tokenizer is known to read token ids as the student's writes them (before its weights load)."""
    from transformers import AutoTokenizer

    d, m = cfg.distill, cfg.model
    try:
        teacher_tok = AutoTokenizer.from_pretrained(d.teacher, trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as e:
        raise model_lib.ModelError(f"distill.teacher {d.teacher!r}: could not load its tokenizer: {e}") from None
    check_same_tokenizer(student_tok, teacher_tok, cfg)
    dtype = d.teacher_dtype or m.dtype
    teacher_cfg = dataclasses.replace(m, path=d.teacher, dtype=dtype, lora=LoraConfig(), gradient_checkpointing=False)
    return model_lib.load(teacher_cfg)[0].eval().requires_grad_(False)


def check_same_tokenizer(student, teacher, cfg) -> None:
    """The teacher scores the student's token ids as they are, so both tokenizers must map the same strings to the
    same ids and agree on the special tokens (the student's EOS ends a sample: the teacher must read it as its EOS
    too); else a ModelError naming ``distill.teacher`` and what differs."""
    sv, tv = student.get_vocab(), teacher.get_vocab()
    diffs = []
    if sv != tv:
        moved = sorted(k for k in sv.keys() & tv.keys() if sv[k] != tv[k])
        parts = [
            f"{len(ks)} {what}, e.g. {ks[:3]}"
            for ks, what in (
                (sorted(sv.keys() - tv.keys()), "only the student's"),
                (sorted(tv.keys() - sv.keys()), "only the teacher's"),
                ([(k, sv[k], tv[k]) for k in moved], "with other ids (token, student's, teacher's)"),
            )
            if ks
        ]
        diffs.append(f"the vocabularies differ ({len(sv)} tokens against the teacher's {len(tv)}: {'; '.join(parts)})")
    for name in ("eos_token", "bos_token"):
        a, b = getattr(student, name, None), getattr(teacher, name, None)
        if a != b:
            diffs.append(f"{name} is {a!r} for the student, {b!r} for the teacher")
    a, b = set(student.all_special_tokens), set(teacher.all_special_tokens)
    if a != b:
        diffs.append(f"special tokens only the student's: {sorted(a - b)}, only the teacher's: {sorted(b - a)}")
    if diffs:
        raise model_lib.ModelError(
            f"distill.teacher {cfg.distill.teacher!r} does not share the student's tokenizer (model.path "
            f"{cfg.model.path!r}): {'; '.join(diffs)}. The teacher scores the exact token ids the student samples: "
            f"pick a teacher of the student's family (e.g. Qwen/Qwen2.5-1.5B-Instruct for Qwen/Qwen2.5-0.5B-Instruct)"
        )


def check_sync(probe: SyncProbe | None, gap: float | None, step: int, cfg) -> dict:
    """The weight-sync guard before ``step`` samples: the probe's gap as a metric ({} without a probe); above
    ``rl.sync_max_gap`` a SyncDrift, which stops the run with step - 1's state saved, as a sampler crash does."""
    if probe is None:
        return {}
    if not gap <= probe.max_gap:  # NaN trips it too
        raise SyncDrift(step, gap, probe.max_gap, cfg.sampler.backend)
    return {"sync/probe_gap": gap}


def stopped_by(e: Exception, run: Run, step: int, at_start: dict) -> RunStopped:
    """A sampler crash (or a stale sampler) ends the run with the state before the step saved, so that it can
    resume."""
    traceback.print_exc()
    prev = run.out / "checkpoints" / f"step_{step - 1}"
    # Saving is collective: with other ranks still sampling, only a single process can save here.
    path = prev if ckpt.is_valid(prev) or dist.world_size() > 1 else run.save(step - 1, **at_start)
    return RunStopped(f"{e}. The state before this step is in {path}; fix the cause, then --resume=auto")


@dataclass
class Targets:
    """What the losses compare the learner (and critic) with, per token of the whole batch (B, Tc)."""

    batch: Batch
    mask: torch.Tensor  # 1.0 where the loss counts (Batch.token_mask)
    old: torch.Tensor  # the sampler's log-probs
    prox: torch.Tensor  # the ratio's denominator: the sampler's log-probs, or (TIS) the learner's before the step
    adv: torch.Tensor  # advantages
    is_weight: torch.Tensor | None = None  # TIS: min(learner / sampler probability, tis_cap)
    ref: torch.Tensor | None = None  # the reference's log-probs, for a KL term in the loss
    values: torch.Tensor | None = None  # the critic's, before the step
    returns: torch.Tensor | None = None  # the critic's targets
    kl_reward: torch.Tensor | None = None  # rl.kl_penalty: reward: the per-token KL folded into the rewards
    teacher: torch.Tensor | None = None  # stage distill: the teacher's log-probs of the sampled tokens
    # async_rl with one update per batch: prox is the loss's own forward, detached, and the behaviour weight
    # min(exp(prox - old), this cap) is taken there
    weight_cap: float | None = None


@dataclass
class Ptx:
    """InstructGPT's PPO-ptx: SFT rows (``data.ptx``) whose next-token loss, weighted by ``rl.ptx_coef``, joins
    every optimizer step, so the policy keeps what SFT taught it. The rows of optimizer step k are read from
    one seeded order at position k x ``rl.ptx_seqs_per_step``: nothing to checkpoint for an exact resume."""

    rows: list
    order: list[int]
    pad_id: int

    @staticmethod
    def load(cfg, tok) -> Ptx:
        d = cfg.data
        examples = data_lib.encode_chats(data_lib.load_conversations(d.ptx, "train", d), tok, d)
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        return Ptx(data_lib.make_rows(examples, False, d.max_seq_tokens, cfg.seed), order, tok.pad_token_id)

    def learn(self, learner, k: int, cfg, tally: Tally) -> None:
        """Optimizer step k's share of the ptx loss: a token mean over its rows on every rank, x ptx_coef."""
        n = cfg.rl.ptx_seqs_per_step
        rows = [self.rows[self.order[(k * n + i) % len(self.order)]] for i in range(n)]
        micro = [
            (data_lib.collate([rows[i] for i in mb], self.pad_id), w)
            for mb, w in micro_batches(list(range(n)), cfg.rl.micro_batch_seqs)
        ]
        tokens = dist.global_sum(sum(w * float(mb[3][:, 1:].sum()) for mb, w in micro))
        for mb, w in micro:
            nll, _ = learner.forward(model_lib.nll_sum, *mb)
            learner.backward(cfg.rl.ptx_coef * nll * w / max(tokens, 1.0))
            tally.add("ptx/loss", float(nll.detach()) * w / max(tokens, 1.0))


def learn(
    learner: Learner,
    ref_model,
    batch: Batch,
    cfg,
    pad_id: int,
    step: int,
    critic: Learner | None = None,
    ptx: Ptx | None = None,
    teacher=None,
) -> dict:
    """loss -> step: passes x optimizer steps over the batch, micro-batched, exact loss normalisation; the
    critic (``rl.advantage: gae``) learns its values beside the policy, micro-batch by micro-batch; a
    ``teacher`` (stage distill) gives every token its advantage."""
    g, B, group_size = cfg.rl, len(batch), batch.group_size
    t = targets(learner, ref_model, critic, batch, cfg, pad_id, teacher)
    per_opt = math.ceil(B / g.optimizer_steps_per_pass)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    tally = Tally()
    for pass_ in range(g.passes_per_step):
        order = torch.randperm(B // group_size, generator=gen)[:, None] * group_size + torch.arange(group_size)
        order = order.view(-1)  # whole groups, shuffled
        # Every rank's sequences make one loss: the denominator is global, and every rank runs as many
        # optimizer steps and backwards as the busiest one (ZeRO reduces inside backward and step).
        for o in range(int(dist.global_max(len(range(0, B, per_opt))))):
            rows = order[o * per_opt : (o + 1) * per_opt]
            denom = dist.global_sum(algos.loss_denominator(t.mask[rows], g.loss_agg))
            tokens = dist.global_sum(float(t.mask[rows].sum()))
            mbs = micro_batch_rows(batch, rows, g)
            for i in range(int(dist.global_max(len(mbs)))):
                mb, weight = (mbs[i], 1.0) if i < len(mbs) else (order[: g.micro_batch_seqs], 0.0)  # keep in step
                learner.backward(policy_loss(learner, t, mb, weight, denom, cfg, pad_id, tally, pass_ == o == 0))
                if critic is not None:
                    critic.backward(critic_loss(critic, t, mb, weight, tokens, cfg, pad_id, tally))
            if ptx is not None:  # InstructGPT's PPO-ptx: the SFT loss joins the optimizer step
                ptx.learn(learner, (step * g.passes_per_step + pass_) * g.optimizer_steps_per_pass + o, cfg, tally)
            grad_norm = learner.step()  # a non-finite loss or gradient on any rank: skipped (Run counts these)
            tally.add("grad_norm", grad_norm)
            tally.add("optimizer_steps", 1)
            tally.add("skipped_steps", not math.isfinite(grad_norm))
            if critic is not None:
                tally.add("value/grad_norm", critic.step())
    return learn_metrics(tally, t, cfg)


def targets(learner, ref_model, critic, batch: Batch, cfg, pad_id: int, teacher=None) -> Targets:
    """The no-grad scoring before the update: the reference's log-probs (KL), the learner's own (TIS), the
    critic's values, the teacher's log-probs (distill), then the advantages (and the critic's returns) of the
    whole batch."""
    g = cfg.rl
    device = next(learner.module.parameters()).device
    old, mask = batch.sampler_logprobs().to(device), batch.token_mask().to(device)
    ref = None
    if ref_model is learner.module:  # LoRA: the base is the policy with its adapters off, through the learner (ZeRO-3)
        with model_lib.adapters_off(ref_model):
            ref = score(learner.forward, batch, cfg, pad_id, collective=True)
    elif ref_model is not None:
        ref = score(lambda fn, *a, **kw: fn(ref_model, *a, **kw), batch, cfg, pad_id)
    # TIS: the clip ratio is taken against the learner's own log-probs before the update, and each token
    # weighted by min(learner / sampler probability, tis_cap), correcting for the sampler's drift (vLLM).
    # Samples up to k steps old (async_rl) take the same path, decoupled PPO's: the clip keeps the update near the
    # learner's policy (the proximal one), not near the stale one that sampled, and the weight corrects for the
    # staleness (truncated at tis_cap, or not at all with tis_cap 0).
    # With one optimizer step per batch the weights of the loss's own forward are the proximal policy: its
    # log-probs, detached, stand in for that no-grad forward (policy_loss, the ratio then exactly 1).
    off_policy = cfg.async_rl.enabled and cfg.async_rl.max_off_policy_steps > 0
    one_update = g.passes_per_step == g.optimizer_steps_per_pass == 1 and g.kl_penalty == "loss" and teacher is None
    in_loss = off_policy and one_update
    forward = (g.tis_cap or off_policy) and not in_loss  # a no-grad forward before the update gives prox
    prox = score(learner.forward, batch, cfg, pad_id, collective=True) if forward else old
    is_weight = algos.truncated_is_weight(prox, old, g.tis_cap or math.inf) if forward else None
    values = score(critic.forward, batch, cfg, pad_id, collective=True, values=True) if critic is not None else None
    # InstructGPT's shaping: -beta x KL(policy that sampled || reference) on every token's reward
    kl = algos.kl_estimate(prox, ref, g.kl_estimator) * mask if ref is not None and g.kl_penalty == "reward" else None
    teach = None if teacher is None else score(lambda fn, *a, **kw: fn(teacher, *a, **kw), batch, cfg, pad_id)
    mixed = teacher is None or cfg.distill.reward_coef  # pure distillation needs no verifier advantage
    adv, returns = advantages(batch, cfg, mask, values, kl) if mixed else (None, None)
    if teach is not None:  # the student's log-probs: the sampler's (or, TIS, the learner's), before the step
        d = cfg.distill
        adv, _ = algos.distill_advantages(
            prox, teach, mask, kl_coef=d.kl_coef, reward_adv=adv, reward_coef=d.reward_coef
        )
    ref = ref if g.kl_penalty == "loss" else None
    cap = (g.tis_cap or math.inf) if in_loss else None
    return Targets(batch, mask, old, prox, adv, is_weight, ref, values, returns, kl, teach, cap)


def advantages(batch: Batch, cfg, mask: torch.Tensor, values=None, kl=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``rl.advantage``'s estimate from the batch's rewards -> advantages (B, Tc), returns (B, Tc) or None;
    truncated completions get none with ``rl.overlong: mask`` (they teach nothing about the answer)."""
    g = cfg.rl
    adv, returns = algos.ADVANTAGES[g.advantage](
        batch.rewards.to(mask.device),
        mask,
        group_size=batch.group_size,
        values=values,
        kl=kl,
        kl_coef=g.beta if kl is not None else 0.0,
        gamma=g.gamma,
        lam=g.lam,
        whiten=g.whiten_advantages,
        reduce_sum=dist.all_reduce_sum,
    )
    if g.overlong == "mask":
        adv = adv * (1.0 - torch.tensor(batch.rollout.truncated, dtype=torch.float, device=mask.device))[:, None]
    return adv, returns


def policy_loss(
    learner, t: Targets, mb, weight: float, denom: float, cfg, pad_id: int, tally: Tally, first: bool
) -> torch.Tensor:
    """One micro-batch's share of the policy loss (rows ``mb``; ``weight`` 0 for a rank's filler), its metrics
    added to ``tally``; ``first``: the weights are still the sampler's (the mismatch metric)."""
    g = cfg.rl
    logp, _, ent = logprobs(learner.forward, t.batch, mb.tolist(), cfg, pad_id, with_entropy=True)
    w = logp.shape[1]  # this micro-batch's longest completion
    m = t.mask[mb, :w] * weight
    prox = t.prox[mb, :w] if t.weight_cap is None else logp.detach()
    pg, clipped = algos.POLICY_LOSSES[g.policy_loss](
        logp, prox, t.adv[mb, :w], m, clip_low=g.clip_low, clip_high=g.clip_high
    )
    if t.is_weight is not None:
        pg = pg * t.is_weight[mb, :w]
    elif t.weight_cap is not None:
        is_weight = algos.truncated_is_weight(prox, t.old[mb, :w], t.weight_cap)
        pg = pg * is_weight
        tally.add("mismatch/tis_weight", (is_weight * m).sum())
        tally.add("mismatch/tis_capped", ((prox - t.old[mb, :w] > math.log(t.weight_cap)).float() * m).sum())
    per_tok = pg
    if t.ref is not None:
        kl = algos.kl_estimate(logp, t.ref[mb, :w], g.kl_estimator)
        per_tok = per_tok + g.beta * kl
        tally.add("kl", (kl.detach() * m).sum())
    if g.entropy_coef:
        per_tok = per_tok - g.entropy_coef * ent
    max_len = cfg.sampler.max_new_tokens
    loss = algos.masked_sum(per_tok, m, g.loss_agg, max_len) / denom
    tally.add("loss/total", loss.detach())
    tally.add("loss/pg", algos.masked_sum(pg.detach(), m, g.loss_agg, max_len) / denom)
    tally.add("clip_frac", (clipped * m).sum())
    tally.add("entropy", (ent.detach() * m).sum())
    if first:  # weights untouched yet: learner vs sampler on the same tokens
        tally.add("mismatch/logprob_abs", ((logp.detach() - t.old[mb, :w]).abs() * m).sum())
        tally.add("mismatch/tokens", m.sum())
    return loss


def critic_loss(critic, t: Targets, mb, weight: float, tokens: float, cfg, pad_id: int, tally: Tally) -> torch.Tensor:
    """One micro-batch's share of the critic's clipped value loss, a mean over the optimizer batch's tokens."""
    ro = t.batch.rollout
    v = critic.forward(
        model_lib.completion_values,
        [ro.prompt_ids[r] for r in mb.tolist()],
        [ro.completion_ids[r] for r in mb.tolist()],
        pad_id,
    )
    w = v.shape[1]
    m = t.mask[mb, :w] * weight
    per_tok, clipped = algos.value_loss(v, t.values[mb, :w], t.returns[mb, :w], m, cfg.rl.critic.value_clip or None)
    loss = per_tok.sum() / tokens
    tally.add("value/loss", loss.detach())
    tally.add("value/clip_frac", (clipped * m).sum())
    return loss


def learn_metrics(tally: Tally, t: Targets, cfg) -> dict:
    """A learn call's metrics: losses and gradient norms per optimizer step, token metrics per token."""
    g = cfg.rl
    keys = ["loss/total", "loss/pg", "clip_frac", "entropy", "mismatch/logprob_abs", "mismatch/tokens"]
    keys += (["kl"] if t.ref is not None else []) + (["value/loss", "value/clip_frac"] if t.values is not None else [])
    keys += ["ptx/loss"] if "ptx/loss" in tally.sums else []
    keys += ["mismatch/tis_weight", "mismatch/tis_capped"] if t.weight_cap is not None else []
    sums = tally.sums | tally.global_sums(keys)
    n_opt, n_tok = sums["optimizer_steps"], dist.global_sum(float(t.mask.sum()))
    out = {
        "loss/total": sums["loss/total"] / n_opt,
        "loss/pg": sums["loss/pg"] / n_opt,
        "clip_frac": sums["clip_frac"] / (n_tok * g.passes_per_step),
        "entropy": sums["entropy"] / (n_tok * g.passes_per_step),
        "grad_norm": sums["grad_norm"] / n_opt,
        "mismatch/logprob_abs": sums["mismatch/logprob_abs"] / max(sums["mismatch/tokens"], 1.0),
        "skipped_steps": sums["skipped_steps"],
    }
    if t.ref is not None:
        out["kl"] = sums["kl"] / (n_tok * g.passes_per_step)
    if t.is_weight is not None:
        capped = (t.prox - t.old > (math.log(g.tis_cap) if g.tis_cap else math.inf)).float()
        out["mismatch/tis_weight"] = dist.global_sum(float((t.is_weight * t.mask).sum())) / n_tok
        out["mismatch/tis_capped_frac"] = dist.global_sum(float((capped * t.mask).sum())) / n_tok
    if t.weight_cap is not None:
        out["mismatch/tis_weight"] = sums["mismatch/tis_weight"] / n_tok
        out["mismatch/tis_capped_frac"] = sums["mismatch/tis_capped"] / n_tok
    if t.values is not None:
        out["value/loss"] = sums["value/loss"] / n_opt
        out["value/clip_frac"] = sums["value/clip_frac"] / (n_tok * g.passes_per_step)
        out["value/grad_norm"] = sums["value/grad_norm"] / n_opt
        out["value/mean"] = dist.global_sum(float((t.values * t.mask).sum())) / n_tok
        out["value/explained_variance"] = algos.explained_variance(t.values, t.returns, t.mask)  # this rank's
    if "ptx/loss" in sums:
        out["ptx/loss"] = sums["ptx/loss"] / n_opt
    if t.kl_reward is not None:  # the KL each token's reward paid, before the step
        out["kl"] = dist.global_sum(float(t.kl_reward.sum())) / n_tok
    if t.teacher is not None:  # per token of the batch, the policy that sampled it against the teacher
        out["distill/reverse_kl"] = dist.global_sum(float(((t.prox - t.teacher) * t.mask).sum())) / n_tok
        out["distill/teacher_logprob"] = dist.global_sum(float((t.teacher * t.mask).sum())) / n_tok
    return out


def logprobs(forward, batch: Batch, rows: list[int], cfg, pad_id: int, **kw):
    """forward(fn, *args): the learner's (with gradients) or the reference's -> logp (R, W), mask[, entropy]."""
    g, ro, group_size = cfg.rl, batch.rollout, batch.group_size
    # Micro-batches hold whole groups when they can, so each prompt's forward is shared by its samples.
    share = group_size if g.micro_batch_tokens or g.micro_batch_seqs % group_size == 0 else 1
    return forward(
        model_lib.grouped_logprobs,
        [ro.prompt_ids[r] for r in rows],
        [ro.completion_ids[r] for r in rows],
        share,
        pad_id,
        cfg.sampler.temperature,
        padding_free=g.padding_free,
        share_prompt=g.share_prompt,
        **kw,
    )


def micro_batch_rows(batch: Batch, rows: torch.Tensor, g) -> list[torch.Tensor]:
    """An optimizer step's rows -> micro-batches: ``micro_batch_seqs`` rows each, or whole groups binned by
    ``micro_batch_tokens``."""
    if not g.micro_batch_tokens:
        return [rows[s : s + g.micro_batch_seqs] for s in range(0, len(rows), g.micro_batch_seqs)]
    ro, groups = batch.rollout, rows.view(-1, batch.group_size)  # a token budget over whole groups
    lens = [[len(ro.prompt_ids[r]) + len(ro.completion_ids[r]) for r in grp.tolist()] for grp in groups]
    if g.padding_free:  # a bin costs its tokens
        bins = packing.pack([sum(n) for n in lens], g.micro_batch_tokens)
    else:  # similar lengths together: a bin costs rows x its longest row
        bins = packing.pack([max(n) for n in lens], max(g.micro_batch_tokens // batch.group_size, 1), padded=True)
    return [groups[b].reshape(-1) for b in bins]


def score(forward, batch: Batch, cfg, pad_id: int, collective: bool = False, values: bool = False) -> torch.Tensor:
    """No-grad log-probabilities (or, ``values``, a critic's values) of every row (B, Tc), in the learner's
    micro-batches. ``collective``: a learner under ZeRO-3 gathers weights in each forward, so every rank runs
    as many."""
    mbs, ro = micro_batch_rows(batch, torch.arange(len(batch)), cfg.rl), batch.rollout
    out = None
    with torch.no_grad():
        for i in range(int(dist.global_max(len(mbs))) if collective else len(mbs)):
            rows = mbs[min(i, len(mbs) - 1)].tolist()
            if values:
                lp = forward(
                    model_lib.completion_values,
                    [ro.prompt_ids[r] for r in rows],
                    [ro.completion_ids[r] for r in rows],
                    pad_id,
                )
            else:
                lp = logprobs(forward, batch, rows, cfg, pad_id)[0]
            if out is None:
                out = torch.zeros(len(batch), max(map(len, batch.rollout.completion_ids)), device=lp.device)
            if i < len(mbs):
                out[rows, : lp.shape[1]] = lp
    return out


def batch_metrics(batch: Batch, sample_s: float, learn_s: float, passes: int) -> dict:
    """Response lengths and the sampler's and learner's tokens per second."""
    ro = batch.rollout
    lens = torch.tensor([len(c) for c in ro.completion_ids], dtype=torch.float)
    gen_tokens = lens.sum().item()
    return {
        "perf/learn_s": learn_s,
        "response/len": lens.mean().item(),
        "response/len_max": lens.max().item(),
        "response/truncated_frac": sum(ro.truncated) / len(ro),
        "perf/sample_tokens_per_s": gen_tokens / max(sample_s, 1e-9),
        "perf/learn_tokens_per_s": (gen_tokens + sum(map(len, ro.prompt_ids))) * passes / max(learn_s, 1e-9),
    }


def greedy_eval(cfg, sampler, test_set, out_dir=None, tag: str = "", env=None) -> dict:
    """Greedy held-out accuracy (``rlvr.grading.greedy_accuracy``), of episodes with ``env``; with ``out_dir``,
    printed and its samples saved to ``out_dir/TAG_samples.jsonl``."""
    ev = grading.greedy_accuracy(
        sampler,
        test_set.problems,
        test_set.prompts,
        verifier=cfg.eval.verifier,
        format_verifier=cfg.eval.format_verifier,
        max_new_tokens=cfg.eval.max_new_tokens or cfg.sampler.max_new_tokens,
        timeout_s=cfg.rl.verifier_timeout_s,
        batch_seqs=cfg.sampler.batch_seqs,
        samples_path=out_dir / f"{tag}_samples.jsonl" if out_dir is not None else None,
        env=env,
    )
    if out_dir is not None:
        print(f"{tag.replace('_', ' ')} greedy accuracy: {ev}")
    return ev


def periodic_eval(cfg, sampler, test_set, step: int, env=None) -> dict:
    """Every ``eval.every_steps``: greedy accuracy, and pass@1 / pass@N of ``eval.samples`` samples (episodes
    with ``env``)."""
    out = {f"eval/{k}": v for k, v in greedy_eval(cfg, sampler, test_set, env=env).items() if k != "n"}
    if cfg.eval.samples:
        n = cfg.eval.samples
        ev = grading.evaluate_problems(
            sampler,
            test_set.problems,
            test_set.prompts,
            k=sorted({1, n}),
            verifier=cfg.eval.verifier,
            n=n,
            temperature=cfg.sampler.temperature,
            top_p=cfg.sampler.top_p,
            max_new_tokens=cfg.eval.max_new_tokens or cfg.sampler.max_new_tokens,
            seed=cfg.seed + step,
            greedy=False,
            env=env,
        )
        # pass@k and maj@k; the episodes' turns and tool calls stay the greedy ones (env/* has the sampled ones)
        out.update({f"eval/{k}": v for k, v in ev.items() if isinstance(v, float) and f"eval/{k}" not in out})
    return out
