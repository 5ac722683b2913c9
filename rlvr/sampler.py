"""The ``hf`` sampler backend, and ``make_sampler`` for the one a config names (``sampler.backend``).

A sampler (``rlvr.rollout.Sampler``) turns prompts into N completions each, returning token ids, text
and the per-token log-probabilities it sampled with (the learner's importance ratio needs them).

The ``hf`` backend is a short KV-cached decode loop over the learner's own transformers model: no
second copy of the weights, so the sync is exact by construction, and the log-probabilities are
those of the very distribution it sampled from. ``sampler.compile`` runs its token steps with fixed
shapes under torch.compile (CUDA graphs on a GPU). ``rlvr.vllm_sampler`` is the fast backend.
"""

from __future__ import annotations

import functools
import inspect

import torch

from rlvr import model as model_lib
from rlvr.episodes import turn_end
from rlvr.rollout import Rollout

SYNC_EVERY = 16  # static path: tokens decoded between host checks that every row has finished
GQA_DECODE = "rlvr_sdpa_gqa"  # the attention implementation the sampler decodes with (see _gqa_sdpa)


class HFSampler:
    """KV-cached batched sampling with the learner's transformers model (shared, not copied).

    Two decode paths share the prefill (once per prompt), the sampling and the EOS cut. The dynamic
    one grows a ``DynamicCache`` by a column per token: simple, and fine on CPU, but on a GPU every
    token is a few hundred small kernel launches from Python. The static one (``compile``) gives each
    token step fixed shapes: a KV cache preallocated for prompt +
    ``max_new_tokens``, a full-length attention mask, a full chunk's rows. ``compile`` then compiles
    that step once per shape (CUDA graphs on a GPU, so a token costs one graph replay).
    """

    def __init__(self, model, tokenizer, batch_seqs: int = 256, compile: bool = False):
        self.model, self.tokenizer, self.batch_seqs = model, tokenizer, batch_seqs
        self.eos_ids = set(_eos_ids(model, tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.compile = compile
        # The prefill needs only the last position's logits: ask for just those where the model allows it (a LoRA
        # policy's peft wrapper passes the argument on to the model it wraps).
        inner = model.get_base_model() if model_lib.is_lora(model) else model
        takes_keep = "logits_to_keep" in inspect.signature(inner.forward).parameters
        self._last_logits = {"logits_to_keep": 1} if takes_keep else {}
        # Kept across calls: a compiled graph (a CUDA graph above all) is bound to its cache's addresses.
        self._caches: dict[tuple, object] = {}
        self._step = None
        self._attn = GQA_DECODE if _fused_gqa_decode(model) else None
        # One token's text, cached: what tells a turn's stop markers where to look (rlvr.episodes.Stop).
        self._piece = functools.lru_cache(maxsize=None)(lambda i: self._decode([i]))

    def update_weights(self, named_tensors) -> None:
        # The sampler *is* the learner's module: nothing to copy. Consume the iterator so a caller that
        # streams tensors from a gathered (ZeRO-3) model still completes its collective calls.
        for _ in named_tensors:
            pass

    @torch.no_grad()
    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        """The log-probability (T=1) of each completion token after its prompt, as this sampler's weights
        give it (the weight-sync guard's probe, ``rlvr.sampling.SyncProbe``): the learner's own computation on
        the module the sampler holds, in eval mode, so it is bit-identical to the learner's when the module
        is the learner's."""
        was_training = self.model.training
        self.model.eval()
        try:
            logp, mask = model_lib.grouped_logprobs(self.model, prompts, completions, 1, self.pad_id, 1.0)
        finally:
            self.model.train(was_training)
        return [row[: len(c)].tolist() for row, c in zip(logp.float().cpu(), completions)]

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, prompts, samples_per_prompt, *, temperature, top_p=1.0, max_new_tokens, seed=0) -> Rollout:
        limits = [max_new_tokens] * len(prompts)
        return self._sample(prompts, samples_per_prompt, limits, None, temperature, top_p, seed)

    @torch.no_grad()
    def generate_turn(self, prefixes, *, max_new_tokens, stop=None, temperature, top_p=1.0, seed=0) -> Rollout:
        """One model turn of each episode (``rlvr.episodes``): a completion of each token prefix, which ends after
        EOS, after the token where ``stop`` (an ``rlvr.episodes.Stop``) ends a turn, or after its row's
        ``max_new_tokens[i]`` tokens (``truncated``)."""
        return self._sample(prefixes, 1, list(max_new_tokens), stop, temperature, top_p, seed)

    def _sample(self, prompts, n, limits, stop, temperature, top_p, seed) -> Rollout:
        gen = torch.Generator(device=next(self.model.parameters()).device).manual_seed(seed)
        per_chunk = max(1, self.batch_seqs // n)  # whole groups per chunk: a prompt is prefilled once
        learner_attn = self.model.config._attn_implementation
        if self._attn:
            self.model.set_attn_implementation(self._attn)
        try:
            parts = [
                self._generate(
                    prompts[i : i + per_chunk], n, temperature, top_p, limits[i : i + per_chunk], stop, gen, per_chunk
                )
                for i in range(0, len(prompts), per_chunk)
            ]
        finally:
            if self._attn:
                self.model.set_attn_implementation(learner_attn)
        return Rollout.concat(parts)

    def _generate(self, prompts, n, temperature, top_p, limits, stop, gen, per_chunk) -> Rollout:
        model, device = self.model, next(self.model.parameters()).device
        was_training = model.training
        model.eval()
        rows = B = len(prompts) * n
        P, max_new_tokens = max(map(len, prompts)), max(limits)
        if self.compile:  # shapes that recur, so one compiled step serves every chunk: a full chunk's rows
            # (padding rows after the real ones) and the prompt width rounded up to a power of two
            B, P = per_chunk * n, max(16, 1 << (P - 1).bit_length())
        # Left padding keeps every sequence's next token at the same column.
        ids, attn, pos = model_lib.left_pad(prompts, self.pad_id, P, device)
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, **self._last_logits)
        # Each prompt is prefilled once; row r samples prompt r // n from a copy of its KV cache (padding
        # rows copy the last prompt).
        rep = (torch.arange(B, device=device) // n).clamp(max=len(prompts) - 1)
        logits, attn, pos = out.logits[rep, -1, :], attn[rep], pos[rep, -1:]
        decode = self._static_decode if self.compile else self._dynamic_decode
        step = decode(getattr(out, model_lib.CACHE), rep, attn, pos, max_new_tokens, temperature, top_p)

        # Everything stays on the model's device; the host waits only for the done.all() check, every
        # token on the dynamic path (each extra step there grows the cache), every SYNC_EVERY on the
        # static one (a sync stops the host from queueing steps ahead of the GPU).
        every = SYNC_EVERY if self.compile else 1
        tokens = torch.full((B, max_new_tokens), self.pad_id, dtype=torch.long, device=device)
        logps = torch.zeros((B, max_new_tokens), device=device)
        limit = torch.zeros(B, dtype=torch.long)  # padding rows: none, so finished from the start
        limit[:rows] = torch.tensor(limits).repeat_interleave(n)
        limit = limit.to(device)
        done = limit == 0
        eos = torch.tensor(sorted(self.eos_ids), device=device)

        # Sampling noise is drawn here, from the seeded generator, outside any compiled graph.
        def draw():
            return None if temperature == 0 else torch.empty_like(logits).exponential_(generator=gen)

        tok, lp = _pick(logits, temperature, top_p, draw())
        for t in range(max_new_tokens):
            tok = torch.where(done, torch.full_like(tok, self.pad_id), tok)
            tokens[:, t], logps[:, t] = tok, lp
            done |= torch.isin(tok, eos) | (limit <= t + 1)
            if (t + 1) % every == 0 and stop is not None:  # a row past its stop need not decode on
                done |= self._stopped(stop, tokens, done, t + 1 - every, t + 1)
            if t + 1 == max_new_tokens or (t + 1) % every == 0 and done.all():
                break
            tok, lp = step(tok, draw())
        tokens, logps = tokens[:rows, : t + 1].cpu(), logps[:rows, : t + 1].cpu()
        model.train(was_training)

        completion_ids, lps, truncated = [], [], []
        for i in range(rows):
            # A row that stopped early is padded afterwards: cut where its turn ends (rlvr.episodes.turn_end).
            keep, cut = turn_end(tokens[i].tolist(), limits[i // n], self.eos_ids, stop, self._decode, self._piece)
            completion_ids.append(tokens[i, :keep].tolist())
            lps.append(logps[i, :keep].tolist())
            truncated.append(cut)
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        return Rollout([list(p) for p in prompts for _ in range(n)], completion_ids, texts, lps, truncated)

    def _stopped(self, stop, tokens, done, lo: int, hi: int) -> torch.Tensor:
        """(B,) rows not yet done whose tokens[:, :hi] end a turn by ``stop``, looked for only in rows where a token
        of lo:hi could complete a marker."""
        hit, window = torch.zeros_like(done), tokens[:, lo:hi].tolist()
        for i in (~done).nonzero().flatten().tolist():
            if stop.could_end(window[i], self._piece):
                hit[i] = stop.end(tokens[i, :hi].tolist(), self._decode, self._piece) is not None
        return hit

    def _decode(self, ids: list[int]) -> str:
        # Special tokens have no text here, as in vLLM's detokenizer: "<|endoftext|>" holds no "<" of a marker.
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _dynamic_decode(self, cache, rep, attn, pos, max_new_tokens, temperature, top_p):
        """The prefill's DynamicCache, a column longer each token -> step(token, noise) -> next token, logprob."""
        cache.batch_select_indices(rep)
        ones = torch.ones_like(attn[:, :1])

        def step(tok, noise):
            nonlocal attn, pos
            # The new column is 1 even for finished rows: their later outputs are cut off anyway.
            attn, pos = torch.cat([attn, ones], 1), pos + 1
            out = self.model(
                input_ids=tok[:, None],
                attention_mask=attn,
                position_ids=pos,
                **{model_lib.CACHE: cache},
                use_cache=True,
            )
            return _pick(out.logits[:, -1, :], temperature, top_p, noise)

        return step

    def _static_decode(self, prefill, rep, attn, pos, max_new_tokens, temperature, top_p):
        """The prefill copied into a cache preallocated for the full length -> step(token, noise) as above."""
        from transformers import StaticCache

        B, L = attn.shape[0], attn.shape[1] + max_new_tokens
        key = (B, L, next(self.model.parameters()).dtype, attn.device)
        if key not in self._caches:
            self._caches[key] = StaticCache(config=self.model.config, max_cache_len=L)
        cache = self._caches[key]
        cache.reset()
        for i, layer in enumerate(prefill.layers):  # writes columns 0..P-1; the cache advances its own position
            cache.update(layer.keys[rep], layer.values[rep], i)
        # The mask spans the whole cache: ones over the completion columns, which the causal mask hides
        # until they are written. Finished rows keep attending; their outputs are cut off anyway.
        attn = torch.cat([attn, attn.new_ones(B, max_new_tokens)], 1)
        if self._step is None:
            # dynamic=False: one graph per (B, L), never a shape-generic one; reduce-overhead: CUDA graphs.
            # Training, greedy and sampled evals and prompt-length buckets can pass dynamo's default of 8
            # graphs per function, after which the step would run uncompiled (process-wide setting).
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            self._step = torch.compile(
                _static_step, dynamic=False, mode="reduce-overhead" if attn.device.type == "cuda" else None
            )

        def step(tok, noise):
            nonlocal pos
            pos = pos + 1
            # A CUDA graph's outputs live until its next replay; the loop copies them out before that.
            torch.compiler.cudagraph_mark_step_begin()
            return self._step(self.model, cache, tok, attn, pos, noise, temperature, top_p)

        return step


def _static_step(model, cache, tok, attn, pos, noise, temperature, top_p):
    """One fixed-shape decode step: tok (B,), attn (B, L), pos (B, 1) -> next token (B,), its logprob (B,).
    The cache advances in place (transformers' StaticCache tracks its own write position)."""
    logits = model(
        input_ids=tok[:, None], attention_mask=attn, position_ids=pos, **{model_lib.CACHE: cache}, use_cache=True
    ).logits[:, -1, :]
    return _pick(logits, temperature, top_p, noise)


def _gqa_sdpa(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, position_bias=None, **kwargs
):
    """transformers' sdpa attention, except for a decode step of a grouped-query model: query (B, H, 1, D),
    key/value (B, Hkv, L, D), mask (B, 1, 1, L) -> (B, 1, H, D), None.

    With a mask (left padding, a static cache's unwritten columns) transformers copies every KV head
    to its H/Hkv query heads before calling SDPA: on Qwen2.5-0.5B (14 heads, 2 KV heads) that copy is
    7x the cache's bytes, per layer per token, and decoding spends most of its time in it (on an H100,
    ``benchmarks/grpo_throughput.py --workload qwen05b --compile`` sampled 17,800 tokens/s with the
    copy, 54,900 without). SDPA's enable_gqa reads the cache once, on the backends that take a mask
    with it (cuDNN on a GPU, flash on the CPU)."""
    if query.shape[2] != 1 or getattr(module, "num_key_value_groups", 1) == 1 or position_bias is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            position_bias=position_bias,
            **kwargs,
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


def _fused_gqa_decode(model) -> bool:
    """Whether to decode with ``_gqa_sdpa``: the model runs transformers' sdpa with grouped KV heads, and a
    fused SDPA kernel on its device takes a mask with enable_gqa (otherwise PyTorch would fall back to
    its unfused math kernel, slower than the copy). Registers the implementation with transformers."""
    cfg = model.config
    heads, kv_heads = getattr(cfg, "num_attention_heads", 0), getattr(cfg, "num_key_value_heads", 0)
    if cfg._attn_implementation != "sdpa" or not kv_heads or heads == kv_heads:
        return False
    if not hasattr(model, "set_attn_implementation"):  # transformers before 4.56: no switching at run time
        return False
    p = next(model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    if not _fused_sdpa_takes_gqa_mask(p.device.type, p.dtype, heads, kv_heads, head_dim):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(GQA_DECODE, _gqa_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GQA_DECODE, sdpa_mask)  # the same masks as sdpa
    return True


@functools.cache
def _fused_sdpa_takes_gqa_mask(device: str, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int) -> bool:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, heads, 1, head_dim, device=device, dtype=dtype)
    kv = torch.randn(2, kv_heads, 8, head_dim, device=device, dtype=dtype)
    mask = torch.ones(2, 1, 1, 8, dtype=torch.bool, device=device)
    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(q, kv, kv, attn_mask=mask, enable_gqa=True)
        return True
    except RuntimeError:
        return False


def _pick(logits, temperature, top_p, noise):
    """(B, V) logits -> token (B,), its log-probability under softmax(logits / T) (B,); no host sync.

    temperature 0: greedy (the logprob is at T=1). Otherwise a sample from the top-p renormalised
    distribution: argmax(probs / noise) with noise ~ Exp(1) (B, V) is exactly what torch.multinomial
    does for one sample, minus its validity check that waits for the device."""
    logits = logits.float()
    if temperature == 0:
        logp = logits.log_softmax(-1)
        tok = logits.argmax(-1)
    else:
        logp = (logits / temperature).log_softmax(-1)
        probs = logp.exp()
        if top_p < 1.0:
            probs = _top_p(probs, top_p)
        tok = (probs / noise).argmax(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero out the tail beyond cumulative probability top_p (nucleus sampling); (B, V) -> (B, V)."""
    sorted_p, idx = probs.sort(-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the token that crosses top_p
    return torch.zeros_like(probs).scatter(-1, idx, sorted_p.masked_fill(drop, 0.0))  # masked_fill: no host sync


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    ids = ids if isinstance(ids, list) else ([ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model has no EOS token (generation_config.eos_token_id or tokenizer.eos_token)")
    return ids


def make_sampler(sampler_cfg, model_cfg, model, tokenizer, seed: int = 0):
    """The sampler ``sampler_cfg.backend`` names: ``hf`` generates with ``model`` itself, ``vllm`` loads its
    own engine from ``model_cfg.path`` (and is fed the learner's weights after every step)."""
    if sampler_cfg.backend == "hf":
        return HFSampler(model, tokenizer, batch_seqs=sampler_cfg.batch_seqs, compile=sampler_cfg.compile)
    from rlvr.vllm_sampler import VLLMSampler

    return VLLMSampler(model_cfg, sampler_cfg, seed=seed)
