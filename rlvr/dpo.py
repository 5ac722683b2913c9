"""Direct preference optimisation: learn from chosen/rejected reply pairs without a reward model.

    python -m rlvr.train recipes/tiny_dpo.yaml        # CPU demo: held-out preference accuracy 0.5 -> >= 0.9
    python -m rlvr.train recipes/dpo_chat.yaml        # a real chat model on a real preference dataset

Rows are ``prompt``/``chosen``/``rejected`` with string or message-list values (``rlvr.data.load_preferences``),
rendered like SFT (``rlvr.data.chat_segments``). The loss is ``rlvr.algos.dpo_loss``: sigmoid (DPO) or
ipo, on summed or (``dpo.length_normalize``) per-token-mean reply log-probabilities. The reference
model is the starting policy; its log-probabilities of every train and held-out reply are computed
once, before training, and the reference is then freed. Held-out metrics before and after: preference
accuracy (implicit reward of chosen > rejected, ties half, so 0.5 at the start), reward margin,
chosen/rejected log-probabilities, and ``policy_accuracy`` (the policy itself rates chosen above rejected).
1 or N processes, any ``deepspeed.zero_stage``: each rank scores only its own pairs with the reference.
"""

from __future__ import annotations

import time

import torch

from rlvr import algos, data as data_lib, dist, model as model_lib
from rlvr.learner import Learner, micro_batches
from rlvr.log import Tally
from rlvr.run import Run


def encode(pairs: list[data_lib.Preference], tok, d) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """-> (prompt ids, chosen reply ids, rejected reply ids) per pair."""
    prompts, chosen, rejected = [], [], []
    for p in pairs:
        for reply, out in ((p.chosen, chosen), (p.rejected, rejected)):
            segs = data_lib.chat_segments(
                p.prompt + [{"role": "assistant", "content": reply}], tok, d.template, d.system_prompt, p.where
            )
            prompt = [t for s, _ in segs[:-1] for t in s]
            if len(prompt) + len(segs[-1][0]) > d.max_seq_tokens:
                raise data_lib.DataError(
                    f"{p.where}: prompt + reply is {len(prompt) + len(segs[-1][0])} tokens, over "
                    f"data.max_seq_tokens={d.max_seq_tokens}; raise it or drop the row"
                )
            out.append(segs[-1][0])
        prompts.append(prompt)
    return prompts, chosen, rejected


def reply_logprobs(model, prompts, replies, pad_id: int, micro: int, length_normalize: bool) -> torch.Tensor:
    """Log-probability of each reply given its prompt (B,), micro-batched; differentiable."""
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(prompts), micro):
        ids, attn, mask = model_lib.pad_batch(prompts[s : s + micro], replies[s : s + micro], pad_id)
        logp, m = model_lib.completion_logprobs(model, ids.to(device), attn.to(device), mask.to(device))
        out.append(algos.sequence_logprobs(logp, m, length_normalize))
    return torch.cat(out)


