"""The sampler-learner boundary: what a sampler returns (``Rollout``), what the learner trains on
(``Batch``), and the ``Sampler`` protocol both backends (``rlvr.sampler``, ``rlvr.vllm_sampler``) follow.

Rows come group by group: prompt i's ``group_size`` samples are rows ``i * group_size`` to
``i * group_size + group_size - 1``. The learner trains on exactly the token ids the sampler produced;
nothing is re-tokenised between the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Protocol

import torch


@dataclass
class Rollout:
    """Completions for a batch of prompts, group by group."""

    prompt_ids: list[list[int]]  # (B,) one per completion
    completion_ids: list[list[int]]  # (B,) generated tokens, EOS included when generated
    texts: list[str]  # (B,) decoded completions, special tokens removed
    logprobs: list[list[float]]  # (B,) sampler log-probability of each completion token
    truncated: list[bool] = field(default_factory=list)  # (B,) stopped by max_new_tokens, not EOS
    # (B,) per completion token: 1 where the loss counts, 0 where it does not (e.g. a tool's output
    # inside a multi-turn completion). Empty: every completion token counts.
    loss_mask: list[list[float]] = field(default_factory=list)
    # (B,) the policy version (learner steps taken) of the weights that sampled each completion; empty: the
    # learner's current one (the colocated loop). Set by the asynchronous sampler (rlvr.async_sampler).
    versions: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    @staticmethod
    def concat(parts: list[Rollout]) -> Rollout:
        masked = any(p.loss_mask for p in parts)
        return Rollout(**{f.name: sum((_column(p, f.name, masked) for p in parts), []) for f in fields(Rollout)})

    def select(self, rows: list[int]) -> Rollout:
        return Rollout(
            **{
                f.name: [getattr(self, f.name)[i] for i in rows] if getattr(self, f.name) else []
                for f in fields(Rollout)
            }
        )


def _column(part: Rollout, name: str, masked: bool) -> list:
    if name == "loss_mask" and masked and not part.loss_mask:  # a part without one counts every token
        return [[1.0] * len(c) for c in part.completion_ids]
    return getattr(part, name)


@dataclass
class Batch:
    """A scored rollout ready for the learner."""

    rollout: Rollout
    rewards: torch.Tensor  # (B,) one per sequence; the learner turns them into advantages (rlvr.algos.ADVANTAGES)
    group_size: int  # samples per prompt: rows come in groups of this many

    def __len__(self) -> int:
        return len(self.rollout)

    def token_mask(self) -> torch.Tensor:
        """(B, Tc) float: 1.0 on completion tokens the loss counts (``Rollout.loss_mask``), 0 on padding."""
        ro = self.rollout
        width = max(map(len, ro.completion_ids))
        mask = torch.zeros(len(ro), width)
        for i, c in enumerate(ro.completion_ids):
            mask[i, : len(c)] = torch.tensor(ro.loss_mask[i]) if ro.loss_mask else 1.0
        return mask

    def sampler_logprobs(self) -> torch.Tensor:
        """(B, Tc): the sampler's log-probability of completion token j in column j, 0 on padding."""
        ro = self.rollout
        out = torch.zeros(len(ro), max(map(len, ro.completion_ids)))
        for i, lp in enumerate(ro.logprobs):
            out[i, : len(lp)] = torch.tensor(lp)
        return out


class Sampler(Protocol):
    """A sampler generates with (a copy of) the learner's weights; ``update_weights`` after every
    optimizer step keeps it in step; ``sleep``/``wake`` free accelerator memory while the learner steps."""

    pad_id: int

    def generate(
        self,
        prompts: list[list[int]],
        samples_per_prompt: int,
        *,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> Rollout:
        """``samples_per_prompt`` completions of each prompt (token ids); temperature 0 means greedy."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load the learner's new weights (names as in the HF state dict)."""

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        """Each completion token's log-probability (T=1) after its prompt, under the sampler's weights."""

    def sleep(self) -> None: ...

    def wake(self) -> None: ...
