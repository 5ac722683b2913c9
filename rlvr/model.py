"""Load policy, reference and tokenizer; compute the learner's per-token log-probabilities.

Models are ordinary transformers causal LMs in HF format: the shipped tiny model, any local
checkpoint (ours included), or a hub id for users online.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import BaseModelOutputWithPast

from rlvr import algos, dist

# Completion tokens per LM-head chunk. One chunk's logits and its fp32 softmax buffers (~14 bytes x
# chunk x V: 2 GB at 1024 x Qwen2.5's 151,936) are all of the vocabulary-sized memory the learner holds.
HEAD_CHUNK_TOKENS = 1024
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The KV cache's name, as a forward's argument and output field: transformers 5.24 renamed `past_key_values`
# to `cache` and warns on the old name; earlier releases know only the old one.
CACHE = "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"


class ModelError(ValueError):
    pass


def load(cfg, device: str | torch.device | None = None, chat_template: str = ""):
    """cfg: ModelConfig -> (model, tokenizer), on ``device`` (default: this rank's GPU, else the CPU).
    ``chat_template`` (``data.chat_template``) is installed where the tokenizer has none; it is saved with
    every checkpoint, so later stages render chats the same way."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = cfg.path
    local = Path(path).expanduser()
    if not local.exists() and (path.startswith((".", "/", "~")) or path.count("/") != 1):
        raise ModelError(
            f"model.path {path!r} does not exist. Give a local HF-format directory (e.g. rlvr/tiny/model, "
            f"relative to where you run) or a hub id like Qwen/Qwen2.5-0.5B"
        )
    if local.exists() and not (local / "config.json").is_file():
        raise ModelError(f"model.path {path!r} has no config.json: not a saved HF model (save_pretrained) directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(local) if local.exists() else path, trust_remote_code=cfg.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(local) if local.exists() else path,
            dtype=DTYPES[cfg.dtype],
            attn_implementation=cfg.attn_implementation,
            trust_remote_code=cfg.trust_remote_code,
        )
    except OSError as e:
        raise ModelError(f"could not load model {path!r}: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora.r:
        model = with_lora(model, cfg.lora)
    return model.to(device if device is not None else dist.device()), tokenizer


def with_lora(model, lora):
    """model -> a peft model whose LoRA adapters (``lora``: ``config.LoraConfig``) alone train, the base frozen:
    fresh ones (B = 0, so it starts as the base model), or those saved in ``lora.adapter`` (a resumed run's)."""
    import peft

    if lora.adapter:
        saved = peft.PeftConfig.from_pretrained(lora.adapter)
        if (saved.r, saved.lora_alpha) != (lora.r, lora.alpha):
            raise ModelError(
                f"model.lora.adapter {lora.adapter!r} was saved with r={saved.r}, alpha={saved.lora_alpha}, not the "
                f"r={lora.r}, alpha={lora.alpha} of model.lora: set those to the adapter's"
            )
        return peft.PeftModel.from_pretrained(model, lora.adapter, is_trainable=True)
    cfg = peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, cfg)


def is_lora(model) -> bool:
    """Whether ``model`` is a peft model (``with_lora``); peft is not imported for a plain one."""
    return "peft" in sys.modules and isinstance(model, sys.modules["peft"].PeftModel)


@contextmanager
def adapters_off(model):
    """A LoRA policy as its base model, the KL reference (no second copy): adapters disabled, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            yield model
    finally:
        model.train(was_training)


def load_scorer(path: str, dtype: str = "float32", chat_template: str = ""):
    """A scalar-head model (``AutoModelForSequenceClassification`` with one label) -> (model, tokenizer): a reward
    model, a critic, or a causal LM's body that gets a new head to train. The head reads the last non-pad token
    when scoring a text (``rlvr.reward_model.scores``), every position when valuing tokens (``completion_values``)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not (Path(path).expanduser() / "config.json").is_file() and (
        path.startswith((".", "/", "~")) or path.count("/") != 1
    ):
        raise ModelError(f"scorer {path!r} is not a saved HF model directory (no config.json) nor a hub id")
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=DTYPES[dtype])
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load {path!r} as a sequence classifier: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    if chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = chat_template
    return model.to(dist.device()), tok  # this rank's GPU, else the CPU