def pair_logprobs(model, enc, rows, pad_id, micro, length_normalize) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected reply log-probabilities (B,), (B,) for the pairs at ``rows``, in one pass."""
    prompts, chosen, rejected = enc
    p = [prompts[i] for i in rows]
    lp = reply_logprobs(
        model, p + p, [chosen[i] for i in rows] + [rejected[i] for i in rows], pad_id, 2 * micro, length_normalize
    )
    return lp[: len(rows)], lp[len(rows) :]


@torch.no_grad()
def evaluate(learner, enc, ref, cfg, pad_id) -> dict:
    """Held-out metrics; every rank scores every pair, through the learner (ZeRO-3 gathers the weights)."""
    model = learner.module
    was = model.training
    model.eval()
    n = len(enc[0])
    c, r = (
        t.cpu()
        for t in learner.forward(
            pair_logprobs, enc, list(range(n)), pad_id, cfg.dpo.micro_batch_pairs, cfg.dpo.length_normalize
        )
    )
    model.train(was)
    margin = (c - ref[0]) - (r - ref[1])
    return {
        "preference_accuracy": algos.preference_accuracy(c - ref[0], r - ref[1]).item(),
        "reward_margin": cfg.dpo.beta * margin.mean().item(),
        "policy_accuracy": algos.preference_accuracy(c, r).item(),
        "logp_chosen": c.mean().item(),
        "logp_rejected": r.mean().item(),
        "n": n,
    }


def train(cfg) -> dict:
    run = Run(cfg, cfg.dpo, show={"loss": "train/loss", "acc": "train/accuracy"})
    d, s = cfg.data, cfg.dpo
    model, tok = model_lib.load(run.model_config(cfg.model), chat_template=d.chat_template)
    pad = tok.pad_token_id
    train_pairs = data_lib.load_preferences(d.train, d.train_split, d)
    test_pairs = data_lib.load_preferences(d.test, d.test_split, d)[: s.eval_pairs] if d.test else []
    train_enc, test_enc = encode(train_pairs, tok, d), encode(test_pairs, tok, d)
    t0 = time.time()
    ref_train, ref_test = reference_logprobs(cfg, train_enc, test_enc, pad, model)
    learner = Learner.for_stage(model, cfg.deepspeed, s)
    model = learner.module
    stream = data_lib.PromptStream(len(train_pairs), cfg.seed, d.shuffle)

    def initial():
        if not test_pairs:
            return {}
        ev = evaluate(learner, test_enc, ref_test, cfg, pad)
        dist.print0(f"initial held-out: {ev}")
        return {"eval_initial": ev}

    summary = run.begin(
        learner,
        tok,
        stream,
        {"train_pairs": len(train_pairs), "reference_s": round(time.time() - t0, 1)},
        initial=initial,
    )
    model.train()
    with run:
        for step in run.steps():
            tally = Tally()
            for mb, w in micro_batches(stream.take(s.pairs_per_step), s.micro_batch_pairs):
                c, r = learner.forward(pair_logprobs, train_enc, mb, pad, s.micro_batch_pairs, s.length_normalize)
                loss, rc, rr = algos.dpo_loss(
                    c, r, ref_train[0][mb].to(c.device), ref_train[1][mb].to(c.device), s.beta, s.loss
                )
                learner.backward(loss.sum() * w / s.pairs_per_step)  # a mean over every rank's pairs
                for k, v in (
                    ("loss", loss),
                    ("margin", rc - rr),
                    ("chosen", rc),
                    ("rejected", rr),
                    ("logp_c", c),
                    ("logp_r", r),
                ):
                    tally.add(f"train/{k}", w * v.detach().sum().item())
                tally.add("train/accuracy", w * algos.preference_accuracy(rc, rr).item() * len(mb))
            m = {k: v / s.pairs_per_step for k, v in tally.global_sums().items()}
            m["grad_norm"] = learner.step()  # not finite: the update was skipped on every rank
            if s.eval_every and step % s.eval_every == 0 and step != s.steps and test_pairs:
                m.update(
                    {f"eval/{k}": v for k, v in evaluate(learner, test_enc, ref_test, cfg, pad).items() if k != "n"}
                )
            run.end_step(step, m)
    if test_pairs:
        summary["eval_final"] = evaluate(learner, test_enc, ref_test, cfg, pad)
    summary = run.finish(summary)
    dist.print0(f"dpo done: {summary}  (checkpoint: {run.out / 'final'})")
    return summary


@torch.no_grad()
def reference_logprobs(cfg, train_enc, test_enc, pad: int, policy):
    """The reference is the starting policy: it scores every reply this rank will train on once (the pair
    stream is seeded, so they are known now) and the held-out ones, and is then dropped: no second model
    while training. With LoRA it is ``policy`` with its adapters off (the base, resumed or not): no second model
    at all. -> ((2, train pairs) chosen/rejected log-probabilities, held-out (chosen, rejected) or None)."""
    if model_lib.is_lora(policy):
        with model_lib.adapters_off(policy):
            return _reference_logprobs(cfg, train_enc, test_enc, pad, policy)
    ref_model, _ = model_lib.load(cfg.model, dist.device())
    return _reference_logprobs(cfg, train_enc, test_enc, pad, ref_model.eval())


def _reference_logprobs(cfg, train_enc, test_enc, pad: int, ref_model):
    d, s = cfg.data, cfg.dpo
    plan = data_lib.PromptStream(len(train_enc[0]), cfg.seed, d.shuffle)
    used = sorted({i for _ in range(s.steps) for i in dist.shard(plan.take(s.pairs_per_step))})
    ref_train = torch.zeros(2, len(train_enc[0]))
    if used:
        ref_train[:, used] = torch.stack(
            pair_logprobs(ref_model, train_enc, used, pad, s.micro_batch_pairs, s.length_normalize)
        ).cpu()
    n_test = len(test_enc[0])
    ref_test = (
        tuple(
            t.cpu()
            for t in pair_logprobs(
                ref_model, test_enc, list(range(n_test)), pad, s.micro_batch_pairs, s.length_normalize
            )
        )
        if n_test
        else None
    )
    return ref_train, ref_test
