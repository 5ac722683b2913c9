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
import time
from pathlib import Path

import torch
from tqdm import tqdm

from rlvr import algos, checkpoint as ckpt, data as data_lib, dist
from rlvr.learner import Learner
from rlvr.log import MetricsLogger, write_json_atomic
from rlvr.model import DTYPES, ModelError, left_pad
from rlvr.sft import micro_batches


def load(path: str, dtype: str = "float32", chat_template: str = ""):
    """A reward model (or, for training, a causal LM to put a scalar head on) -> (model, tokenizer)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (Path(path).expanduser() / "config.json").is_file() and (path.startswith((".", "/", "~")) or path.count("/") != 1):
        raise ModelError(f"reward model {path!r} is not a saved HF model directory (no config.json) nor a hub id")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=DTYPES[dtype])
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load {path!r} as a sequence classifier: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id  # the head reads the last non-pad token
    if chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = chat_template
    return model.to(dist.device()), tok  # this rank's GPU, else the CPU


def scores(model, tok, texts: list[str], micro: int) -> torch.Tensor:
    """Scalar score of each text (B,). Left padding puts every text's last token in the last column,
    where the head reads it; position ids skip the padding. Texts over the model's context keep their end."""
    device = next(model.parameters()).device
    context = getattr(model.config, "max_position_embeddings", None) or 10**9
    out = []
    for s in range(0, len(texts), micro):
        rows = [tok(t, add_special_tokens=False)["input_ids"][-context:] for t in texts[s:s + micro]]
        ids, attn, pos = left_pad(rows, tok.pad_token_id, device=device)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
        out.append(logits[:, 0].float())
    return torch.cat(out)


def pair_texts(pairs: list[data_lib.Preference], tok, d) -> tuple[list[str], list[str]]:
    """(prompt as the policy sees it + chosen, ... + rejected) texts; the prompt is the decoded prompt
    tokens, which is also what GRPO hands reward functions."""
    chosen, rejected = [], []
    for p in pairs:
        segs = data_lib.chat_segments(p.prompt + [{"role": "assistant", "content": p.chosen}], tok, d.template,
                                      d.system_prompt, p.where)
        prompt = tok.decode([t for s, _ in segs[:-1] for t in s])
        n = len(tok(prompt + max(p.chosen, p.rejected, key=len), add_special_tokens=False)["input_ids"])
        if n > d.max_seq_tokens:
            raise data_lib.DataError(f"{p.where}: prompt + reply is {n} tokens, over data.max_seq_tokens="
                                     f"{d.max_seq_tokens}; raise it or drop the row")
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
    return {"pairwise_accuracy": algos.preference_accuracy(c, r).item(), "margin": (c - r).mean().item(),
            "score_chosen": c.mean().item(), "score_rejected": r.mean().item(), "n": len(c)}


