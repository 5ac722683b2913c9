"""The hf sampler's static-shape decode path (sampler.compile) against the dynamic path and the learner."""

import functools
import json

import pytest
import torch
from conftest import TINY_DATA, TINY_MODEL, assert_close_norm
from test_packing import fp32_rel
from torch._dynamo.utils import counters

from rlvr import model as model_lib
from rlvr.config import ModelConfig
from rlvr.sampler import HFSampler, _static_step
from rlvr.templates import R1_ZERO


@pytest.fixture(scope="module")
def tiny():
    model, tok = model_lib.load(ModelConfig(path=str(TINY_MODEL)))
    rows = [json.loads(line) for line in open(TINY_DATA / "test.jsonl")][:9]
    texts = [R1_ZERO.format(question=rows[i]["question"]) for i in (0, 1, 8, 3)]
    texts.insert(3, f"User: {rows[2]['question']} Assistant:")
    prompts = [tok(t)["input_ids"] for t in texts]
    assert len(set(map(len, prompts))) == 4  # lengths differ: left padding and per-row positions matter
    return model, tok, prompts


def same(a, b, exact=False, atol=None):
    """The same samples, with log-probs bit for bit (exact) or within one fp32 forward's rounding
    (atol: elementwise, the CUDA test's bound, not yet re-derived on a GPU)."""
    assert a.prompt_ids == b.prompt_ids and a.completion_ids == b.completion_ids
    assert a.texts == b.texts and a.truncated == b.truncated
    if exact:
        assert a.logprobs == b.logprobs
    elif atol is not None:
        for x, y in zip(a.logprobs, b.logprobs):
            assert torch.allclose(torch.tensor(x), torch.tensor(y), atol=atol)
    else:
        assert_close_norm(flat(a.logprobs), flat(b.logprobs), rollout_rel(a), "log-probs")


def static_sampler(model, tok, batch_seqs: int) -> HFSampler:
    """The static-shape decode of ``sampler.compile`` with its token step left eager (compiling takes minutes
    on a CPU; the compiled path has its own, slow, test)."""
    s = HFSampler(model, tok, batch_seqs=batch_seqs, compile=True)
    s._step = _static_step
    return s


def flat(logprobs) -> list[float]:
    return [x for row in logprobs for x in row]


def rollout_rel(ro) -> float:
    """Another cache layout or kernel rounds a token's log-prob anew: it attends over its row and runs the MLPs
    (per rollout, not per row: a row of confident tokens has log-probs near 0 but its logits' rounding)."""
    return fp32_rel(max(len(p) + len(c) for p, c in zip(ro.prompt_ids, ro.completion_ids)))


def learners_logprobs(ro, logp):
    """The sampler's log-probs of a rollout against the learner's, logp (B, >= T) from grouped_logprobs."""
    assert_close_norm(
        flat(ro.logprobs),
        flat(row[: len(lp)].tolist() for row, lp in zip(logp, ro.logprobs)),
        rollout_rel(ro),
        "sampler vs learner log-probs",
    )


@pytest.mark.parametrize("n, batch_seqs", [(1, 8), (2, 4)])  # padding rows in every chunk; several chunks
def test_static_greedy_equals_dynamic(tiny, n, batch_seqs):
    model, tok, prompts = tiny
    kw = dict(temperature=0.0, max_new_tokens=40)
    dyn = HFSampler(model, tok, batch_seqs=batch_seqs).generate(prompts, n, **kw)
    static = static_sampler(model, tok, batch_seqs).generate(prompts, n, **kw)
    same(dyn, static)
    assert any(dyn.truncated) and not all(dyn.truncated)  # both the EOS cut and the max_new_tokens stop


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_static_samples_carry_the_learners_logprobs(tiny, temperature, top_p):
    model, tok, prompts = tiny
    n = 3
    s = static_sampler(model, tok, 8)  # chunks of 2 prompts: the last is padded
    ro = s.generate(prompts, n, temperature=temperature, top_p=top_p, max_new_tokens=40, seed=7)
    assert ro.prompt_ids == [p for p in prompts for _ in range(n)]  # group order: prompt i's rows i*n .. i*n+n-1
    assert len(set(map(tuple, ro.completion_ids))) > len(prompts)  # it sampled, not one answer per prompt
    for ids, truncated in zip(ro.completion_ids, ro.truncated):
        assert truncated == (ids[-1] not in s.eos_ids) and not set(ids[:-1]) & s.eos_ids
    with torch.no_grad():
        logp, mask = model_lib.grouped_logprobs(model, ro.prompt_ids, ro.completion_ids, n, s.pad_id, temperature)
    assert [int(m.sum()) for m in mask] == list(map(len, ro.logprobs))
    learners_logprobs(ro, logp)
    again = s.generate(prompts, n, temperature=temperature, top_p=top_p, max_new_tokens=40, seed=7)
    same(ro, again, exact=True)  # the same computation: deterministic


def test_full_chunk_samples_exactly_what_the_dynamic_path_samples(tiny):
    """Without padding rows both paths draw the same noise, so the same seed gives the same samples."""
    model, tok, prompts = tiny
    kw = dict(temperature=1.0, max_new_tokens=40, seed=3)
    same(
        HFSampler(model, tok, batch_seqs=10).generate(prompts, 2, **kw),
        static_sampler(model, tok, 10).generate(prompts, 2, **kw),
    )


