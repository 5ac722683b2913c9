"""An LM judge: any causal LM with a chat template scores answers from its next-token probabilities, never by
parsing text it writes. Loaded once, batched; the ``judge`` section of a recipe configures it.

    judge = Judge.load(cfg.judge)
    judge.score(questions, answers)          # (B,) in [0, 1]: how well each answer meets the rubric
    judge.compare(questions, a, b)           # (B,) P(a better than b), both orders averaged

The judge reads a user message built from a template (``judge.prompt``: ``{rubric}``, ``{question}``,
``{answer}``; ``judge.pairwise_prompt``: ``{answer_a}``, ``{answer_b}`` instead of ``{answer}``; ``{top}``: the
rating scale's top), rendered with its own chat template and generation prompt, then ``judge.response_prefix``,
and takes the distribution of the next token:

- ``mode: yes_no``: P(yes) = softmax over the logits of the two tokens ``judge.yes_token`` / ``judge.no_token``
  (each must be one token of the judge's tokenizer);
- ``mode: rating``: the expected value of the ratings "1".."10" (softmax over those ten tokens), mapped to [0, 1]
  by (E - 1) / (top - 1). Where "10" is not one token (SmolLM2, Llama 3) the scale is 1..9 and the prompt says so
  through ``{top}``.

``compare`` asks the pairwise question twice, with the answers in both orders, and averages P(first better) with
1 - P(second better): a judge that favours whichever answer comes first (position bias) cancels out, and
``position_bias`` reports how much it did. A prompt longer than ``judge.max_tokens`` is not judged: NaN (a failed
verdict for the ``judge`` verifier, a dropped pair for ``stage: ai_feedback``).

In GRPO/PPO/rejection-sampling recipes, ``{verifier: judge}`` in ``rewards`` scores each completion with
``score`` (``rlvr.train`` registers it in-process, like ``reward_model``), beside the rule-based verifiers. It is
given each problem's question (``rlvr.rewards`` passes it as the ``question`` column), not the rendered prompt.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rlvr import model as model_lib
from rlvr.config import ModelConfig

RUBRIC = "A good answer is correct, on topic and helpful."
# Short, plain questions: SmolLM2-135M-Instruct agrees with clearly better vs clearly worse answers 25 times in 30
# with PROMPTS["yes_no", "single"], against 20 to 22 with longer ones that set the rubric apart as a "standard"
# (tests/test_judge.py measures it). Larger judges read either.
PROMPTS = {
    ("yes_no", "single"): '{question}\n\nSomeone answered: "{answer}"\n\n{rubric} Is that a good answer? Yes or No?',
    ("yes_no", "pair"): '{question}\n\nAnswer A: "{answer_a}"\n\nAnswer B: "{answer_b}"\n\n{rubric} Is Answer A '
    "better than Answer B? Yes or No?",
    ("rating", "single"): '{question}\n\nSomeone answered: "{answer}"\n\n{rubric} How good is that answer, from 1 '
    "(bad) to {top} (good)? Reply with the number only.",
    ("rating", "pair"): '{question}\n\nAnswer A: "{answer_a}"\n\nAnswer B: "{answer_b}"\n\n{rubric} Which answer '
    "is better, from 1 (B is far better) to {top} (A is far better)? Reply with the number only.",
}


class JudgeError(model_lib.ModelError):
    """A judge that cannot be used as configured; the message names the setting and the fix."""


def template(j, kind: str) -> str:
    """The ``judge`` section's user-message template for one answer (``kind`` single) or two (pair)."""
    return getattr(j, {"single": "prompt", "pair": "pairwise_prompt"}[kind]) or PROMPTS[(j.mode, kind)]


def rubric_text(j) -> str:
    """The rubric: ``judge.rubric`` inline, else the file ``judge.rubric_file``, else ``RUBRIC``."""
    if j.rubric_file:
        return Path(j.rubric_file).expanduser().read_text().strip()
    return j.rubric or RUBRIC


