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

import dataclasses
import time

import torch
from tqdm import tqdm

from rlvr import algos, checkpoint as ckpt, data as data_lib, dist, model as model_lib
from rlvr.learner import Learner
from rlvr.log import MetricsLogger, write_json_atomic
from rlvr.sft import load_policy, micro_batches


def encode(pairs: list[data_lib.Preference], tok, d) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """-> (prompt ids, chosen reply ids, rejected reply ids) per pair."""
    prompts, chosen, rejected = [], [], []
    for p in pairs:
        for reply, out in ((p.chosen, chosen), (p.rejected, rejected)):
            segs = data_lib.chat_segments(p.prompt + [{"role": "assistant", "content": reply}], tok, d.template,
                                          d.system_prompt, p.where)
            prompt = [t for s, _ in segs[:-1] for t in s]
            if len(prompt) + len(segs[-1][0]) > d.max_seq_tokens:
                raise data_lib.DataError(f"{p.where}: prompt + reply is {len(prompt) + len(segs[-1][0])} tokens, over "
                                         f"data.max_seq_tokens={d.max_seq_tokens}; raise it or drop the row")
            out.append(segs[-1][0])
        prompts.append(prompt)
    return prompts, chosen, rejected


def reply_logprobs(model, prompts, replies, pad_id: int, micro: int, length_normalize: bool) -> torch.Tensor:
    """Log-probability of each reply given its prompt (B,), micro-batched; differentiable."""
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(prompts), micro):
        ids, attn, mask = model_lib.pad_batch(prompts[s:s + micro], replies[s:s + micro], pad_id)
        logp, m = model_lib.completion_logprobs(model, ids.to(device), attn.to(device), mask.to(device))
        out.append(algos.sequence_logprobs(logp, m, length_normalize))
    return torch.cat(out)