def train(cfg) -> dict:
    t_start = time.time()
    out, resume_from = ckpt.start_run(cfg)
    main = dist.is_main()  # rank 0 alone writes files and prints; every rank computes
    d, s = cfg.data, cfg.reward_model
    # A checkpoint is an HF sequence-classifier directory: training continues from it, head included.
    model, tok = load(str(resume_from) if resume_from else cfg.model.path, cfg.model.dtype, d.chat_template)
    ckpt.check_space(out, ckpt.checkpoint_bytes(model))
    train_pairs = data_lib.load_preferences(d.train, d.train_split, d)
    test_pairs = data_lib.load_preferences(d.test, d.test_split, d)[: s.eval_pairs] if d.test else []
    train_texts, test_texts = pair_texts(train_pairs, tok, d), pair_texts(test_pairs, tok, d)
    summary: dict = {"train_pairs": len(train_pairs)}
    learner = Learner.for_stage(model, cfg.deepspeed, s)
    model = learner.module
    stream = data_lib.PromptStream(len(train_pairs), cfg.seed, d.shuffle)
    if resume_from:  # last before the loop: it restores the RNG states too
        state = ckpt.restore(resume_from, learner, stream)
        summary, bad_steps, first = state["summary"], state["bad_steps"], state["step"] + 1
    else:
        bad_steps, first = 0, 1
        if test_pairs:
            summary["eval_initial"] = evaluate(learner, tok, test_texts, 2 * s.micro_batch_pairs)
            dist.print0(f"initial held-out: {summary['eval_initial']}")
    logger = MetricsLogger(out, enabled=main, first_step=first)

    def save(step, bad_steps, score):  # every rank calls: ZeRO shards are written by their ranks
        state = ckpt.loop_state(stream, summary=summary, bad_steps=bad_steps)
        return ckpt.save_run(cfg, out, step, learner, tok, state, score)

    model.train()
    bar = tqdm(range(first, s.steps + 1), desc="reward_model", dynamic_ncols=True, initial=first - 1, total=s.steps,
               disable=not main)
    with ckpt.StopRequest() as stop:
        for step in bar:
            t0 = time.time()
            sums = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
            for mb, w in micro_batches(stream.take(s.pairs_per_step), s.micro_batch_pairs):
                sc = learner.forward(scores, tok, [train_texts[0][j] for j in mb] + [train_texts[1][j] for j in mb], 2 * len(mb))
                c, r = sc[: len(mb)], sc[len(mb):]
                loss = algos.bradley_terry_loss(c, r) + s.center_coef * (c + r) ** 2
                learner.backward(loss.sum() * w / s.pairs_per_step)  # a mean over every rank's pairs
                sums["loss"] += w * loss.detach().sum().item()
                sums["margin"] += w * (c - r).detach().sum().item()
                sums["accuracy"] += w * algos.preference_accuracy(c.detach(), r.detach()).item() * len(mb)
            grad_norm = learner.step()  # not finite: the update was skipped on every rank
            learner.scheduler.step()
            m = {f"train/{k}": dist.global_sum(v) / s.pairs_per_step for k, v in sums.items()}
            m.update({"grad_norm": grad_norm, "lr": learner.scheduler.get_last_lr()[0], "perf/step_s": time.time() - t0})
            if s.eval_every and step % s.eval_every == 0 and step != s.steps and test_pairs:
                m.update({f"eval/{k}": v for k, v in evaluate(learner, tok, test_texts, 2 * s.micro_batch_pairs).items()
                          if k != "n"})
            ckpt.crash_point(f"step{step}")
            logger.log(step, m)
            bar.set_postfix(loss=f"{m['train/loss']:.3f}", acc=f"{m['train/accuracy']:.2f}")
            bad_steps = ckpt.end_step(cfg, stop, step, m, bad_steps, save)
    bar.close()
    if test_pairs:
        summary["eval_final"] = evaluate(learner, tok, test_texts, 2 * s.micro_batch_pairs)
    ckpt.save_model(learner, tok, out / "final")
    summary.update(steps=s.steps, wall_s=round(time.time() - t_start, 1))
    logger.close()
    if main:
        write_json_atomic(out / "summary.json", summary)
    dist.print0(f"reward model done: {summary}  (checkpoint: {out / 'final'})")
    return summary


def register_verifier(rm_cfg) -> None:
    """Register ``reward_model`` (the model at ``rm_cfg.scorer``) as a batch reward function for GRPO."""
    import verifiers

    model, tok = load(rm_cfg.scorer)
    model.eval().requires_grad_(False)

    def reward_model(prompts, completions, **columns):
        with torch.no_grad():
            return scores(model, tok, [p + c for p, c in zip(prompts, completions)], rm_cfg.scorer_batch_seqs).tolist()

    verifiers.register("reward_model")(reward_model)


def score_eval_samples(cfg, summary: dict) -> dict:
    """After a GRPO run with the ``reward_model`` verifier: the reward model's mean score of the greedy
    held-out replies saved before and after training (eval_{initial,final}_samples.jsonl), added to
    summary.json as ``reward_model_score``."""
    import verifiers

    from transformers import AutoTokenizer

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
        prompts = [tok.decode(p) for p in data_lib.encode_prompts(problems, tok, d.template, d.max_prompt_tokens, d.system_prompt)]
        result[tag] = sum(fn(prompts, [r["completion"] for r in rows])) / len(rows)
    summary["reward_model_score"] = result
    write_json_atomic(out / "summary.json", summary)
    print(f"reward-model score of held-out greedy replies: {result}")
    return summary
