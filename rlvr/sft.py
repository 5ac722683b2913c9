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
greedy replies need whole weights.
"""

from __future__ import annotations

import json
import re

from rlvr import data as data_lib, dist, model as model_lib
from rlvr.learner import Learner
from rlvr.run import Run
from rlvr.sampler import HFSampler
from rlvr.supervised import heldout_loss, sft_step


def greedy_replies(cfg, model, tok, convs, examples, out_dir=None, tag="eval") -> dict:
    """Greedy replies to held-out chats (everything before the last assistant turn): how often they
    match ``sft.format_regex`` and the reference reply exactly; saved to TAG_samples.jsonl."""
    sampler = HFSampler(model, tok, batch_seqs=cfg.sampler.batch_seqs)
    ro = sampler.generate(
        [ids[:start] for ids, _, start in examples],
        1,
        temperature=0.0,
        max_new_tokens=cfg.sft.eval_max_new_tokens,
        seed=cfg.seed,
    )
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
    run = Run(cfg, cfg.sft, show={"loss": "loss"})
    d, s = cfg.data, cfg.sft
    model, tok = model_lib.load(run.model_config(cfg.model), chat_template=d.chat_template)
    train_convs = data_lib.load_conversations(d.train, d.train_split, d)
    train_ex = data_lib.encode_chats(train_convs, tok, d)
    rows = data_lib.make_rows(train_ex, s.packing, d.max_seq_tokens, cfg.seed)
    test_convs, test_ex, test_rows = [], [], []
    if d.test:
        test_convs = data_lib.load_conversations(d.test, d.test_split, d)[: s.eval_examples]
        test_ex = data_lib.encode_chats(test_convs, tok, d)
        test_rows = data_lib.make_rows(test_ex, False, d.max_seq_tokens, cfg.seed)
    pad = tok.pad_token_id
    learner = Learner.for_stage(model, cfg.deepspeed, s)
    model = learner.module

    def evaluate(tag):  # every rank evaluates everything (whole weights: ZeRO-3 is refused for this in config)
        if not test_rows:
            return {}
        ev = {"heldout_loss": heldout_loss(model, test_rows, pad, s.micro_batch_seqs)}
        ev.update(greedy_replies(cfg, model, tok, test_convs, test_ex, run.out if run.main else None, tag))
        dist.print0(f"{tag}: {ev}")
        return ev

    stream = data_lib.PromptStream(len(rows), cfg.seed, d.shuffle)
    summary = run.begin(
        learner,
        tok,
        stream,
        {"train_examples": len(train_ex), "train_rows": len(rows)},
        initial=lambda: {"eval_initial": evaluate("eval_initial")},
    )
    model.train()
    with run:
        for step in run.steps():
            m = sft_step(learner, rows, stream.take(s.seqs_per_step), s.micro_batch_seqs, pad)
            if s.eval_every and step % s.eval_every == 0 and step != s.steps and test_rows:
                m["eval/heldout_loss"] = heldout_loss(model, test_rows, pad, s.micro_batch_seqs)
            run.end_step(step, m)
    summary["eval_final"] = evaluate("eval_final")
    summary = run.finish(summary)
    dist.print0(f"sft done: {summary}  (checkpoint: {run.out / 'final'})")
    return summary
