"""Reward functions ("verifiers") and their registry.

A verifier is a plain function ``(completion: str, answer: str, **meta) -> float`` registered by
name. A recipe names verifiers with weights:

    rewards:
      - {verifier: math, weight: 1.0}
      - {verifier: format, weight: 0.5}
      - {verifier: my_rewards.py:brevity, weight: 0.1}     # a function in your own file

``get(spec)`` resolves a registered name, ``path/to/file.py:func`` or ``package.module:func``.
``score_batch`` is what the learner calls: it runs a verifier over a batch and returns one
``float | None`` per completion, ``None`` meaning the verifier raised or ran past its time bound
(the learner turns that into reward 0 and counts it). A verifier module may register its own batch
entry point (``register(name, batch=...)``); any other verifier runs in ``verifiers.pool``, whose
worker processes are killed when a call overruns, so no verifier can stall training.

This package never imports torch: it runs in light worker processes.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Verifier = Callable[..., float]
# batch(completions, answers, metas, *, timeout_s, workers=None[, errors=None]) -> one reward per
# completion, None on failure; ``errors``, when accepted and given a list, gets (index, message) per failure.
BatchVerifier = Callable[..., list]

_REGISTRY: dict[str, Verifier] = {}
_BATCH: dict[str, BatchVerifier] = {}
_BATCH_KEYWORDS: dict[str, frozenset | None] = {}  # the optional keywords a batch entry takes; None: any
# Built-in verifiers are imported on first use so that `import verifiers` stays cheap.
_BUILTIN_MODULES = {"math": "verifiers.math", "format": "verifiers.format", "code": "verifiers.code"}


def register(name: str, *, batch: BatchVerifier | None = None) -> Callable[[Verifier], Verifier]:
    """Decorator: ``@register("math")`` makes a verifier available to recipes by that name."""

    def wrap(fn: Verifier) -> Verifier:
        _REGISTRY[name] = fn
        if batch is not None:
            _BATCH[name] = batch
            _BATCH_KEYWORDS[name] = _keywords(batch)
        return fn

    return wrap


def _keywords(fn) -> frozenset | None:
    """The keyword arguments ``fn`` accepts (None: any, it has ``**kwargs``)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def names() -> list[str]:
    """Every name a recipe can use without a path (built-ins and anything registered so far)."""
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES))


def _load_file(path: str):
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ValueError(f"verifier file {path!r} does not exist (resolved to {file})")
    mod_name = f"_rlvr_user_{abs(hash(str(file)))}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def get(spec: str) -> Verifier:
    """Resolve a verifier: a registered name, ``file.py:func`` or ``package.module:func``."""
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if spec in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[spec])
        return _REGISTRY[spec]
    if ":" in spec:
        where, _, attr = spec.rpartition(":")
        module = _load_file(where) if where.endswith(".py") else importlib.import_module(where)
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ValueError(f"verifier {spec!r}: {where} has no function {attr!r}")
        return fn
    raise ValueError(
        f"unknown verifier {spec!r}; registered: {', '.join(names())}; "
        "or give a function in your own file as 'path/to/file.py:function'"
    )


def score_batch(
    spec: str,
    completions: Sequence[str],
    answers: Sequence[str],
    metas: Sequence[dict] | None = None,
    *,
    timeout_s: float = 1.0,
    workers: int | None = None,
    errors: list | None = None,
) -> list[float | None]:
    """One reward per completion; ``None`` where the verifier raised or overran ``timeout_s``.

    ``workers``: processes (or sandbox jails) to spread the batch over; None or 0: one per core.
    ``errors``: a list that gets one ``(index, message)`` per failed item: the verifier's traceback
    when it raised, else a one-line reason (timeout, crash, not a number, malformed tests...). A batch
    entry that does not take ``errors`` reports nothing there.
    """
    metas = list(metas) if metas is not None else [{} for _ in completions]
    if not (len(completions) == len(answers) == len(metas)):
        raise ValueError("completions, answers and metas must have the same length")
    get(spec)  # fail fast, in this process, on a bad name
    if spec in _BATCH:
        accepted = _BATCH_KEYWORDS[spec]
        extra = {
            k: v
            for k, v in (("workers", workers), ("errors", errors))
            if v is not None and (accepted is None or k in accepted)
        }
        return _BATCH[spec](list(completions), list(answers), metas, timeout_s=timeout_s, **extra)
    from verifiers import pool

    return pool.run_isolated(spec, completions, answers, metas, timeout_s=timeout_s, workers=workers, errors=errors)
