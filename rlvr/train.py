"""Train: ``python -m rlvr.train RECIPE.yaml [--dotted.key=value ...]``, dispatching on the recipe's stage.

    python -m rlvr.train recipes/tiny_zero.yaml
    python -m rlvr.train recipes/tiny_zero.yaml --grpo.lr=1e-5 --output_dir=/tmp/run
    python -m rlvr.train recipes/tiny_zero.yaml --resume=auto     # continue from the newest valid checkpoint

Bad input (unknown keys, missing files, impossible batch sizes) ends with one paragraph saying what
and where, not a traceback.
"""

from __future__ import annotations

import sys

from rlvr.checkpoint import CheckpointError, RunStopped
from rlvr.config import ConfigError, load_config
from rlvr.data import DataError
from rlvr.model import ModelError

USER_ERRORS = (ConfigError, DataError, ModelError, CheckpointError, FileNotFoundError, PermissionError, OSError)


def run(recipe: str, **overrides):
    cfg = load_config(recipe, overrides)
    if cfg.stage == "grpo":
        from rlvr.grpo import train
    else:
        raise ConfigError(f"{recipe}: stage {cfg.stage!r} is not available")
    return train(cfg)


def main(argv: list[str] | None = None) -> int:
    import fire

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip())
        return 2
    try:
        fire.Fire(run, command=argv, name="rlvr.train", serialize=lambda _: None)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RunStopped as e:  # a guard or a signal stopped training after saving a checkpoint
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