def test_compiled_step_is_one_graph_and_fewer_prompts_do_not_recompile(tiny, monkeypatch):
    """Dynamo's capture on the eager backend (seconds; inductor itself is the slow test below)."""
    model, tok, prompts = tiny
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    s = HFSampler(model, tok, batch_seqs=8, compile=True)
    ro = s.generate(prompts[:4], 2, temperature=1.0, max_new_tokens=24, seed=1)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    fewer = s.generate(prompts[2:3], 2, temperature=1.0, max_new_tokens=24, seed=1)  # 1 prompt, padded to 4
    assert counters["stats"]["unique_graphs"] == 1
    assert len(fewer) == 2 and fewer.prompt_ids == [prompts[2]] * 2
    same(ro, static_sampler(model, tok, 8).generate(prompts[:4], 2, temperature=1.0, max_new_tokens=24, seed=1))


def test_more_shapes_than_dynamos_default_limit_all_stay_compiled(tiny, monkeypatch):
    """Each (rows, prompt bucket + max_new_tokens) is its own graph; a long run with evals and prompt
    buckets can pass dynamo's default of 8 per function, past which the step would run uncompiled."""
    model, tok, prompts = tiny
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    s = HFSampler(model, tok, batch_seqs=2, compile=True)
    for max_new_tokens in range(2, 14):  # 12 cache lengths
        s.generate(prompts[:1], 2, temperature=1.0, max_new_tokens=max_new_tokens, seed=0)
    assert counters["stats"]["unique_graphs"] == 12


def test_grouped_query_models_decode_without_copying_kv_heads(tiny, monkeypatch):
    """A GQA model (2 KV heads for 4 query heads) decodes through SDPA's enable_gqa instead of transformers'
    per-head KV copy, on both paths, and still samples with exactly the learner's log-probabilities."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _, tok, prompts = tiny
    cfg = AutoConfig.from_pretrained(TINY_MODEL)
    cfg.num_key_value_heads = 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional,
        "scaled_dot_product_attention",
        lambda q, k, v, **kw: calls.append((q.shape[2], kw.get("enable_gqa", False))) or sdpa(q, k, v, **kw),
    )
    kw = dict(temperature=1.0, max_new_tokens=24, seed=5)
    dyn, static = HFSampler(model, tok, batch_seqs=10), static_sampler(model, tok, 4)
    for s in (dyn, static):
        calls.clear()
        ro = s.generate(prompts, 2, **kw)
        assert model.config._attn_implementation == "sdpa"  # the learner's attention is back
        decode = [gqa for q_len, gqa in calls if q_len == 1]
        assert decode and all(decode)  # every decode step's attention took the grouped path
        assert not any(gqa for q_len, gqa in calls if q_len > 1)  # the prefill kept transformers' own
        with torch.no_grad():
            logp, _ = model_lib.grouped_logprobs(model, ro.prompt_ids, ro.completion_ids, 2, s.pad_id, 1.0)
        learners_logprobs(ro, logp)
    greedy = dict(temperature=0.0, max_new_tokens=24)
    same(dyn.generate(prompts, 1, **greedy), static.generate(prompts, 1, **greedy))


@pytest.mark.slow
def test_inductor_compiled_path_matches_the_uncompiled_static_path(tiny):
    """torch.compile with inductor (C++ on CPU): about two minutes cold on 2 cores, seconds with its disk cache."""
    model, tok, prompts = tiny
    torch._dynamo.reset()
    compiled = HFSampler(model, tok, batch_seqs=4, compile=True)
    static = static_sampler(model, tok, 4)
    for temperature in (0.0, 1.0):
        kw = dict(temperature=temperature, max_new_tokens=40, seed=2)
        same(compiled.generate(prompts, 2, **kw), static.generate(prompts, 2, **kw))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_path_matches_dynamic_and_the_learner():
    """The same checks on a GPU, where compile means CUDA graphs (mode reduce-overhead)."""
    model, tok = model_lib.load(ModelConfig(path=str(TINY_MODEL)), "cuda")
    rows = [json.loads(line) for line in open(TINY_DATA / "test.jsonl")][:6]
    prompts = [tok(R1_ZERO.format(question=r["question"]))["input_ids"] for r in rows]
    torch._dynamo.reset()
    counters.clear()
    s = HFSampler(model, tok, batch_seqs=12, compile=True)
    same(
        HFSampler(model, tok, batch_seqs=12).generate(prompts, 2, temperature=0.0, max_new_tokens=40),
        s.generate(prompts, 2, temperature=0.0, max_new_tokens=40),
        atol=1e-4,
    )
    ro = s.generate(prompts, 4, temperature=1.0, max_new_tokens=40, seed=1)
    graphs = counters["stats"]["unique_graphs"]
    s.generate(prompts[:2], 4, temperature=1.0, max_new_tokens=40, seed=1)
    assert counters["stats"]["unique_graphs"] == graphs
    assert counters["inductor"]["cudagraph_skips"] == 0  # the step replays as a CUDA graph, not as plain kernels
    with torch.no_grad():
        logp, _ = model_lib.grouped_logprobs(model, ro.prompt_ids, ro.completion_ids, 4, s.pad_id, 1.0)
    for i, lp in enumerate(ro.logprobs):
        assert torch.allclose(logp[i, : len(lp)].cpu(), torch.tensor(lp), atol=1e-3)
