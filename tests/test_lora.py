"""LoRA (model.lora, through peft): only the adapters train and the optimizer holds state for them alone; the sampler
sync hands out the merged weights under the plain model's names; the KL reference is the base with the adapters off;
checkpoints hold the adapter and resume exactly; final/ is a plain HF model of the merged weights. The weight-sync
guard with LoRA is in tests/test_sync_guard.py, vLLM in tests/test_vllm_sampler.py, ZeRO-2 in tests/test_distributed.py.

    pytest tests/test_lora.py          # about a minute on a busy 2-core box
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import REPO, TINY_DATA, TINY_MODEL, assert_close_norm
from safetensors.torch import load_file
from test_packing import fp32_rel
from test_resume import RECIPE, TINY, assert_same_run, cli, metrics

from rlvr import checkpoint as ckpt, dpo, model as model_lib, rl
from rlvr.config import ConfigError, DeepSpeedConfig, LoraConfig, ModelConfig, load_config
from rlvr.learner import Learner
from rlvr.rollout import Batch, Rollout

LORA = {"model.lora.r": 4, "model.lora.alpha": 8}
DPO_DATA = {
    "model.path": str(TINY_MODEL),
    "data.train": str(TINY_DATA / "prefs_train.jsonl"),
    "data.test": str(TINY_DATA / "prefs_test.jsonl"),
}
EPS = torch.finfo(torch.float32).eps


def fixed_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 384, (4, 24), generator=g)
    mask = torch.zeros(4, 24)
    mask[:, 8:] = 1.0
    return ids, torch.ones_like(ids), mask


def train_steps(learner: Learner, steps: int = 2) -> None:
    """A few AdamW steps on the likelihood of fixed random tokens: the weights move a lot."""
    for s in range(steps):
        logp, m = learner.forward(model_lib.completion_logprobs, *fixed_batch(s))
        learner.backward(-(logp * m).sum() / m.sum())
        assert learner.step() > 0


def lora_learner(steps: int = 2) -> tuple[Learner, object]:
    torch.manual_seed(0)
    model, tok = model_lib.load(ModelConfig(path=str(TINY_MODEL), lora=LoraConfig(r=4, alpha=8)))
    learner = Learner(model, DeepSpeedConfig(), lr=1e-2)
    train_steps(learner, steps)
    return learner, tok


def base_model():
    return model_lib.load(ModelConfig(path=str(TINY_MODEL)))[0].eval()


def seq_logprobs(model, seed: int = 9) -> torch.Tensor:
    was = model.training
    model.eval()
    with torch.no_grad():
        logp, m = model_lib.completion_logprobs(model, *fixed_batch(seed))
    model.train(was)
    return logp[m.bool()]


def state_bytes(opt) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def test_only_the_adapters_train_and_the_optimizer_state_shrinks():
    learner, _ = lora_learner()
    base = load_file(str(TINY_MODEL / "model.safetensors"))
    trained = {n: p for n, p in learner.module.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained), sorted(trained)
    assert all(trained[n].abs().max() > 0 for n in trained if ".lora_B." in n)  # B starts at 0: every one moved
    frozen = 0
    for name, p in learner.module.get_base_model().named_parameters():
        if ".lora_" not in name:  # the base: frozen, and unchanged by the steps
            assert not p.requires_grad and torch.equal(p, base[name.replace(".base_layer.", ".")]), name
            frozen += p.numel()
    # AdamW keeps two moments (and a step count) per trained tensor: for the adapters alone
    opt = learner.optimizer
    assert len(opt.state) == len(trained)
    assert state_bytes(opt) == sum(2 * p.numel() * p.element_size() + 4 for p in trained.values())
    full = Learner(base_model().train(), DeepSpeedConfig(), lr=1e-2)
    train_steps(full, 1)
    n_full = sum(p.numel() for p in full.module.parameters())
    assert len(full.optimizer.state) == len(list(full.module.parameters()))
    ratio = state_bytes(opt) / state_bytes(full.optimizer)
    lora_params = sum(p.numel() for p in trained.values())
    print(f"optimizer state: LoRA {state_bytes(opt)} B, full {state_bytes(full.optimizer)} B ({ratio:.3f})")
    assert frozen + lora_params > n_full and ratio < 0.1


def test_the_sync_gives_merged_weights_under_the_plain_names():
    """What the vLLM engine is given: the plain model's state dict with each adapter merged in, as peft's
    merge_and_unload computes it on a copy, while the learner's own module stays unmerged."""
    learner, _ = lora_learner()
    base = base_model().state_dict()
    want = copy.deepcopy(learner.module).merge_and_unload().state_dict()
    got = dict(learner.named_parameters_for_sync())
    assert list(got) == list(want) == list(base)
    r = learner.module.peft_config["default"].r
    moved = [k for k in got if not torch.equal(got[k], base[k])]
    assert len(moved) == 4 * 7, moved  # 4 layers x (q, k, v, o, gate, up, down): every linear of the decoder
    for k in got:  # the same sum of r products, perhaps in another order
        assert_close_norm(got[k], want[k], EPS * r, f"merged {k}")
        if k in moved:
            assert (got[k] - base[k]).norm() > 1e-3 * base[k].norm(), k
    unmerged = learner.module.get_base_model().model.layers[0].self_attn.q_proj
    assert not unmerged.merged and torch.equal(
        unmerged.base_layer.weight, base["model.layers.0.self_attn.q_proj.weight"]
    )