def completion_values(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> torch.Tensor:
    """A critic's value of the state before each completion token -> values (B, Tc), fp32, 0 on padding.

    Column j is read where the policy's log-prob of completion token j is (the hidden state of the token
    before it), so values and log-probs line up token for token; the scalar head runs on those positions only."""
    ids, attn, mask = pad_batch(prompts, completions, pad_id)
    device = next(model.parameters()).device
    hidden = model.base_model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False)
    Tc = max(1, *map(len, completions))
    cols = torch.tensor([len(p) - 1 for p in prompts])[:, None] + torch.arange(Tc)  # (B, Tc)
    cmask = torch.tensor([[1.0] * len(c) + [0.0] * (Tc - len(c)) for c in completions], device=device)
    cols = cols.clamp(max=ids.shape[1] - 1).to(device)
    h = hidden.last_hidden_state.gather(1, cols[..., None].expand(-1, -1, hidden.last_hidden_state.shape[-1]))
    head = getattr(model, "score", None) or model.classifier  # (H -> 1) in every sequence classifier we know
    return head(h).squeeze(-1).float() * cmask


def pad_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int):
    """Right-padded prompt+completion rows -> input_ids (B, L), attention (B, L), completion mask (B, L).
    The mask marks the positions of completion tokens (the targets the loss and ratio use)."""
    L = max(len(p) + len(c) for p, c in zip(prompts, completions))
    B = len(prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    mask = torch.zeros((B, L))
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attn[i, : len(p) + len(c)] = 1
        mask[i, len(p) : len(p) + len(c)] = 1.0
    return ids, attn, mask


def left_pad(rows: list[list[int]], pad_id: int, width: int | None = None, device=None):
    """Token rows -> ids (R, W), attention (R, W), position ids (R, W), left-padded to ``width`` (default: the
    longest row), so every row's last token sits in the last column: its next token, or its score, is
    read at the same column for all rows."""
    W = width or max(map(len, rows))
    ids = torch.full((len(rows), W), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), W), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, W - len(r) :] = torch.tensor(r)
        attn[i, W - len(r) :] = 1
    ids, attn = ids.to(device), attn.to(device)
    return ids, attn, (attn.cumsum(-1) - 1).clamp(min=0)


def completion_logprobs(
    model,
    ids: torch.Tensor,
    attn: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int | None = None,
):
    """Log-probabilities of each target token: -> logp (B, L-1), mask (B, L-1)[, entropy (B, L-1)].

    Position t of the outputs scores token t+1 of ``ids``. Only completion positions go through the
    LM head, so a 150k vocabulary does not materialise logits for the prompt too, and those in chunks
    of ``chunk_tokens`` (see ``head_logprobs``). The entropy is differentiable (``rl.entropy_coef``)."""
    out = model.get_decoder()(input_ids=ids, attention_mask=attn, use_cache=False)
    hidden = out.last_hidden_state[:, :-1]  # (B, L-1, H)
    target_mask = mask[:, 1:]  # (B, L-1)
    sel = target_mask.bool()
    outs = head_logprobs(model, hidden[sel], ids[:, 1:][sel], temperature, with_entropy, chunk_tokens)
    return scatter_tokens(outs, sel, target_mask)


