"""Reward model: a Bradley-Terry scalar head trained on preference pairs, and a verifier that scores with it.

    python -m rlvr.train recipes/tiny_reward_model.yaml   # CPU demo: held-out pairwise accuracy >= 0.9
    python -m rlvr.train recipes/tiny_chat_rl.yaml        # GRPO against that reward model

Training (``stage: reward_model``): ``AutoModelForSequenceClassification`` with one label over the
recipe's ``model.path`` (a fresh linear head on the causal LM's body), loss ``rlvr.algos.bradley_terry_loss``
on the score of (prompt, chosen) vs (prompt, rejected), optionally ``reward_model.center_coef`` x
mean (s_chosen + s_rejected)^2 to keep scores near zero. Saved in HF format (``OUTPUT_DIR/final``),
loadable with ``AutoModelForSequenceClassification.from_pretrained``. Figure: held-out pairwise accuracy.

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

from rlvr import algos, config as config_lib, data as data_lib
from rlvr.checkpoint import save_model
from rlvr.checkpoint import seed_everything
from rlvr.log import MetricsLogger, prepare_output_dir, write_json_atomic
from rlvr.model import DTYPES, ModelError
from rlvr.sft import optimizer_and_scheduler


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
    return model, tok


def scores(model, tok, texts: list[str], micro: int) -> torch.Tensor:
    """Scalar score of each text (B,). Left padding puts every text's last token in the last column,
    where the head reads it; position ids skip the padding. Texts over the model's context keep their end."""
    device = next(model.parameters()).device
    context = getattr(model.config, "max_position_embeddings", None) or 10**9
    out = []
    for s in range(0, len(texts), micro):
        rows = [tok(t, add_special_tokens=False)["input_ids"][-context:] for t in texts[s:s + micro]]
        L = max(map(len, rows))
        ids = torch.full((len(rows), L), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(rows), L), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, L - len(r):], attn[i, L - len(r):] = torch.tensor(r), 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device)).logits
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
def evaluate(model, tok, texts, micro) -> dict:
    was = model.training
    model.eval()
    c, r = scores(model, tok, texts[0], micro), scores(model, tok, texts[1], micro)
    model.train(was)
    return {"pairwise_accuracy": algos.preference_accuracy(c, r).item(), "margin": (c - r).mean().item(),
            "score_chosen": c.mean().item(), "score_rejected": r.mean().item(), "n": len(c)}


def train(cfg) -> dict:
    t_start = time.time()
    out = prepare_output_dir(cfg.output_dir)
    (out / "config.yaml").write_text(config_lib.dump(cfg))
    seed_everything(cfg.seed)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    d, s = cfg.data, cfg.reward_model
    model, tok = load(cfg.model.path, cfg.model.dtype, d.chat_template)
    train_pairs = data_lib.load_preferences(d.train, d.train_split, d)
    test_pairs = data_lib.load_preferences(d.test, d.test_split, d)[: s.eval_pairs] if d.test else []
    train_texts, test_texts = pair_texts(train_pairs, tok, d), pair_texts(test_pairs, tok, d)
    summary: dict = {"train_pairs": len(train_pairs)}
    if test_pairs:
        summary["eval_initial"] = evaluate(model, tok, test_texts, 2 * s.micro_batch_pairs)
        print(f"initial held-out: {summary['eval_initial']}")
    opt, sched = optimizer_and_scheduler(model, s)
    logger = MetricsLogger(out)
    stream = data_lib.PromptStream(len(train_pairs), cfg.seed, d.shuffle)
    model.train()
    bar = tqdm(range(1, s.steps + 1), desc="reward_model", dynamic_ncols=True)
    for step in bar:
        t0 = time.time()
        rows = stream.take(s.pairs_per_step)
        opt.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
        for i in range(0, len(rows), s.micro_batch_pairs):
            mb = rows[i:i + s.micro_batch_pairs]
            sc = scores(model, tok, [train_texts[0][j] for j in mb] + [train_texts[1][j] for j in mb], 2 * len(mb))
            c, r = sc[: len(mb)], sc[len(mb):]
            loss = algos.bradley_terry_loss(c, r) + s.center_coef * (c + r) ** 2
            (loss.sum() / len(rows)).backward()
            sums["loss"] += loss.detach().sum().item()
            sums["margin"] += (c - r).detach().sum().item()
            sums["accuracy"] += algos.preference_accuracy(c.detach(), r.detach()).item() * len(mb)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
        if torch.isfinite(grad_norm):
            opt.step()
        sched.step()
        m = {f"train/{k}": v / len(rows) for k, v in sums.items()}
        m.update({"grad_norm": float(grad_norm), "lr": opt.param_groups[0]["lr"], "perf/step_s": time.time() - t0})
        if s.eval_every and step % s.eval_every == 0 and step != s.steps and test_pairs:
            m.update({f"eval/{k}": v for k, v in evaluate(model, tok, test_texts, 2 * s.micro_batch_pairs).items() if k != "n"})
        logger.log(step, m)
        bar.set_postfix(loss=f"{m['train/loss']:.3f}", acc=f"{m['train/accuracy']:.2f}")
    bar.close()
    if test_pairs:
        summary["eval_final"] = evaluate(model, tok, test_texts, 2 * s.micro_batch_pairs)
    save_model(model, tok, out / "final")
    summary.update(steps=s.steps, wall_s=round(time.time() - t_start, 1))
    write_json_atomic(out / "summary.json", summary)
    logger.close()
    print(f"reward model done: {summary}  (checkpoint: {out / 'final'})")
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