def pair_logprobs(model, enc, rows, pad_id, micro, length_normalize) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected reply log-probabilities (B,), (B,) for the pairs at ``rows``, in one pass."""
    prompts, chosen, rejected = enc
    p = [prompts[i] for i in rows]
    lp = reply_logprobs(model, p + p, [chosen[i] for i in rows] + [rejected[i] for i in rows], pad_id, 2 * micro,
                        length_normalize)
    return lp[: len(rows)], lp[len(rows):]


@torch.no_grad()
def evaluate(learner, enc, ref, cfg, pad_id) -> dict:
    """Held-out metrics; every rank scores every pair, through the learner (ZeRO-3 gathers the weights)."""
    model = learner.module
    was = model.training
    model.eval()
    n = len(enc[0])
    c, r = (t.cpu() for t in learner.forward(pair_logprobs, enc, list(range(n)), pad_id, cfg.dpo.micro_batch_pairs,
                                              cfg.dpo.length_normalize))
    model.train(was)
    margin = (c - ref[0]) - (r - ref[1])
    return {"preference_accuracy": algos.preference_accuracy(c - ref[0], r - ref[1]).item(),
            "reward_margin": cfg.dpo.beta * margin.mean().item(),
            "policy_accuracy": algos.preference_accuracy(c, r).item(),
            "logp_chosen": c.mean().item(), "logp_rejected": r.mean().item(), "n": n}


def train(cfg) -> dict:
    t_start = time.time()
    out, resume_from = ckpt.start_run(cfg)
    main = dist.is_main()  # rank 0 alone writes files and prints; every rank computes
    d, s = cfg.data, cfg.dpo
    # A checkpoint is an HF model directory: the policy continues from it (the DPO reference stays the base).
    model, tok = load_policy(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(resume_from)))
                             if resume_from else cfg)
    ckpt.check_space(out, ckpt.checkpoint_bytes(model))
    pad = tok.pad_token_id
    train_pairs = data_lib.load_preferences(d.train, d.train_split, d)
    test_pairs = data_lib.load_preferences(d.test, d.test_split, d)[: s.eval_pairs] if d.test else []
    train_enc, test_enc = encode(train_pairs, tok, d), encode(test_pairs, tok, d)

    # The reference is the starting policy: score every reply this rank will train on once (the pair stream
    # is seeded, so they are known now) and the held-out ones, then drop it: no second model while training.
    t0 = time.time()
    plan = data_lib.PromptStream(len(train_pairs), cfg.seed, d.shuffle)
    used = sorted({i for _ in range(s.steps) for i in dist.shard(plan.take(s.pairs_per_step))})
    with torch.no_grad():
        ref_model, _ = model_lib.load(cfg.model, dist.device())
        ref_model.eval()
        ref_train = torch.zeros(2, len(train_pairs))
        if used:
            ref_train[:, used] = torch.stack(pair_logprobs(ref_model, train_enc, used, pad, s.micro_batch_pairs,
                                                           s.length_normalize)).cpu()
        ref_test = tuple(t.cpu() for t in pair_logprobs(ref_model, test_enc, list(range(len(test_pairs))), pad,
                                                        s.micro_batch_pairs, s.length_normalize)) if test_pairs else None
        del ref_model
    summary: dict = {"train_pairs": len(train_pairs), "reference_s": round(time.time() - t0, 1)}
    learner = Learner.for_stage(model, cfg.deepspeed, s)
    model = learner.module
    stream = data_lib.PromptStream(len(train_pairs), cfg.seed, d.shuffle)
    if resume_from:  # last before the loop: it restores the RNG states too
        state = ckpt.restore(resume_from, learner, stream)
        summary, bad_steps, first = state["summary"], state["bad_steps"], state["step"] + 1
    else:
        bad_steps, first = 0, 1
        if test_pairs:
            summary["eval_initial"] = evaluate(learner, test_enc, ref_test, cfg, pad)
            dist.print0(f"initial held-out: {summary['eval_initial']}")
    logger = MetricsLogger(out, enabled=main, first_step=first)

    def save(step, bad_steps, score):  # every rank calls: ZeRO shards are written by their ranks
        state = ckpt.loop_state(stream, summary=summary, bad_steps=bad_steps)
        return ckpt.save_run(cfg, out, step, learner, tok, state, score)

    model.train()
    bar = tqdm(range(first, s.steps + 1), desc="dpo", dynamic_ncols=True, initial=first - 1, total=s.steps, disable=not main)
    with ckpt.StopRequest() as stop:
        for step in bar:
            t0 = time.time()
            sums = dict.fromkeys(("loss", "accuracy", "margin", "chosen", "rejected", "logp_c", "logp_r"), 0.0)
            for mb, w in micro_batches(stream.take(s.pairs_per_step), s.micro_batch_pairs):
                c, r = learner.forward(pair_logprobs, train_enc, mb, pad, s.micro_batch_pairs, s.length_normalize)
                loss, rc, rr = algos.dpo_loss(c, r, ref_train[0][mb].to(c.device), ref_train[1][mb].to(c.device),
                                              s.beta, s.loss)
                learner.backward(loss.sum() * w / s.pairs_per_step)  # a mean over every rank's pairs
                for k, v in (("loss", loss), ("margin", rc - rr), ("chosen", rc), ("rejected", rr), ("logp_c", c), ("logp_r", r)):
                    sums[k] += w * v.detach().sum().item()
                sums["accuracy"] += w * algos.preference_accuracy(rc, rr).item() * len(mb)
            grad_norm = learner.step()  # not finite: the update was skipped on every rank
            learner.scheduler.step()
            m = {f"train/{k}": dist.global_sum(v) / s.pairs_per_step for k, v in sums.items()}
            m.update({"grad_norm": grad_norm, "lr": learner.scheduler.get_last_lr()[0], "perf/step_s": time.time() - t0})
            if s.eval_every and step % s.eval_every == 0 and step != s.steps and test_pairs:
                m.update({f"eval/{k}": v for k, v in evaluate(learner, test_enc, ref_test, cfg, pad).items() if k != "n"})
            ckpt.crash_point(f"step{step}")
            logger.log(step, m)
            bar.set_postfix(loss=f"{m['train/loss']:.3f}", acc=f"{m['train/accuracy']:.2f}")
            bad_steps = ckpt.end_step(cfg, stop, step, m, bad_steps, save)
    bar.close()
    if test_pairs:
        summary["eval_final"] = evaluate(learner, test_enc, ref_test, cfg, pad)
    ckpt.save_model(learner, tok, out / "final")
    summary.update(steps=s.steps, wall_s=round(time.time() - t_start, 1))
    logger.close()
    if main:
        write_json_atomic(out / "summary.json", summary)
    dist.print0(f"dpo done: {summary}  (checkpoint: {out / 'final'})")
    return summary