def packed_completion_logprobs(
    model,
    ids: torch.Tensor,
    attn: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int | None = None,
):
    """``rlvr.model.completion_logprobs`` without padding: same inputs (right-padded rows from
    ``pad_batch``), same outputs -> logp (B, L-1), mask (B, L-1)[, entropy (B, L-1)].

    The rows' real tokens are concatenated into one (1, N) row with position ids restarting per
    sequence and no attention mask, which transformers reads as packed sequences (varlen for
    flash-attention, a block-diagonal causal mask for sdpa/eager). With flash-attention no compute
    goes to padding; under sdpa it is exact but attends over the whole row."""
    lengths = attn.sum(-1)  # right padding: a row's tokens are its first `length` columns
    B, L = ids.shape
    keep = attn.bool()
    flat_ids = ids[keep][None]  # (1, N) row-major, so each sequence stays contiguous
    pos = (torch.arange(L, device=ids.device).expand(B, L))[keep][None]
    out = model.get_decoder()(input_ids=flat_ids, position_ids=pos, use_cache=False)
    hidden = out.last_hidden_state[0]  # (N, H)
    # Position t of the outputs scores token t+1, so target j of a row is predicted by hidden j-1.
    target_mask = mask[:, 1:]
    sel = target_mask.bool() & keep[:, :-1]
    starts = torch.cumsum(lengths, 0) - lengths  # flat offset of each row's first token
    rows, cols = sel.nonzero(as_tuple=True)
    outs = head_logprobs(model, hidden[starts[rows] + cols], ids[:, 1:][sel], temperature, with_entropy, chunk_tokens)
    return scatter_tokens(outs, sel, target_mask)


