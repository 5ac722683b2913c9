"""The learner: one model, its optimizer and LR schedule behind the few calls a training loop needs,
the same for plain torch (``deepspeed.zero_stage: 0``) and DeepSpeed ZeRO-2/3, on 1 or N ranks.

    learner = Learner.for_stage(model, cfg.deepspeed, cfg.rl)      # lr, weight decay, clipping, schedule
    denom = dist.global_sum(algos.loss_denominator(mask, g.loss_agg))   # over every micro-batch and rank
    for mb in micro_batches:                                            # same count on every rank
        logp, m = learner.forward(model_lib.completion_logprobs, ids[mb], attn[mb], mask[mb], T)
        learner.backward(algos.masked_sum(per_tok, m, g.loss_agg, max_len) / denom)
    grad_norm = learner.step()           # clip + step; a non-finite norm means the update was skipped
    sampler.update_weights(learner.named_parameters_for_sync())        # every rank iterates (ZeRO-3 gathers)
    checkpoint.save_model(learner, tokenizer, out / "final")             # every rank calls, rank 0 writes

Gradients are *summed* over ranks: each rank's loss already carries the global denominator, so the
sum is the gradient of the whole batch's loss, the single-process one up to summation order.
DeepSpeed averages over ranks, so ``backward`` multiplies by the world size first, and runs with
``managed_gradient_accumulation: false`` and ``scale_wrt_gas=False`` so that ``step`` (not a fixed
micro-step count) is the accumulation boundary and DeepSpeed never divides the loss. Training
forwards go through ``forward`` (DeepSpeed's engine), or ZeRO-3 silently reduces wrong gradients.

Checkpoints: ``rlvr.checkpoint.save(root, step, learner, ...)`` writes the consolidated HF weights
(``save_pretrained``) and the optimizer and scheduler state (``save_state``: one file at stage 0, one
shard per rank under ZeRO), every rank calling; ``load_state`` restores them at the same world size.
Tested against single-process training in tests/test_distributed.py (``offload_optimizer`` is not: it
JIT-builds DeepSpeed's CPU Adam).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import torch

from rlvr import config as config_lib, dist, model as model_lib


def micro_batches(rows: list[int], micro: int) -> list[tuple[list[int], float]]:
    """This rank's ``dist.shard`` of a step's rows, cut into micro-batches, each with its loss weight.
    Every rank gets as many (ZeRO reduces inside backward, so every backward needs its partner on every
    rank): one that runs out repeats its first micro-batch (or the step's) with weight 0."""
    mine = dist.shard(rows)
    out = [(mine[i : i + micro], 1.0) for i in range(0, len(mine), micro)]
    filler = (out[0][0] if out else rows[:micro], 0.0)
    return out + [filler] * (int(dist.global_max(len(out))) - len(out))


def deepspeed_json(ds_cfg, max_grad_norm: float, bf16: bool) -> dict:
    """rlvr's DeepSpeed config, with the recipe's free-form ``deepspeed.config`` merged over it."""
    zero = {"stage": ds_cfg.zero_stage}
    if ds_cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    base = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,  # counters only: see the docstring
        "managed_gradient_accumulation": False,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # our torch AdamW, so both paths run the same update
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return config_lib.merge(base, ds_cfg.config)


def lr_schedule(sec, steps: int):
    """Section with ``warmup_steps`` and ``lr_schedule`` -> LambdaLR factor of the step: linear warmup, then
    constant or cosine decay to 0 at ``steps`` (every stage's section has these keys)."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / sec.warmup_steps) if sec.warmup_steps else 1.0
        if sec.lr_schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
        return warm

    return factor


class _Forward(torch.nn.Module):
    """Root module DeepSpeed wraps, so any forward function (completion_logprobs, a DPO pair loss)
    runs through ``engine(...)``: ZeRO-3 reduces gradients only for graphs built by the engine's
    forward (its hooks start each backward), not for calls into submodules like ``get_decoder()``."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, fn, *args, **kwargs):
        return fn(self.lm, *args, **kwargs)


class Learner:
    def __init__(
        self,
        model,
        ds_cfg,
        *,
        lr: float,
        weight_decay: float = 0.0,
        betas=(0.9, 0.99),
        max_grad_norm: float = 1.0,
        lr_lambda=None,
    ):
        self.stage, self.max_grad_norm = ds_cfg.zero_stage, max_grad_norm
        params = [p for p in model.parameters() if p.requires_grad]
        if self.stage and ds_cfg.offload_optimizer:  # DeepSpeed insists on its own CPU Adam for offload
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            self.optimizer = DeepSpeedCPUAdam(params, lr=lr, betas=betas, weight_decay=weight_decay, adamw_mode=True)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
        # Built on the client optimizer before DeepSpeed wraps it (ZeRO keeps its param_groups), and never
        # handed to DeepSpeed, which would step it per optimizer step: the loop decides when it steps.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda or (lambda _: 1.0))
        if self.stage:
            import deepspeed

            dist.init()
            bf16 = next(model.parameters()).dtype == torch.bfloat16
            self.engine, *_ = deepspeed.initialize(
                model=_Forward(model), optimizer=self.optimizer, config=deepspeed_json(ds_cfg, max_grad_norm, bf16)
            )
            self.module = model
        else:
            self.engine, self.module = None, model
            for p in model.parameters():  # ranks start from rank 0's weights, whatever each loaded
                dist.broadcast_(p.data)

    @classmethod
    def for_stage(cls, model, ds_cfg, sec, steps: int | None = None) -> Learner:
        """The learner a stage's section asks for (``cfg.rl``, ``cfg.sft``, ..., ``cfg.rl.critic``): its ``lr``,
        ``weight_decay``, ``max_grad_norm`` and warmup/decay schedule over ``steps`` (default: the section's)."""
        return cls(
            model,
            ds_cfg,
            lr=sec.lr,
            weight_decay=sec.weight_decay,
            max_grad_norm=sec.max_grad_norm,
            lr_lambda=lr_schedule(sec, sec.steps if steps is None else steps),
        )

    def forward(self, fn, *args, **kwargs):
        """``fn(model, *args, **kwargs)``, the model's forward for training (gradients flow back through
        ``backward``), e.g. ``learner.forward(model_lib.completion_logprobs, ids, attn, mask, T)``."""
        return fn(self.module, *args, **kwargs) if self.engine is None else self.engine(fn, *args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate d(loss)/d(weights); ``loss`` is this micro-batch's share of the global loss."""
        if not torch.isfinite(loss):
            # Poison every gradient so step() sees a non-finite norm on all ranks and skips the update,
            # the same way on both paths (NaN * 0 is NaN, so even masked-out paths carry it).
            loss = loss * float("nan")
        if self.engine is None:
            loss.backward()
        else:
            self.engine.backward(loss * dist.world_size(), scale_wrt_gas=False)  # DeepSpeed averages ranks

    def step(self) -> float:
        """Clip to ``max_grad_norm`` and update, unless the global gradient norm is not finite (then
        the update is skipped and the gradients dropped); -> that norm, before clipping."""
        if self.engine is not None:
            self.engine.step()  # reduces, clips and skips a non-finite norm itself (fp32/bf16 ZeRO)
            norm = self.engine.get_global_grad_norm()
            self.engine.zero_grad()
            return float(norm)
        params = [p for p in self.module.parameters() if p.requires_grad]
        if dist.world_size() > 1:  # every rank reduces every tensor, in order, gradient or not
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce_sum(p.grad)
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm if self.max_grad_norm > 0 else float("inf"))
        if torch.isfinite(norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _gathered(self, *params):
        if self.stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(params))
        return nullcontext()

    def named_parameters_for_sync(self):
        """(HF state-dict name, full tensor) for every weight, tied ones under each name. A collective
        under ZeRO-3, which gathers one tensor at a time: every rank must iterate to the end. The tensor
        may be released after the next item, so a consumer copies it (vLLM's reload does). A LoRA policy
        gives the plain model's names and merged weights (``_merged``), so a sampler needs to know nothing of it."""
        if model_lib.is_lora(self.module):
            yield from self._merged()
            return
        for name, p in self.module.state_dict(keep_vars=True).items():
            with self._gathered(p):
                yield name, (p.detach().clone() if self.stage == 3 else p.detach())

    def _merged(self):
        """A LoRA policy's weights as the plain model's, under its HF names: each adapted layer's base weight plus
        its adapters' delta (peft's ``get_delta_weight``, what merging adds), computed aside. The module is left
        as it is: a merge and unmerge in place would leave the base weights off by float rounding every sync."""
        base = self.module.get_base_model()
        for name, p in base.state_dict(keep_vars=True).items():
            if ".lora_" in name:
                continue
            if ".base_layer." not in name or not name.endswith(".weight"):
                with self._gathered(p):
                    yield name.replace(".base_layer.", "."), (p.detach().clone() if self.stage == 3 else p.detach())
                continue
            layer = base.get_submodule(name.split(".base_layer.")[0])
            on = [a for a in layer.active_adapters if a in layer.lora_A or a in layer.lora_embedding_A]
            with self._gathered(*layer.parameters()):
                with torch.no_grad():
                    merged = sum((layer.get_delta_weight(a) for a in on), p.detach().clone())
                yield name.replace(".base_layer.", "."), merged

    def save_pretrained(self, path, merged: bool = False) -> None:
        """The consolidated HF model (``from_pretrained`` loads it) into directory ``path``: every rank
        calls, rank 0 writes. ``rlvr.checkpoint.save``/``save_model`` call it inside their atomic writes.
        A LoRA policy writes its adapter in peft's format (adapter_config.json, adapter_model.safetensors), or,
        ``merged``, the plain HF model with the adapters merged in and the adapter in ``path/adapter``."""
        lora = model_lib.is_lora(self.module)
        if lora and not merged:
            self._save_adapter(path)
            return
        state = None
        if self.stage == 3 or lora:  # gathered tensor by tensor on every rank, kept by rank 0 only
            state = {}
            for k, v in self.named_parameters_for_sync():
                if dist.is_main():
                    state[k] = v.cpu()
        if dist.is_main():
            (self.module.get_base_model() if lora else self.module).save_pretrained(path, state_dict=state)
        dist.barrier()
        if lora:
            self._save_adapter(Path(path) / "adapter")

    def _save_adapter(self, path) -> None:
        state = None
        if self.stage == 3:  # the adapters' tensors, gathered; peft keeps the LoRA ones of a state dict
            state = {}
            for name, p in self.module.named_parameters():
                if p.requires_grad:
                    with self._gathered(p):
                        if dist.is_main():
                            state[name] = p.detach().cpu().clone()
        if dist.is_main():
            self.module.save_pretrained(path, state_dict=state)
        dist.barrier()

    def save_state(self, path) -> None:
        """Optimizer and scheduler state for resuming, into directory ``path``; every rank calls (ZeRO
        writes one shard per rank, so ``path`` must be on storage every rank sees)."""
        path = Path(path)
        if self.engine is not None:
            self.engine.save_checkpoint(
                str(path), tag="learner", client_state={"scheduler": self.scheduler.state_dict()}
            )
        elif dist.is_main():
            path.mkdir(parents=True, exist_ok=True)
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                path / "learner.pt",
            )
        dist.barrier()

    def load_state(self, path) -> None:
        path = Path(path)
        if self.engine is not None:
            # Weights come from the HF checkpoint the model was loaded from; this restores the rest.
            _, client = self.engine.load_checkpoint(
                str(path),
                tag="learner",
                load_module_only=False,
                load_optimizer_states=True,
                load_lr_scheduler_states=False,
            )
            self.scheduler.load_state_dict(client["scheduler"])
        else:
            state = torch.load(path / "learner.pt", map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
