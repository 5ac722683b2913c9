"""The sampler-learner boundary: a ``Rollout`` dataclass, the ``Sampler`` protocol, and the ``hf`` backend.

A sampler turns prompts into N completions each, returning token ids, text and the per-token
log-probabilities it sampled with (the learner's importance ratio needs them). After each optimizer
step the learner pushes weights with ``update_weights``; ``sleep``/``wake`` free accelerator memory
while the learner steps (meaningful for vLLM, free for ``hf``). Tests swap in a fake sampler.

The ``hf`` backend is a short KV-cached decode loop over the learner's own transformers model: no
second copy of the weights, so the sync is exact by construction, and the log-probabilities are
those of the very distribution it sampled from. ``rlvr.vllm_sampler`` is the fast backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol

import torch


@dataclass
class Rollout:
    """Completions for a batch of prompts, group by group (prompt i's samples are rows i*n .. i*n+n-1)."""

    prompt_ids: list[list[int]]  # (B,) one per completion
    completion_ids: list[list[int]]  # (B,) generated tokens, EOS included when generated
    texts: list[str]  # (B,) decoded completions, special tokens removed
    logprobs: list[list[float]]  # (B,) sampler log-probability of each completion token
    truncated: list[bool] = field(default_factory=list)  # (B,) stopped by max_new_tokens, not EOS

    def __len__(self) -> int:
        return len(self.texts)

    @staticmethod
    def concat(parts: list["Rollout"]) -> "Rollout":
        return Rollout(*[sum((getattr(p, f) for p in parts), []) for f in
                         ("prompt_ids", "completion_ids", "texts", "logprobs", "truncated")])

    def select(self, rows: list[int]) -> "Rollout":
        return Rollout(*[[getattr(self, f)[i] for i in rows] for f in
                         ("prompt_ids", "completion_ids", "texts", "logprobs", "truncated")])


class Sampler(Protocol):
    def generate(self, prompts: list[list[int]], n: int, *, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> Rollout:
        """n completions per prompt (token ids). temperature 0 means greedy."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load the learner's new weights (names as in the HF state dict)."""

    def sleep(self) -> None: ...

    def wake(self) -> None: ...


class HFSampler:
    """KV-cached batched sampling with the learner's transformers model (shared, not copied)."""

    def __init__(self, model, tokenizer, batch_seqs: int = 256):
        self.model, self.tokenizer, self.batch_seqs = model, tokenizer, batch_seqs
        self.eos_ids = set(_eos_ids(model, tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)

    def update_weights(self, named_tensors) -> None:
        # The sampler *is* the learner's module: nothing to copy. Consume the iterator so a caller that
        # streams tensors from a gathered (ZeRO-3) model still completes its collective calls.
        for _ in named_tensors:
            pass

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, prompts, n, *, temperature, top_p=1.0, max_new_tokens, seed=0) -> Rollout:
        gen = torch.Generator(device=next(self.model.parameters()).device).manual_seed(seed)
        per_chunk = max(1, self.batch_seqs // n)  # whole groups per chunk: a prompt is prefilled once
        parts = [self._generate(prompts[i:i + per_chunk], n, temperature, top_p, max_new_tokens, gen)
                 for i in range(0, len(prompts), per_chunk)]
        return Rollout.concat(parts)

    def _generate(self, prompts, n, temperature, top_p, max_new_tokens, gen) -> Rollout:
        model, device = self.model, next(self.model.parameters()).device
        was_training = model.training
        model.eval()
        B, P = len(prompts), max(len(p) for p in prompts)
        # Left padding keeps every sequence's next token at the same column.
        ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, P), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, P - len(p):] = torch.tensor(p)
            attn[i, P - len(p):] = 1
        ids, attn = ids.to(device), attn.to(device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1, :]
        if n > 1:  # the n samples of a prompt share its prefill: compute once, copy the KV cache
            cache.batch_repeat_interleave(n)
            logits, attn, pos = (t.repeat_interleave(n, dim=0) for t in (logits, attn, pos))
            prompts = [p for p in prompts for _ in range(n)]
            B = len(prompts)
        next_pos = pos[:, -1:] + 1
        # Everything stays on the model's device: one small sync per step (done.all), no logits copies.
        tokens = torch.full((B, max_new_tokens), self.pad_id, dtype=torch.long, device=device)
        logps = torch.zeros((B, max_new_tokens), device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        eos = torch.tensor(sorted(self.eos_ids), device=device)
        for t in range(max_new_tokens):
            logits = logits.float()
            if temperature == 0:
                tok = logits.argmax(-1)
                lp = logits.log_softmax(-1).gather(-1, tok[:, None]).squeeze(-1)
            else:
                logp = (logits / temperature).log_softmax(-1)
                probs = logp.exp()
                if top_p < 1.0:
                    probs = _top_p(probs, top_p)
                tok = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
                lp = logp.gather(-1, tok[:, None]).squeeze(-1)
            tok = torch.where(done, torch.full_like(tok, self.pad_id), tok)
            tokens[:, t], logps[:, t] = tok, lp
            done |= torch.isin(tok, eos)
            if done.all():
                break
            attn = torch.cat([attn, (~done).long()[:, None]], 1)
            out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos,
                        past_key_values=cache, use_cache=True)
            cache, logits, next_pos = out.past_key_values, out.logits[:, -1, :], next_pos + 1
        tokens, logps = tokens[:, : t + 1].cpu(), logps[:, : t + 1].cpu()
        model.train(was_training)

        completion_ids, lps, truncated = [], [], []
        for i in range(B):
            row = tokens[i].tolist()
            stop = next((j for j, t in enumerate(row) if t in self.eos_ids), None)
            keep = len(row) if stop is None else stop + 1
            # A row that stopped early is padded afterwards; cut at its EOS.
            completion_ids.append(row[:keep])
            lps.append(logps[i, :keep].tolist())
            truncated.append(stop is None)
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        return Rollout([list(p) for p in prompts], completion_ids, texts, lps, truncated)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero out the tail beyond cumulative probability top_p (nucleus sampling); (B, V) -> (B, V)."""
    sorted_p, idx = probs.sort(-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the token that crosses top_p
    sorted_p[drop] = 0.0
    return torch.zeros_like(probs).scatter(-1, idx, sorted_p)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    ids = ids if isinstance(ids, list) else ([ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model has no EOS token (generation_config.eos_token_id or tokenizer.eos_token)")
    return ids
