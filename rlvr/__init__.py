"""rlvr: reinforcement learning from verifiable rewards (R1-Zero-style GRPO), small enough to read.

Modules import only from their own layer or the ones below it, and no stage imports another
(``tests/test_layers.py`` checks both, and that there is no cycle):

1. entry points: ``train`` (every training stage), ``evaluate`` (pass@k on benchmarks), ``convert`` (a GGUF
   model to an HF checkpoint)
2. stages, one loop each: ``rl`` (GRPO, PPO and the policy-gradient family; with a teacher, on-policy distillation:
   ``stage: distill``), ``sft``, ``dpo``, ``reward_model``, ``rejection_sampling`` (best-of-N, expert iteration),
   ``ai_feedback`` (RLAIF preference pairs from an LM judge), ``critique_revise`` (Constitutional AI's supervised
   phase)
3. what the loops are made of: ``run`` (the lifecycle: resume, signals, checkpoints, logging), ``sampler`` and
   ``vllm_sampler``, ``sampling`` (sample -> verify -> rewards for a step, dynamic sampling, the weight-sync guard's
   probe), ``async_sampler`` (the sampler in processes of its own, ahead of the learner: ``async_rl``),
   ``episodes`` (multi-turn rollouts with tools), ``learner``, ``rewards``, ``grading``
   (generate and grade), ``plots``, ``packing``, ``supervised`` (the SFT loss step, held-out loss), ``judge``
   (an LM judge: scores from token probabilities), ``chunks`` (generated data in resumable chunk files)
4. foundations: ``rollout`` (the sampler-learner boundary), ``model``, ``data``, ``checkpoint`` (the on-disk
   format), ``log``
5. ``algos`` (pure tensor math), ``dist``, ``config``, ``templates``

Outside the package, imports flow one way too: rlvr -> verifiers -> sandbox, and neither of the last two
imports torch.
"""

__version__ = "0.1.0"
