"""Train: ``python -m rlvr.train RECIPE.yaml [--dotted.key=value ...]``, dispatching on the recipe's stage.

    python -m rlvr.train recipes/tiny_zero.yaml
    python -m rlvr.train recipes/tiny_zero.yaml --rl.lr=1e-5 --output_dir=/tmp/run
    python -m rlvr.train recipes/tiny_zero.yaml --resume=auto     # continue from the newest valid checkpoint

Bad input (unknown keys, missing files, impossible batch sizes) ends with one paragraph saying what
and where, not a traceback.
"""

from __future__ import annotations

import sys

from rlvr.checkpoint import CheckpointError
from rlvr.config import RL_LOOP_STAGES, SAMPLING_STAGES, ConfigError, load_config, parse_cli, set_where
from rlvr.data import DataError
from rlvr.model import ModelError
from rlvr.run import RunStopped

USER_ERRORS = (ConfigError, DataError, ModelError, CheckpointError, FileNotFoundError, PermissionError, OSError)
# Every rank reads the same recipe, data and checkpoints, so these say the same thing on every rank:
# under torchrun only rank 0 prints them. Anything else may be one rank's own and prints with its rank.
SAME_ON_EVERY_RANK = (ConfigError, DataError, ModelError, CheckpointError, RunStopped)


def run(recipe: str, **overrides):
    cfg = load_config(recipe, overrides)
    if cfg.stage in RL_LOOP_STAGES:  # rl, and distill: the same loop with a teacher
        from rlvr import episodes
        from rlvr.rl import train

        # the environment's class and options, checked before minutes of loading: a bad one names its key
        episodes.from_config(cfg.env, lambda key: set_where(recipe, overrides, key))
    elif cfg.stage == "sft":
        from rlvr.sft import train
    elif cfg.stage == "dpo":
        from rlvr.dpo import train
    elif cfg.stage == "reward_model":
        from rlvr.reward_model import train
    elif cfg.stage == "rejection_sampling":
        from rlvr.rejection_sampling import train
    elif cfg.stage == "ai_feedback":
        from rlvr.ai_feedback import train
    elif cfg.stage == "critique_revise":
        from rlvr.critique_revise import train
    else:
        raise ConfigError(f"{recipe}: stage {cfg.stage!r} is not available")
    uses_rm = cfg.stage in SAMPLING_STAGES and any(r.verifier == "reward_model" for r in cfg.rewards)
    if uses_rm:  # the `reward_model` verifier holds a model, so it is registered here, in this process
        from rlvr import reward_model

        reward_model.register_verifier(cfg.reward_model)
    if cfg.stage in SAMPLING_STAGES and any(r.verifier == "judge" for r in cfg.rewards):
        from rlvr import judge  # an LM judge, registered in-process like the reward model

        judge.register_verifier(cfg.judge)
    summary = train(cfg)
    if uses_rm:  # the figure of a chat-RL run: the reward model's score of held-out greedy replies
        summary = reward_model.score_eval_samples(cfg, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    recipes, overrides = parse_cli(argv)
    if len(recipes) != 1:
        print(__doc__.strip())
        return 2
    try:
        run(recipes[0], **overrides)
    except USER_ERRORS as e:
        report(f"error: {e}", e)
        return 1
    except RunStopped as e:  # a guard or a signal stopped training after saving a checkpoint
        report(f"stopped: {e}", e)
        return e.exit_code
    return 0


def report(message: str, error: Exception) -> None:
    from rlvr import dist

    if dist.rank() == 0:
        print(message, file=sys.stderr)
    elif not isinstance(error, SAME_ON_EVERY_RANK):
        print(f"[rank {dist.rank()}] {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