class Judge:
    """A causal LM (eval mode, no gradients) and what it reads: the label tokens and the prompt templates."""

    def __init__(self, model, tok, j):
        self.model, self.tok, self.cfg = model.eval().requires_grad_(False), tok, j
        if not getattr(tok, "chat_template", None):
            raise JudgeError(
                f"judge.model {j.model!r} has no chat template, and the judge renders its question as a chat: use a "
                f"chat/instruct model (e.g. HuggingFaceTB/SmolLM2-135M-Instruct), or give one as judge.chat_template"
            )
        if j.mode == "yes_no":
            self.labels = [
                self._one_token(j.yes_token, "judge.yes_token"),
                self._one_token(j.no_token, "judge.no_token"),
            ]
            self.top = 10
        else:  # ratings 1..10, or 1..9 where "10" is two tokens
            self.top = 10 if len(tok("10", add_special_tokens=False)["input_ids"]) == 1 else 9
            self.labels = [self._one_token(str(k), "the rating") for k in range(1, self.top + 1)]
        self.rubric = rubric_text(j)
        self.prompts = {kind: template(j, kind) for kind in ("single", "pair")}
        # the probability the next token put on the label tokens, per prompt of the last ``read`` (NaN: not judged)
        self.last_mass = torch.empty(0)

    @classmethod
    def load(cls, j, device=None) -> Judge:
        """The ``judge`` config section -> a Judge with its model on ``device`` (default: this rank's)."""
        if not j.model:
            raise JudgeError("judge.model is empty: give a local HF directory or a hub id of a chat model")
        try:
            model, tok = model_lib.load(ModelConfig(path=j.model, dtype=j.dtype), device, chat_template=j.chat_template)
        except model_lib.ModelError as e:
            raise JudgeError(f"judge.model: {e}") from None
        return cls(model, tok, j)

    def _one_token(self, word: str, key: str) -> int:
        ids = self.tok(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [self.tok.decode([i]) for i in ids]
            raise JudgeError(
                f"{key}={word!r} is {len(ids)} tokens {pieces} for the tokenizer of judge.model "
                f"{self.cfg.model!r}, and the judge reads a single next token: pick a word that is one token "
                f"(e.g. its first piece {pieces[0]!r} for yes_no, with judge.response_prefix for any text before it)"
            )
        return ids[0]

    def messages(self, kind: str, question: str, **answers) -> str:
        """The chat text the judge continues: system message, the filled template, generation prompt, prefix."""
        user = self.prompts[kind].format(rubric=self.rubric, question=question, top=self.top, **answers)
        msgs = ([{"role": "system", "content": self.cfg.system}] if self.cfg.system else []) + [
            {"role": "user", "content": user}
        ]
        text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return text + self.cfg.response_prefix

    def score(self, questions: list[str], answers: list[str]) -> torch.Tensor:
        """How well each answer meets the rubric -> (B,) in [0, 1]; NaN where the prompt is over max_tokens."""
        return self.read([self.messages("single", q, answer=a) for q, a in zip(questions, answers)])

    def compare_orders(self, questions, a, b) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (P(a better) with a shown first, P(b better) with b shown first), each (B,)."""
        texts = [self.messages("pair", q, answer_a=x, answer_b=y) for q, x, y in zip(questions, a, b)]
        texts += [self.messages("pair", q, answer_a=y, answer_b=x) for q, x, y in zip(questions, a, b)]
        s = self.read(texts)
        return s[: len(a)], s[len(a) :]

    def compare(self, questions, a, b) -> torch.Tensor:
        """P(a better than b) per question (B,), the two orders averaged (``preference``)."""
        return preference(*self.compare_orders(questions, a, b))

    @torch.no_grad()
    def read(self, texts: list[str]) -> torch.Tensor:
        """Chat texts -> the judge's verdict on each (B,) in [0, 1], from its next-token distribution."""
        rows = [self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        out, self.last_mass = torch.full((len(rows),), float("nan")), torch.full((len(rows),), float("nan"))
        fits = [i for i, r in enumerate(rows) if len(r) <= self.cfg.max_tokens]
        for s in range(0, len(fits), self.cfg.batch_seqs):
            idx = fits[s : s + self.cfg.batch_seqs]
            logits = self.next_logits([rows[i] for i in idx])  # (b, V)
            labels = torch.tensor(self.labels, device=logits.device)
            self.last_mass[idx] = logits.softmax(-1)[:, labels].sum(-1).cpu()
            out[idx] = verdict(logits[:, labels], self.cfg.mode).cpu()
        return out

    @torch.no_grad()
    def next_logits(self, rows: list[list[int]]) -> torch.Tensor:
        """Token rows -> the logits of each one's next token (B, V), fp32, in one left-padded batch; the LM head
        runs on the last position only."""
        device = next(self.model.parameters()).device
        ids, attn, pos = model_lib.left_pad(rows, self.tok.pad_token_id, device=device)
        hidden = self.model.get_decoder()(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
        return self.model.get_output_embeddings()(hidden.last_hidden_state[:, -1]).float()


def verdict(label_logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Logits of the label tokens (B, K) -> the verdict in [0, 1] (B,). yes_no: K = 2 (yes, no), P(yes) among the
    two; rating: K = top ratings 1..top, the expected rating (E - 1) / (top - 1)."""
    p = label_logits.float().softmax(-1)  # (B, K)
    if mode == "yes_no":
        return p[:, 0]
    k = torch.arange(1, p.shape[1] + 1, dtype=p.dtype, device=p.device)
    return ((p * k).sum(-1) - 1) / (p.shape[1] - 1)


def preference(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """P(x better than y) from the two orders: ``first`` = P(x better) with x shown first, ``second`` = P(y
    better) with y shown first (B,) -> (first + 1 - second) / 2 (B,). A constant pull towards the first position
    adds to both and cancels."""
    return (first + 1 - second) / 2


def position_bias(first: torch.Tensor, second: torch.Tensor) -> float:
    """The judge's pull towards whichever answer is shown first, from the two orders (``preference``'s inputs):
    mean (first + second - 1) / 2; 0 for a judge without one, whose two verdicts add up to 1."""
    return ((first + second - 1) / 2).nanmean().item()


def register_verifier(j) -> Judge:
    """Register ``judge`` (the ``judge`` section's model) as a batch reward function for the sampling stages:
    each completion's ``score``, None (a failed verdict) where its prompt is over judge.max_tokens."""
    import verifiers

    judge = Judge.load(j)

    def judge_reward(prompts, completions, **columns):
        questions = columns.get("question") or prompts
        return [None if math.isnan(v) else v for v in judge.score(list(questions), list(completions)).tolist()]

    verifiers.register("judge")(judge_reward)
    return judge
