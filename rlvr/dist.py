"""Processes: one code path for 1 and N ranks. At world size 1 there is no process group and every
call here is a cheap no-op, so single-process runs need no launcher and no DeepSpeed.

Launch (one machine, 2 processes; gloo on CPU, nccl on CUDA):

    torchrun --nproc_per_node 2 -m rlvr.train recipes/tiny_zero.yaml --deepspeed.zero_stage=2
    deepspeed --num_gpus 8 -m rlvr.train recipes/r1_zero.yaml --deepspeed.zero_stage=3

Both launchers set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, which is all ``init``
reads. ``deepspeed.zero_stage``: 0 is plain torch (gradients all-reduced by ``rlvr.learner``), 2
shards gradients and optimizer state, 3 also shards the weights (``deepspeed.offload_optimizer``
moves optimizer state and the Adam step to CPU memory); ``deepspeed.config`` is a free-form mapping
merged over rlvr's DeepSpeed JSON (see ``rlvr.learner.deepspeed_json``).

Multi-node: the same command on every node, with a rendezvous the nodes can reach,

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST0:29500 \\
        -m rlvr.train recipes/r1_zero.yaml --deepspeed.zero_stage=3

or one command on the first node with a DeepSpeed hostfile (lines ``node0 slots=8``; passwordless
ssh between nodes): ``deepspeed --hostfile hosts -m rlvr.train RECIPE``. What changes in the recipe:
``deepspeed.zero_stage`` (2 while the weights fit one GPU beside 1/N of the gradients and Adam state;
3 beyond), and nothing about batch sizes, which stay *global*: each rank takes
``rl.prompts_per_step / world_size`` prompts (``shard``), so keep ``prompts_per_step`` a multiple
of the number of ranks; with dynamic sampling the groups each rank kept are dealt out again
(``sampling.deal_groups``), so no rank is left without data. Every rank must call ``Learner.backward``
the same number of times per step (ZeRO reduces inside backward): equalise micro-batch counts with
``global_max``.

Sampling: under ZeRO-2 each rank's HF sampler generates with its own full copy of the weights; under
ZeRO-3 the weights are sharded (and gathering them costs a collective per layer that every rank must
join), so the sampler must be a separate engine fed by ``Learner.named_parameters_for_sync`` (vLLM),
never the learner's module. ``sampler.tensor_parallel_size: K`` splits one vLLM engine over K GPUs of
a node, for a policy too large for one GPU's engine; as wired today each learner rank runs its own
in-process engine (K=1) on its share of the prompts, colocated and asleep while the learner steps.
Tested with 2 ranks on CPU (tests/test_vllm_sampler.py, -m slow); not yet on several GPUs, where each
rank's engine must land on its own GPU (vLLM's ``external_launcher`` executor exists for this).

Asynchronous RL (``async_rl``, ``rlvr.async_sampler``) splits the ranks by role: the last
``async_rl.sampler_ranks`` sample and the others learn, each role in its own process group, so everything here
sees only this process's role (two hosts, samplers on the second: ``torchrun --nnodes 2 ... --node_rank N``).

Checkpoints are collective: every rank calls ``rlvr.checkpoint.save``, each ZeRO rank writes its own
optimizer shard into the checkpoint (so the output dir must be on storage every rank sees), and a
resume restores each rank's shard at the same world size.

The loss stays exact across ranks: each rank divides its ``algos.masked_sum`` by the *global*
``algos.loss_denominator`` (``all_reduce_sum`` of the ranks' token or sequence counts), and the
learner sums (never averages) gradients over ranks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as tdist

T = TypeVar("T")


# Asynchronous RL (rlvr.async_sampler) splits torchrun's processes into learners and samplers: each role's process
# group meets in a store of its own, and RANK and WORLD_SIZE are rewritten to the role's.
_ROLE_STORE = None


def init() -> None:
    """Join the process group the launcher describes (of this process's role: learners or samplers); nothing at
    world size 1. Idempotent."""
    if world_size() == 1 or tdist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if _ROLE_STORE is None:
        tdist.init_process_group(backend)
    else:
        tdist.init_process_group(backend, store=_ROLE_STORE, rank=rank(), world_size=world_size())


def world_size() -> int:
    # The environment, not the process group, so this is right before init() too.
    return tdist.get_world_size() if tdist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (and return it); identity at world size 1."""
    if world_size() > 1:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def global_sum(x: float) -> float:
    """A Python number summed over ranks, e.g. the loss denominator or a metric's token count."""
    return (
        float(all_reduce_sum(torch.tensor(float(x), dtype=torch.float64, device=device())))
        if world_size() > 1
        else float(x)
    )


def global_max(x: float) -> float:
    """A Python number's maximum over ranks, e.g. the micro-batch count every rank must run."""
    if world_size() == 1:
        return float(x)
    t = torch.tensor(float(x), dtype=torch.float64, device=device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return float(t)


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` with rank ``src``'s copy, in place; identity at world size 1."""
    if world_size() > 1:
        tdist.broadcast(t, src)
    return t


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` at world size 1."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        tdist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share, rank-strided: rank r of N gets items r, r+N, r+2N, ... Shard *prompts*, not
    completions, so each GRPO group (and its advantage baseline) stays on one rank."""
    return list(items[rank() :: world_size()])


def device() -> torch.device:
    """Where collectives' tensors live: the local GPU under nccl, the CPU under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
