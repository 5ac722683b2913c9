"""2-process training equals 1-process training: tests/dist_train.py runs under
``torchrun --nproc_per_node 2`` (gloo, CPU) with plain torch and DeepSpeed ZeRO-2 (default suite) and
ZeRO-3 (-m slow), and its per-step global losses, gradient norms and consolidated HF checkpoint are
compared with the same script run in this process at world size 1 with plain torch.

    pytest tests/test_distributed.py             # stages 0 and 2, ~1 min (+30 s once: DeepSpeed JIT-builds its shm op)
    pytest tests/test_distributed.py -m slow     # ZeRO-3

Needs ``pip install -e .[deepspeed]``; a missing DeepSpeed fails here rather than skipping, so CI
cannot go green without testing the distributed learner.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlvr import dist, model as model_lib
from rlvr.config import ConfigError, DeepSpeedConfig, load_config
from rlvr.learner import deepspeed_json

sys.path.insert(0, str(Path(__file__).parent))
import dist_train  # noqa: E402
from conftest import REPO, assert_close_norm, torchrun  # noqa: E402
from test_packing import fp32_rel  # noqa: E402


def _launch(out: Path, stages: str) -> None:
    torchrun(REPO / "tests" / "dist_train.py", out, stages)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    chunk, model_lib.HEAD_CHUNK_TOKENS = model_lib.HEAD_CHUNK_TOKENS, dist_train.HEAD_CHUNK_TOKENS  # as the ranks do
    try:
        return dist_train.train(0, out), out / "hf_stage0"
    finally:
        model_lib.HEAD_CHUNK_TOKENS = chunk


@pytest.fixture(scope="module")
def lora_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_ref")
    chunk, model_lib.HEAD_CHUNK_TOKENS = model_lib.HEAD_CHUNK_TOKENS, dist_train.HEAD_CHUNK_TOKENS
    try:
        return dist_train.train(0, out, lora=True), out / "hf_stage0_lora"
    finally:
        model_lib.HEAD_CHUNK_TOKENS = chunk


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    _launch(out, "0,2,2lora")
    return out


def _weights(path: Path) -> dict:
    from transformers import AutoModelForCausalLM

    return {k: v.detach() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def _check(out: Path, stage: int | str, reference) -> None:
    ref, ref_hf = reference
    got = json.loads((out / f"stage{stage}.json").read_text())
    assert got["world_size"] == 2
    w, w_ref, w0 = (
        _weights(out / f"hf_stage{stage}"),
        _weights(ref_hf),
        _weights(dist_train.REPO / "rlvr" / "tiny" / "model"),
    )
    for i, (a, b) in enumerate(zip(got["losses"], ref["losses"])):
        if i == dist_train.NAN_STEP:  # the poisoned step: skipped by every rank, as by the reference
            assert not math.isfinite(a) and not math.isfinite(b)
            assert not math.isfinite(got["grad_norms"][i]) and not math.isfinite(ref["grad_norms"][i])
            continue
        # Other micro-batch shapes and summation order: the fp32 rounding of the tokens of steps 0..i, which the
        # weights carry (test_packing's bound), relative to the size of the loss's +-A terms and to the gradient;
        # the norm adds its own sum of squares over every weight (ZeRO: partition by partition), eps x sqrt(P).
        rel = fp32_rel(sum(dist_train.fixed_data(j)[0].numel() for j in range(i + 1)))
        assert_close_norm(a, b, rel, f"step {i}: loss (2 ranks, stage {stage} vs 1 rank)", ref["loss_sizes"][i])
        rel += torch.finfo(torch.float32).eps * math.sqrt(sum(t.numel() for t in w_ref.values()))
        assert_close_norm(got["grad_norms"][i], ref["grad_norms"][i], rel, f"step {i}: grad norm, stage {stage}")
    # the same weights, optimizer state and arithmetic on the same ranks: bit for bit
    assert got["resumed"] == got["continued"], "resuming from save_state/load_state diverged"
    assert w.keys() == w_ref.keys()
    # Each tensor's update against the reference's, in norm. A lost micro-batch, a rank training on its own or
    # a tensor left unsynchronised would be off by the order of the update itself; averaging instead of summing
    # over ranks shows in the gradient norms above (Adam itself is blind to the scale). Adam does magnify
    # rounding where a gradient is ~0 (m / sqrt(v)): single elements of ZeRO-3's weights differ by up to ~1e-5,
    # about 1% of the largest update, so an elementwise bound would test the rounding, not the sharding.
    assert max((w_ref[k] - w0[k]).abs().max().item() for k in w) > 1e-4  # training moved the weights
    for k in w:
        assert_close_norm(w[k] - w0[k], w_ref[k] - w0[k], 1e-2, f"stage {stage}: the update of {k}")


def test_two_processes_plain_torch_match_one(two_ranks, reference):
    _check(two_ranks, 0, reference)


def test_two_processes_zero2_match_one(two_ranks, reference):
    _check(two_ranks, 2, reference)


def test_two_processes_zero2_with_lora_match_one(two_ranks, lora_reference):
    """LoRA adapters trained at ZeRO-2 on 2 ranks (only they have gradients and Adam state) against 1 process: the
    same losses, gradient norms and merged updates; the resumed learner (base + saved adapter) continues exactly."""
    _check(two_ranks, "2_lora", lora_reference)
    # only the adapted linears moved; the merged model is plain HF (hf_stage2_lora/adapter holds the adapter)
    w, w0 = _weights(two_ranks / "hf_stage2_lora"), _weights(dist_train.REPO / "rlvr" / "tiny" / "model")
    assert torch.equal(w["model.embed_tokens.weight"], w0["model.embed_tokens.weight"])
    assert not torch.equal(w["model.layers.0.mlp.down_proj.weight"], w0["model.layers.0.mlp.down_proj.weight"])


@pytest.mark.slow
def test_two_processes_zero3_match_one(tmp_path, reference):
    _launch(tmp_path, "3")
    _check(tmp_path, 3, reference)


@pytest.mark.slow
def test_two_processes_zero3_with_lora_match_one(tmp_path, lora_reference):
    """ZeRO-3 shards the frozen base and the adapters alike: the merged sync, the adapter checkpoint and resume
    gather them (rlvr.learner's _merged, _save_adapter)."""
    _launch(tmp_path, "3lora")
    _check(tmp_path, "3_lora", lora_reference)


def test_single_process_is_a_world_of_one():
    assert (dist.world_size(), dist.rank(), dist.is_main()) == (1, 0, True)
    dist.init()  # no launcher: no process group
    assert not torch.distributed.is_initialized()
    t = torch.tensor([1.0, 2.0])
    assert dist.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert dist.global_sum(3) == 3.0
    assert dist.global_max(3) == 3.0
    assert dist.shard(list(range(5))) == [0, 1, 2, 3, 4]
    assert dist.gather_objects({"a": 1}) == [{"a": 1}]
    dist.barrier()


def test_shard_is_rank_strided(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    assert dist.shard(list(range(8))) == [1, 4, 7]
    assert not dist.is_main()


def test_dynamic_sampling_deals_kept_groups_out_evenly(monkeypatch):
    """Rank 0 kept 3 groups of 2, rank 1 none (all its groups had equal rewards): after the deal rank 0
    learns groups 0 and 2, rank 1 group 1, each row still with its own prompt, tokens and reward."""
    from rlvr.rollout import Rollout
    from rlvr.sampling import deal_groups

    def groups(ids):  # a rollout of groups of 2 whose every field names its group and sample
        rows = [(g, j) for g in ids for j in range(2)]
        return Rollout(
            [[g] for g, _ in rows],
            [[g, j] for g, j in rows],
            [f"{g}.{j}" for g, j in rows],
            [[-float(g)] for g, _ in rows],
            [False] * len(rows),
        ), torch.tensor([g + j / 10 for g, j in rows])

    kept = {0: groups([0, 1, 2]), 1: groups([])}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "gather_objects", lambda obj: [(kept[k][0], kept[k][1].tolist()) for k in (0, 1)])
    for rank, mine in ((0, [0, 2]), (1, [1])):
        monkeypatch.setenv("RANK", str(rank))
        ro, r = deal_groups(*kept[rank], 2)
        want_ro, want_r = groups(mine)
        assert ro == want_ro and torch.equal(r, want_r)  # rewards dealt out, not recomputed


def test_deepspeed_config_section():
    cfg = load_config(
        None,
        {
            "deepspeed.zero_stage": "3",
            "sampler.backend": "vllm",
            "deepspeed.config": "{zero_optimization: {stage3_param_persistence_threshold: 0}, bf16: {enabled: true}}",
        },
    )
    assert cfg.deepspeed.zero_stage == 3
    js = deepspeed_json(cfg.deepspeed, max_grad_norm=0.5, bf16=False)
    # The passthrough merges into our defaults rather than replacing whole sections.
    assert js["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}
    assert js["bf16"] == {"enabled": True} and js["gradient_clipping"] == 0.5
    assert js["managed_gradient_accumulation"] is False
    assert load_config(None).deepspeed == DeepSpeedConfig()
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(None, {"deepspeed.zero_stage": 4})
    with pytest.raises(ConfigError, match="sampler.backend=vllm"):  # ZeRO-3 shards what the hf sampler would use
        load_config(None, {"deepspeed.zero_stage": 3})
    with pytest.raises(ConfigError, match="mapping"):
        load_config(None, {"deepspeed.config": "[1, 2]"})


def _grpo_torchrun(out: Path, *extra: str, crash_at: str = "") -> subprocess.CompletedProcess:
    from test_resume import RECIPE, TINY

    over = {**TINY, "rl.steps": 3, "deepspeed.zero_stage": 2, "output_dir": str(out)}
    args = [f"--{k}={v}" for k, v in over.items()]
    return torchrun("-m", "rlvr.train", RECIPE, *args, *extra, crash_at=crash_at, check=False)


def test_zero2_grpo_killed_and_resumed_equals_uninterrupted(tmp_path):
    """ZeRO-2 shards Adam's state over the ranks: a checkpoint must hold every rank's shard, and resume
    must give each rank its own back, or the resumed run drifts from the uninterrupted one."""
    from test_resume import cli, metrics

    ref, out = tmp_path / "ref", tmp_path / "run"
    r = _grpo_torchrun(ref)
    assert r.returncode == 0, r.stderr[-6000:]
    assert all(m["grad_norm"] > 0 for m in metrics(ref)), "every step must move the weights (and Adam's state)"
    killed = _grpo_torchrun(out, crash_at="step3")  # step 3's update done, its metrics and checkpoint not
    assert killed.returncode != 0 and [m["step"] for m in metrics(out)] == [1, 2]
    shards = sorted(p.name for p in (out / "checkpoints" / "step_2" / "learner").rglob("*optim_states.pt"))
    assert len(shards) == 2, shards  # one optimizer shard per rank
    one = cli(out, "--rl.steps=3", "--resume=auto")  # 1 process, plain torch: cannot take 2 ZeRO-2 shards
    assert one.returncode == 1 and "--nproc_per_node 2 ... --deepspeed.zero_stage=2" in one.stderr, one.stderr[-3000:]
    assert "Traceback" not in one.stderr
    r = _grpo_torchrun(out, "--resume=auto")
    assert r.returncode == 0, r.stderr[-6000:]
    assert metrics(out) == metrics(ref)
    assert (out / "final" / "model.safetensors").read_bytes() == (ref / "final" / "model.safetensors").read_bytes()


def test_ppo_policy_and_critic_on_two_processes_match_one(tmp_path):
    """PPO (GAE from a critic), 2 ranks at plain torch and ZeRO-2 against 1 process: each rank scores and
    learns on its share of the groups, with global loss denominators, so the losses, both gradient norms and
    both models' updates are the single process's, up to rounding."""
    import dist_ppo
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torchrun(REPO / "tests" / "dist_ppo.py", tmp_path, "0,2")
    ref = dist_ppo.train(0, tmp_path / "one")
    tokens = sum(
        len(p) + len(c)
        for s in range(dist_ppo.STEPS)
        for p, c in zip(dist_ppo.fixed_batch(s).rollout.prompt_ids, dist_ppo.fixed_batch(s).rollout.completion_ids)
    )
    rel = fp32_rel(tokens)  # every step's tokens, which the weights carry (test_packing's bound)
    start = dict(zip(("policy", "critic"), (m.state_dict() for m in dist_ppo.initial_models())))
    load = {"policy": AutoModelForCausalLM, "critic": AutoModelForSequenceClassification}
    one = {k: cls.from_pretrained(tmp_path / "one" / f"ppo0_{k}").state_dict() for k, cls in load.items()}
    for zero in (0, 2):
        got = json.loads((tmp_path / f"ppo{zero}.json").read_text())
        for step, (a, b) in enumerate(zip(got, ref)):
            assert b["value/loss"] > 0 and b["grad_norm"] > 0 and b["value/grad_norm"] > 0
            for k in ("loss/total", "grad_norm", "value/loss", "value/grad_norm", "value/mean", "clip_frac"):
                assert_close_norm(a[k], b[k], rel, f"ZeRO-{zero}, step {step}: {k}", abs(b[k]) or 1.0)
        for k, cls in load.items():  # each tensor's update, in norm (test_two_processes_*: Adam and rounding)
            two = cls.from_pretrained(tmp_path / f"ppo{zero}_{k}").state_dict()
            assert max((one[k][n] - start[k][n]).abs().max().item() for n in one[k]) > 1e-4
            for n in one[k]:
                assert_close_norm(two[n] - start[k][n], one[k][n] - start[k][n], 1e-2, f"ZeRO-{zero} {k}: {n}")
