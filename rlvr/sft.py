"""Supervised fine-tuning: next-token loss on the assistant's tokens of chats or prompt/response pairs.

    python -m rlvr.train recipes/tiny_sft.yaml          # CPU demo: teaches the tiny model a new reply format
    python -m rlvr.train recipes/sft_warmstart.yaml     # a real chat model on a real chat dataset

Rows are ``messages`` chats (system message, multi-turn) or ``prompt``/``response`` pairs
(``rlvr.data.load_conversations``), rendered with the tokenizer's chat template (``data.template: chat``,
``data.chat_template`` for a tokenizer without one) or as RL prompts (``plain``, ``r1_zero``). Only
assistant tokens are targets. ``sft.packing`` packs whole examples into rows of ``data.max_seq_tokens``
with per-example position ids, which transformers turns into per-example attention. Held-out loss (and,
with ``sft.format_regex``, the format rate of greedy replies) is measured before and after; the final
checkpoint (``OUTPUT_DIR/final``) is an HF model that any recipe's ``model.path`` can start from.

Like every stage it trains through ``rlvr.learner`` on 1 or N processes (``torchrun``), each rank on its
shard of a step's rows, with ``deepspeed.zero_stage`` 0 or 2; 3 only without a held-out set, whose
greedy replies need whole weights. ``micro_batches`` here serves the DPO and
reward-model loops too.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time

import torch
from tqdm import tqdm

from rlvr import checkpoint as ckpt, data as data_lib, dist, model as model_lib
from rlvr.learner import Learner
from rlvr.log import MetricsLogger, write_json_atomic
from rlvr.sampler import HFSampler


def load_policy(cfg):
    """The causal LM and tokenizer, with ``data.chat_template`` installed where the tokenizer has none
    (it is saved with every checkpoint, so later stages render chats the same way)."""
    model, tok = model_lib.load(cfg.model)
    if cfg.data.chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = cfg.data.chat_template
    return model, tok


def micro_batches(rows: list[int], micro: int) -> list[tuple[list[int], float]]:
    """This rank's ``dist.shard`` of a step's rows, cut into micro-batches, each with its loss weight.
    Every rank gets as many (ZeRO reduces inside backward, so every backward needs its partner on every
    rank): one that runs out repeats its first micro-batch (or the step's) with weight 0.
    Shared by SFT, DPO and the reward model."""
    mine = dist.shard(rows)
    out = [(mine[i:i + micro], 1.0) for i in range(0, len(mine), micro)]
    filler = (out[0][0] if out else rows[:micro], 0.0)
    return out + [filler] * (int(dist.global_max(len(out))) - len(out))


def encode(convs: list[data_lib.Conversation], tok, d) -> list[tuple[list[int], list[float], int]]:
    """-> [(token ids, loss mask, index where the last assistant reply starts)] per conversation."""
    out = []
    for c in convs:
        segs = data_lib.chat_segments(c.messages, tok, d.template, d.system_prompt, c.where)
        ids = [t for s, _ in segs for t in s]
        mask = [float(a) for s, a in segs for _ in s]
        if len(ids) > d.max_seq_tokens:
            raise data_lib.DataError(f"{c.where}: example is {len(ids)} tokens, over data.max_seq_tokens="
                                     f"{d.max_seq_tokens}; raise it (within the model's context) or drop the row")
        out.append((ids, mask, len(ids) - len(segs[-1][0])))
    return out


def make_rows(examples, packing: bool, max_len: int, seed: int) -> list[list[tuple[list[int], list[float]]]]:
    """Examples -> training rows: one example per row, or (packing) whole examples first-fit into rows of
    at most max_len tokens, in a seeded shuffled order; an example is never split across rows."""
    if not packing:
        return [[(ids, mask)] for ids, mask, _ in examples]
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    rows, lens = [], []
    for i in order:
        ids, mask, _ = examples[i]
        j = next((k for k, n in enumerate(lens) if n + len(ids) <= max_len), None)
        if j is None:
            rows.append([]), lens.append(0)
            j = len(rows) - 1
        rows[j].append((ids, mask))
        lens[j] += len(ids)
    return rows


def collate(rows, pad_id: int):
    """Rows of examples -> ids (B, L), attention (B, L) or None when packed, position ids (B, L), mask (B, L).

    A packed batch passes no attention mask: transformers reads the restarting position ids as example
    boundaries and keeps attention within each example. The padding tail is one more such "example"."""
    L = max(sum(len(ids) for ids, _ in r) for r in rows)
    B = len(rows)
    ids, pos = torch.full((B, L), pad_id, dtype=torch.long), torch.zeros((B, L), dtype=torch.long)
    attn, mask = torch.zeros((B, L), dtype=torch.long), torch.zeros((B, L))
    packed = any(len(r) > 1 for r in rows)
    for b, r in enumerate(rows):
        at = 0
        for e_ids, e_mask in r:
            n = len(e_ids)
            ids[b, at:at + n], mask[b, at:at + n] = torch.tensor(e_ids), torch.tensor(e_mask)
            pos[b, at:at + n], attn[b, at:at + n] = torch.arange(n), 1
            at += n
        pos[b, at:] = torch.arange(L - at)
    return ids, (None if packed else attn), pos, mask


def nll_sum(model, ids, attn, pos, mask) -> tuple[torch.Tensor, float]:
    """Summed negative log-likelihood of the masked target tokens, and their count. Only target
    positions go through the LM head, a chunk of them at a time (large vocabularies)."""
    device = next(model.parameters()).device  # ZeRO moves the model to the rank's GPU
    ids, pos, mask = ids.to(device), pos.to(device), mask.to(device)
    attn = attn if attn is None else attn.to(device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
    sel = mask[:, 1:].bool()
    logp, _ = model_lib.head_logprobs(model, hidden[:, :-1][sel], ids[:, 1:][sel])
    return -logp.sum(), float(sel.sum())


@torch.no_grad()
def heldout_loss(model, rows, pad_id: int, micro: int) -> float:
    was = model.training
    model.eval()
    total, n = 0.0, 0.0
    for s in range(0, len(rows), micro):
        loss, k = nll_sum(model, *collate(rows[s:s + micro], pad_id))
        total, n = total + loss.item(), n + k
    model.train(was)
    return total / max(n, 1.0)


def greedy_replies(cfg, model, tok, convs, examples, out_dir=None, tag="eval") -> dict:
    """Greedy replies to held-out chats (everything before the last assistant turn): how often they
    match ``sft.format_regex`` and the reference reply exactly; saved to TAG_samples.jsonl."""
    sampler = HFSampler(model, tok, batch_seqs=cfg.sampler.batch_seqs)
    ro = sampler.generate([ids[:start] for ids, _, start in examples], 1, temperature=0.0,
                          max_new_tokens=cfg.sft.eval_max_new_tokens, seed=cfg.seed)
    refs = [c.messages[-1]["content"].strip() for c in convs]
    got = [t.strip() for t in ro.texts]
    fmt = [bool(re.fullmatch(cfg.sft.format_regex, t)) for t in got] if cfg.sft.format_regex else []
    if out_dir is not None:
        with open(out_dir / f"{tag}_samples.jsonl", "w") as f:
            for c, t, r in zip(convs, got, refs):
                f.write(json.dumps({"where": c.where, "reply": t, "reference": r}) + "\n")
    out = {"exact_match": sum(a == b for a, b in zip(got, refs)) / len(refs), "n": len(refs)}
    if fmt:
        out["format_rate"] = sum(fmt) / len(fmt)
    return out


def train(cfg) -> dict:
    t_start = time.time()
    out, resume_from = ckpt.start_run(cfg)
    main = dist.is_main()  # rank 0 alone writes files and prints; every rank computes
    d, s = cfg.data, cfg.sft
    # A checkpoint is an HF model directory: the policy continues from it.
    model, tok = load_policy(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(resume_from)))
                             if resume_from else cfg)
    ckpt.check_space(out, ckpt.checkpoint_bytes(model))
    train_convs = data_lib.load_conversations(d.train, d.train_split, d)
    train_ex = encode(train_convs, tok, d)
    rows = make_rows(train_ex, s.packing, d.max_seq_tokens, cfg.seed)
    test_convs, test_ex, test_rows = [], [], []
    if d.test:
        test_convs = data_lib.load_conversations(d.test, d.test_split, d)[: s.eval_examples]
        test_ex = encode(test_convs, tok, d)
        test_rows = make_rows(test_ex, False, d.max_seq_tokens, cfg.seed)
    pad = tok.pad_token_id
    summary: dict = {"train_examples": len(train_ex), "train_rows": len(rows)}
    learner = Learner.for_stage(model, cfg.deepspeed, s)
    model = learner.module

    def evaluate(tag):  # every rank evaluates everything (whole weights: ZeRO-3 is refused for this in config)
        if not test_rows:
            return {}
        ev = {"heldout_loss": heldout_loss(model, test_rows, pad, s.micro_batch_seqs)}
        ev.update(greedy_replies(cfg, model, tok, test_convs, test_ex, out if main else None, tag))
        dist.print0(f"{tag}: {ev}")
        return ev

    stream = data_lib.PromptStream(len(rows), cfg.seed, d.shuffle)
    if resume_from:  # last before the loop: it restores the RNG states too
        state = ckpt.restore(resume_from, learner, stream)
        summary, bad_steps, first = state["summary"], state["bad_steps"], state["step"] + 1
    else:
        summary["eval_initial"], bad_steps, first = evaluate("eval_initial"), 0, 1
    logger = MetricsLogger(out, enabled=main, first_step=first)

    def save(step, bad_steps, score):  # every rank calls: ZeRO shards are written by their ranks
        state = ckpt.loop_state(stream, summary=summary, bad_steps=bad_steps)
        return ckpt.save_run(cfg, out, step, learner, tok, state, score)

    model.train()
    bar = tqdm(range(first, s.steps + 1), desc="sft", dynamic_ncols=True, initial=first - 1, total=s.steps, disable=not main)
    with ckpt.StopRequest() as stop:
        for step in bar:
            t0 = time.time()
            micro = [(collate([rows[i] for i in mb], pad), w)
                     for mb, w in micro_batches(stream.take(s.seqs_per_step), s.micro_batch_seqs)]
            # Token mean over the whole optimizer step on all ranks: every assistant token weighs the same.
            n_tok = dist.global_sum(sum(w * float(mb[3][:, 1:].sum()) for mb, w in micro))
            total = 0.0
            for mb, w in micro:
                loss, _ = learner.forward(nll_sum, *mb)
                learner.backward(loss * w / max(n_tok, 1.0))
                total += w * loss.item()
            grad_norm = learner.step()  # not finite: the update was skipped on every rank
            learner.scheduler.step()
            m = {"loss": dist.global_sum(total) / max(n_tok, 1.0), "grad_norm": grad_norm,
                 "lr": learner.scheduler.get_last_lr()[0], "tokens": n_tok, "perf/step_s": time.time() - t0}
            if s.eval_every and step % s.eval_every == 0 and step != s.steps and test_rows:
                m["eval/heldout_loss"] = heldout_loss(model, test_rows, pad, s.micro_batch_seqs)
            ckpt.crash_point(f"step{step}")
            logger.log(step, m)
            bar.set_postfix(loss=f"{m['loss']:.3f}")
            bad_steps = ckpt.end_step(cfg, stop, step, m, bad_steps, save)
    bar.close()
    summary["eval_final"] = evaluate("eval_final")
    ckpt.save_model(learner, tok, out / "final")
    summary.update(steps=s.steps, wall_s=round(time.time() - t_start, 1))
    logger.close()
    if main:
        write_json_atomic(out / "summary.json", summary)
    dist.print0(f"sft done: {summary}  (checkpoint: {out / 'final'})")
    return summary
