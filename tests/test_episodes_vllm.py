"""Multi-turn episodes on the vLLM sampler: token in, token out over several turns, with a two-marker stop.

    python -m pytest tests/test_episodes_vllm.py       # ~1 min on 2 CPU cores (the engine's start is most of it)

Skipped when vllm is not importable (see tests/test_vllm_sampler.py).
"""

import pytest
import torch

try:
    import rlvr.vllm_sampler  # noqa: F401, I001  (sets the engine's environment before vllm loads)
    import vllm  # noqa: F401
except Exception as e:  # ImportError, or a vllm build that fails to load beside this torch
    pytest.skip(f"vllm is not importable ({type(e).__name__}: {e})", allow_module_level=True)

from conftest import TINY_MODEL
from test_episodes import Recording, Tags, assert_token_exact, tiny_setup

from rlvr import episodes
from rlvr.config import ModelConfig, SamplerConfig
from rlvr.episodes import Stop
from rlvr.sampler import HFSampler
from rlvr.vllm_sampler import VLLMSampler


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup()


@pytest.fixture(scope="module")
def engine():
    sampler = VLLMSampler(ModelConfig(path=str(TINY_MODEL)), SamplerConfig(backend="vllm"), seed=0)
    yield sampler
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    del sampler.llm
    cleanup_dist_env_and_memory()
    assert not torch.distributed.is_initialized()


class ThinkTags(Tags):
    """Tags, with turns ending at the first "<" after "think": a stop string that vLLM would otherwise hit at
    the "<" opening "<think>" (and never hits inside a prompt or an earlier turn)."""

    stop = Stop("<", "think")


def test_vllm_turns_are_token_exact_and_stop_where_the_hf_sampler_does(engine, tiny):
    _, tok, problems, prompts = tiny
    rec = Recording(engine)
    kw = dict(temperature=1.0, max_new_tokens=48, max_turns=4, seed=3)
    eps = episodes.generate(rec, ThinkTags, problems, prompts, 4, **kw)
    assert max(eps.turns) >= 3 and sum(eps.tool_calls) >= 8
    # one request per episode: a group's first turns (one prefix) must still be different samples
    first = rec.calls[0][1].completion_ids
    assert sum(len({tuple(c) for c in first[i : i + 4]}) > 1 for i in range(0, len(first), 4)) >= 3
    assert_token_exact(eps, rec.calls, tok, lambda k, text: f"/{k}>")
    # each turn ends right after its first "<" that follows a "think", or at EOS, or at its limit
    decode, ended = lambda ids: tok.decode(ids, skip_special_tokens=True), 0
    for _, ro in rec.calls:
        for ids, cut in zip(ro.completion_ids, ro.truncated):
            by_stop = not cut and ids[-1] != tok.eos_token_id
            assert ThinkTags.stop.end(ids, decode) == (len(ids) if by_stop else None)
            ended += by_stop
    assert ended >= 8
    # greedy: the same turns as the hf sampler (the two backends' logits differ by rounding only)
    model, _, _, _ = tiny
    greedy = dict(kw, temperature=0.0)
    a = episodes.generate(engine, ThinkTags, problems, prompts, 1, **greedy)
    b = episodes.generate(HFSampler(model, tok), ThinkTags, problems, prompts, 1, **greedy)
    assert a.rollout.completion_ids == b.rollout.completion_ids and a.rollout.loss_mask == b.rollout.loss_mask
