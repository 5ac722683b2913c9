"""Reward model: a Bradley-Terry scalar head trained on preference pairs, and a verifier that scores with it.

    python -m rlvr.train recipes/tiny_reward_model.yaml   # CPU demo: held-out pairwise accuracy >= 0.9
    python -m rlvr.train recipes/tiny_chat_rl.yaml        # GRPO against that reward model

Training (``stage: reward_model``): ``AutoModelForSequenceClassification`` with one label over the
recipe's ``model.path`` (a fresh linear head on the causal LM's body), loss ``rlvr.algos.bradley_terry_loss``
on the score of (prompt, chosen) vs (prompt, rejected), optionally ``reward_model.center_coef`` x
mean (s_chosen + s_rejected)^2 to keep scores near zero. Saved in HF format (``OUTPUT_DIR/final``),
loadable with ``AutoModelForSequenceClassification.from_pretrained``. Figure: held-out pairwise accuracy.
1 or N processes, any ``deepspeed.zero_stage``; resumable (``--resume=auto``) like every stage.

Scoring (``{verifier: reward_model}`` in a GRPO recipe's rewards, with ``reward_model.scorer: PATH``):
``rlvr.train`` registers ``reward_model`` as a TRL-style batch reward function, run in-process by
``rlvr.rewards``; it may be mixed with rule-based verifiers. The text scored is the rendered prompt
followed by the reply, exactly as the policy sees it, in training and in scoring alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlvr import algos, data as data_lib, dist
from rlvr.learner import Learner, micro_batches
from rlvr.log import Tally, write_json_atomic
from rlvr.model import left_pad, load_scorer
from rlvr.run import Run


def scores(model, tok, texts: list[str], micro: int) -> torch.Tensor:
    """Scalar score of each text (B,). Left padding puts every text's last token in the last column,
    where the head reads it; position ids skip the padding. Texts over the model's context keep their end."""
    device = next(model.parameters()).device
    context = getattr(model.config, "max_position_embeddings", None) or 10**9
    out = []
    for s in range(0, len(texts), micro):
        rows = [tok(t, add_special_tokens=False)["input_ids"][-context:] for t in texts[s : s + micro]]
        ids, attn, pos = left_pad(rows, tok.pad_token_id, device=device)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
        out.append(logits[:, 0].float())
    return torch.cat(out)


def pair_texts(pairs: list[data_lib.Preference], tok, d) -> tuple[list[str], list[str]]:
    """(prompt as the policy sees it + chosen, ... + rejected) texts; the prompt is the decoded prompt
    tokens, which is also what GRPO hands reward functions."""
    chosen, rejected = [], []
    for p in pairs:
        segs = data_lib.chat_segments(
            p.prompt + [{"role": "assistant", "content": p.chosen}], tok, d.template, d.system_prompt, p.where
        )
        prompt = tok.decode([t for s, _ in segs[:-1] for t in s])
        n = len(tok(prompt + max(p.chosen, p.rejected, key=len), add_special_tokens=False)["input_ids"])
        if n > d.max_seq_tokens:
            raise data_lib.DataError(
                f"{p.where}: prompt + reply is {n} tokens, over data.max_seq_tokens="
                f"{d.max_seq_tokens}; raise it or drop the row"
            )
        chosen.append(prompt + p.chosen)
        rejected.append(prompt + p.rejected)
    return chosen, rejected


@torch.no_grad()
def evaluate(learner, tok, texts, micro) -> dict:
    """Held-out metrics; every rank scores every pair, through the learner (ZeRO-3 gathers the weights)."""
    model = learner.module
    was = model.training
    model.eval()
    c, r = (learner.forward(scores, tok, t, micro).cpu() for t in texts)
    model.train(was)
    return {
        "pairwise_accuracy": algos.preference_accuracy(c, r).item(),
        "margin": (c - r).mean().item(),
        "score_chosen": c.mean().item(),
        "score_rejected": r.mean().item(),
        "n": len(c),
    }