def grouped_logprobs(
    model,
    prompts: list[list[int]],
    completions: list[list[int]],
    group_size: int,
    pad_id: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int | None = None,
    padding_free: bool = False,
    share_prompt: bool = True,
):
    """Log-probabilities of completion tokens -> logp (B, Tc), mask (B, Tc)[, entropy (B, Tc)].

    Rows come in groups of ``group_size`` completions of one prompt (GRPO's layout). Each prompt runs
    through the model once and its KV cache serves the whole group, so a long prompt costs one forward
    instead of G; gradients from all G samples flow back through the shared prompt activations.
    Column j scores completion token j; ``chunk_tokens`` as in ``completion_logprobs``. With
    ``padding_free`` every row runs whole, prompt included, through ``packed_completion_logprobs``
    (all rows in one padding-free row), and so do they, padded, through ``completion_logprobs`` under
    gradient checkpointing, which turns the cache off in transformers, or without ``share_prompt``
    (one decoder pass instead of two: fewer kernel launches, which wins where prompts are short)."""
    device = next(model.parameters()).device
    B, G = len(completions), group_size
    Tc = max(1, *map(len, completions))  # one all-masked column when every completion is empty
    comp = torch.full((B, Tc), pad_id, dtype=torch.long)
    cmask = torch.zeros((B, Tc))
    for i, c in enumerate(completions):
        comp[i, : len(c)] = torch.tensor(c)
        cmask[i, : len(c)] = 1.0
    comp, cmask = comp.to(device), cmask.to(device)
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.23's name
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if padding_free or checkpointing or not share_prompt:
        ids, attn, mask = pad_batch(prompts, completions, pad_id)
        whole = packed_completion_logprobs if padding_free else completion_logprobs
        out = whole(model, ids.to(device), attn.to(device), mask.to(device), temperature, with_entropy, chunk_tokens)
        cols = torch.tensor([len(p) - 1 for p in prompts], device=device)[:, None] + torch.arange(Tc, device=device)
        cols = cols.clamp(max=out[0].shape[1] - 1)
        realigned = [t.gather(1, cols) * cmask for t in (out[0],) + out[2:]]
        return (realigned[0], cmask, *realigned[1:])

    ids, attn, pos = left_pad(prompts[::G], pad_id, device=device)  # every prompt ends at the same column
    decoder = model.get_decoder()
    out = decoder(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
    cache, hidden = getattr(out, CACHE), out.last_hidden_state[:, -1:]  # (U, 1, H) scores completion token 0
    if G > 1:
        cache.batch_repeat_interleave(G)
        hidden, attn, pos = (t.repeat_interleave(G, dim=0) for t in (hidden, attn, pos))
    if Tc > 1:
        out = decoder(
            input_ids=comp[:, :-1],
            attention_mask=torch.cat([attn, cmask[:, :-1].long()], 1),
            position_ids=pos[:, -1:] + 1 + torch.arange(Tc - 1, device=device),
            **{CACHE: cache},
            use_cache=True,
        )
        hidden = torch.cat([hidden, out.last_hidden_state], 1)  # (B, Tc, H)
    sel = cmask.bool()
    return scatter_tokens(
        head_logprobs(model, hidden[sel], comp[sel], temperature, with_entropy, chunk_tokens), sel, cmask
    )


def nll_sum(model, ids, attn, pos, mask) -> tuple[torch.Tensor, float]:
    """Summed negative log-likelihood of the masked target tokens, and their count. Only target
    positions go through the LM head, a chunk of them at a time (large vocabularies)."""
    device = next(model.parameters()).device  # ZeRO moves the model to the rank's GPU
    ids, pos, mask = ids.to(device), pos.to(device), mask.to(device)
    attn = attn if attn is None else attn.to(device)
    hidden = model.get_decoder()(
        input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False
    ).last_hidden_state
    sel = mask[:, 1:].bool()
    logp, _ = head_logprobs(model, hidden[:, :-1][sel], ids[:, 1:][sel])
    return -logp.sum(), float(sel.sum())


def head_logprobs(
    model,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int | None = None,
):
    """hidden (N, H) predicting targets (N,) -> logp (N,), entropy (N,) or None, through the LM head.

    ``chunk_tokens`` rows at a time (default ``HEAD_CHUNK_TOKENS``; 0: all N at once). With gradients
    on, each chunk runs under activation checkpointing: its (chunk, V) logits are freed after the
    forward and recomputed in the backward, so no more than one chunk's exist at a time instead of
    N x V (64k tokens x 151,936 is 20 GB in bf16). Gradients reach the hidden states and the head's
    weight (tied to the input embedding or not) through the head module itself, so DeepSpeed ZeRO-3's
    parameter gathering and any wrapper of the head still apply. The entropy is differentiable; it
    costs nothing in the backward unless the loss uses it."""
    head = model.get_output_embeddings()

    def chunk(h, t):  # (C, H), (C,) -> logp (C,), entropy (C,) or None
        return algos.token_logprobs_entropy(head(h), t, temperature, with_entropy)

    size = HEAD_CHUNK_TOKENS if chunk_tokens is None else chunk_tokens
    n = max(math.ceil(len(hidden) / size), 1) if size else 1
    if hasattr(head.weight, "ds_id"):  # ZeRO-3: each head call (and recompute) gathers the weight, a collective
        n = int(dist.global_max(n))  # that every rank must join as often, however many tokens it holds
    # One chunk gains nothing from recomputing: its logits live from the forward into the backward either way.
    recompute = torch.is_grad_enabled() and n > 1
    outs = [
        checkpoint(chunk, h, t, use_reentrant=False, preserve_rng_state=False) if recompute else chunk(h, t)
        for h, t in zip(hidden.tensor_split(n), targets.tensor_split(n))
    ]  # the head draws no random numbers
    logp = torch.cat([o[0] for o in outs])
    return logp, (torch.cat([o[1] for o in outs]) if with_entropy else None)


def scatter_tokens(outs, sel: torch.Tensor, mask: torch.Tensor):
    """(logp (N,), entropy (N,) or None) at the N True positions of sel (B, T)
    -> logp (B, T), mask[, entropy (B, T)], zero elsewhere."""
    full = [
        torch.zeros(sel.shape, dtype=t.dtype, device=t.device).masked_scatter(sel, t) for t in outs if t is not None
    ]
    return (full[0], mask, *full[1:])