def rollout_batch(tok) -> Batch:
    prompts = [tok(f"User: {a} + {b} = ? Assistant: <think>")["input_ids"] for a, b in ((3, 4), (12, 30))]
    g = torch.Generator().manual_seed(5)
    comps = [torch.randint(1, 384, (n,), generator=g).tolist() for n in (7, 11, 5, 9)]
    ro = Rollout([prompts[i // 2] for i in range(4)], comps, [""] * 4, [[-1.0] * len(c) for c in comps], [False] * 4)
    return Batch(ro, torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)


def test_the_kl_reference_is_the_base_with_the_adapters_off(tiny_cfg):
    """rl's targets and dpo's reference score with the policy's own module, adapters off: the base model's
    log-probs (no second copy), not the adapted ones, and the module is left training with its adapters on."""
    learner, tok = lora_learner()
    base, pad = base_model(), tok.pad_token_id
    cfg = tiny_cfg({"rl.beta": 0.1, **LORA})
    batch = rollout_batch(tok)
    t = rl.targets(learner, learner.module, None, batch, cfg, pad)
    want = rl.score(lambda fn, *a, **kw: fn(base, *a, **kw), batch, cfg, pad)
    adapted = rl.score(learner.forward, batch, cfg, pad)
    tokens = sum(len(p) + len(c) for p, c in zip(batch.rollout.prompt_ids, batch.rollout.completion_ids))
    assert_close_norm(t.ref, want, fp32_rel(tokens), "rl reference vs the base model")
    assert (adapted - want).abs().max() > 0.1  # the adapters moved the policy: a reference with them on fails
    assert learner.module.training and not learner.module.get_base_model().model.layers[0].mlp.up_proj.disable_adapters

    dpo_over = {**DPO_DATA, **LORA, "dpo.steps": 1, "dpo.pairs_per_step": 2, "dpo.micro_batch_pairs": 2}
    dcfg = load_config(REPO / "recipes" / "tiny_dpo.yaml", dpo_over)
    ro = batch.rollout
    enc = ([ro.prompt_ids[0], ro.prompt_ids[2]], [ro.completion_ids[0], ro.completion_ids[2]], ro.completion_ids[1::2])
    ref_train, ref_test = dpo.reference_logprobs(dcfg, enc, enc, pad, learner.module)
    for got, model in ((ref_test, base), (ref_train, base)):
        assert_close_norm(
            torch.stack(tuple(got)),
            torch.stack(dpo.pair_logprobs(model, enc, [0, 1], pad, 2, False)),
            fp32_rel(tokens),
            "dpo reference vs the base model",
        )
    policy = torch.stack(dpo.pair_logprobs(learner.module.eval(), enc, [0, 1], pad, 2, False))
    assert (policy - ref_train).abs().max() > 0.1


def test_final_is_a_plain_hf_model_of_the_merged_weights_with_the_adapter_beside(tmp_path):
    learner, tok = lora_learner()
    ckpt.save_model(learner, tok, tmp_path / "final")
    final = tmp_path / "final"
    assert (final / "model.safetensors").is_file() and (final / "adapter" / "adapter_config.json").is_file()
    plain, _ = model_lib.load(ModelConfig(path=str(final)))  # a model.path like any other (rlvr.evaluate, stages)
    assert not model_lib.is_lora(plain)
    adapted, before = seq_logprobs(learner.module), seq_logprobs(base_model())
    assert (adapted - before).abs().max() > 0.1
    # merged weights against the adapters' separate path: rounding of sums over the hidden size and rank
    assert_close_norm(seq_logprobs(plain), adapted, fp32_rel(24), "final/ vs the adapted model")
    again, _ = model_lib.load(
        ModelConfig(path=str(TINY_MODEL), lora=LoraConfig(r=4, alpha=8, adapter=str(final / "adapter")))
    )
    assert torch.equal(seq_logprobs(again), adapted)  # the adapter continues training from there (model.lora.adapter)


def test_lora_run_resumes_after_sigkill_bit_for_bit(tmp_path):
    """A GRPO run with LoRA and a KL term killed mid-step and resumed equals the uninterrupted run: the checkpoint
    holds the adapter (peft format, no full model), the base comes from model.path, the reference is the base."""
    over = {**LORA, "rl.lr": 5e-3, "rl.beta": 0.05}
    ref, out = tmp_path / "ref", tmp_path / "run"
    rl.train(load_config(RECIPE, {**TINY, **over, "output_dir": str(ref)}))
    killed = cli(out, *[f"--{k}={v}" for k, v in over.items()], crash_at="step3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    step2 = out / "checkpoints" / "step_2"
    assert (step2 / "adapter_model.safetensors").is_file() and not (step2 / "model.safetensors").exists()
    rl.train(load_config(RECIPE, {**TINY, **over, "output_dir": str(out), "resume": "auto"}))
    assert_same_run(out, ref)
    assert all(r["kl"] > 0 for r in metrics(ref)[1:])  # the reference is not the policy


@pytest.mark.parametrize(
    "stage,recipe,over",
    [
        (
            "sft",
            "tiny_sft.yaml",
            {"sft.steps": 2, "sft.seqs_per_step": 4, "sft.micro_batch_seqs": 4, "sft.eval_examples": 2},
        ),
        (
            "dpo",
            "tiny_dpo.yaml",
            {"dpo.steps": 2, "dpo.pairs_per_step": 4, "dpo.micro_batch_pairs": 4, "dpo.eval_pairs": 2},
        ),
    ],
)
def test_sft_and_dpo_train_adapters_through_the_shared_layers(tmp_path, stage, recipe, over):
    over = {**over, **LORA, f"{stage}.lr": 1e-2, "checkpoint_every": 1, "keep_last": 0, "output_dir": str(tmp_path)}
    __import__(f"rlvr.{stage}", fromlist=["train"]).train(load_config(REPO / "recipes" / recipe, over))
    assert (tmp_path / "checkpoints" / "step_1" / "adapter_config.json").is_file()
    assert not (tmp_path / "checkpoints" / "step_1" / "model.safetensors").exists()
    final = load_file(str(tmp_path / "final" / "model.safetensors"))
    base = load_file(str(TINY_MODEL / "model.safetensors"))
    assert final.keys() == base.keys() and (tmp_path / "final" / "adapter" / "adapter_model.safetensors").is_file()
    assert not torch.equal(final["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(final["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # frozen


def test_lora_config_overrides_and_errors(tmp_path):
    cfg = load_config(RECIPE, {**TINY, "model.lora.r": "8", "model.lora.target_modules": "q_proj,v_proj"})
    assert cfg.model.lora == LoraConfig(r=8, target_modules=["q_proj", "v_proj"])
    assert load_config(RECIPE, TINY).model.lora.r == 0  # off unless asked for: the recipes train in full
    for bad, match in (
        ({"model.lora.r": -1}, "model.lora needs r >= 0"),
        ({"model.lora.r": 4, "model.lora.dropout": 1.0}, "dropout in"),
        ({"model.lora.adapter": str(tmp_path)}, "model.lora.r=0"),
        ({"model.lora.r": 4, "model.lora.adapter": str(tmp_path)}, "no adapter_config.json"),
        ({"model.lora.rank": 4}, "model.lora.r"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_config(RECIPE, {**TINY, **bad})
    with pytest.raises(ConfigError, match="policy only"):
        load_config(REPO / "recipes" / "tiny_reward_model.yaml", {**DPO_DATA, **LORA})
    learner, tok = lora_learner(steps=1)
    learner.save_pretrained(tmp_path / "a")
    with pytest.raises(model_lib.ModelError, match="saved with r=4"):
        model_lib.load(ModelConfig(path=str(TINY_MODEL), lora=LoraConfig(r=8, alpha=8, adapter=str(tmp_path / "a"))))