def train(cfg) -> dict:
    run = Run(cfg, cfg.reward_model, show={"loss": "train/loss", "acc": "train/accuracy"})
    d, s = cfg.data, cfg.reward_model
    # A checkpoint is an HF sequence-classifier directory: training continues from it, head included.
    model, tok = load_scorer(run.model_config(cfg.model).path, cfg.model.dtype, d.chat_template)
    train_pairs = data_lib.load_preferences(d.train, d.train_split, d)
    test_pairs = data_lib.load_preferences(d.test, d.test_split, d)[: s.eval_pairs] if d.test else []
    train_texts, test_texts = pair_texts(train_pairs, tok, d), pair_texts(test_pairs, tok, d)
    learner = Learner.for_stage(model, cfg.deepspeed, s)
    model = learner.module
    stream = data_lib.PromptStream(len(train_pairs), cfg.seed, d.shuffle)

    def initial():
        if not test_pairs:
            return {}
        ev = evaluate(learner, tok, test_texts, 2 * s.micro_batch_pairs)
        dist.print0(f"initial held-out: {ev}")
        return {"eval_initial": ev}

    summary = run.begin(learner, tok, stream, {"train_pairs": len(train_pairs)}, initial=initial)
    model.train()
    with run:
        for step in run.steps():
            tally = Tally()
            for mb, w in micro_batches(stream.take(s.pairs_per_step), s.micro_batch_pairs):
                texts = [train_texts[0][j] for j in mb] + [train_texts[1][j] for j in mb]
                sc = learner.forward(scores, tok, texts, 2 * len(mb))
                c, r = sc[: len(mb)], sc[len(mb) :]
                loss = algos.bradley_terry_loss(c, r) + s.center_coef * (c + r) ** 2
                learner.backward(loss.sum() * w / s.pairs_per_step)  # a mean over every rank's pairs
                tally.add("train/loss", w * loss.detach().sum().item())
                tally.add("train/accuracy", w * algos.preference_accuracy(c.detach(), r.detach()).item() * len(mb))
                tally.add("train/margin", w * (c - r).detach().sum().item())
            m = {k: v / s.pairs_per_step for k, v in tally.global_sums().items()}
            m["grad_norm"] = learner.step()  # not finite: the update was skipped on every rank
            if s.eval_every and step % s.eval_every == 0 and step != s.steps and test_pairs:
                ev = evaluate(learner, tok, test_texts, 2 * s.micro_batch_pairs)
                m.update({f"eval/{k}": v for k, v in ev.items() if k != "n"})
            run.end_step(step, m)
    if test_pairs:
        summary["eval_final"] = evaluate(learner, tok, test_texts, 2 * s.micro_batch_pairs)
    summary = run.finish(summary)
    dist.print0(f"reward model done: {summary}  (checkpoint: {run.out / 'final'})")
    return summary


def register_verifier(rm_cfg) -> None:
    """Register ``reward_model`` (the model at ``rm_cfg.scorer``) as a batch reward function for GRPO."""
    import verifiers

    model, tok = load_scorer(rm_cfg.scorer)
    model.eval().requires_grad_(False)

    def reward_model(prompts, completions, **columns):
        with torch.no_grad():
            return scores(model, tok, [p + c for p, c in zip(prompts, completions)], rm_cfg.scorer_batch_seqs).tolist()

    verifiers.register("reward_model")(reward_model)


def score_eval_samples(cfg, summary: dict) -> dict:
    """After a GRPO run with the ``reward_model`` verifier: the reward model's mean score of the greedy
    held-out replies saved before and after training (eval_{initial,final}_samples.jsonl), added to
    summary.json as ``reward_model_score``."""
    from transformers import AutoTokenizer

    import verifiers

    out = Path(cfg.output_dir)
    tok = AutoTokenizer.from_pretrained(out / "final")  # the policy's: prompts render as they did in training
    fn, d = verifiers.get("reward_model"), cfg.data
    result = {}
    for tag in ("initial", "final"):
        path = out / f"eval_{tag}_samples.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.open()]
        problems = [data_lib.Problem(r["question"], r["answer"]) for r in rows]
        prompts = [
            tok.decode(p)
            for p in data_lib.encode_prompts(problems, tok, d.template, d.max_prompt_tokens, d.system_prompt)
        ]
        result[tag] = sum(fn(prompts, [r["completion"] for r in rows])) / len(rows)
    summary["reward_model_score"] = result
    write_json_atomic(out / "summary.json", summary)
    print(f"reward-model score of held-out greedy replies: {result}")
    return summary
