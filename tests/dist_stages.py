"""Tiny SFT and DPO runs at any world size and ZeRO stage: the entry point that tests/test_sft.py launches
under torchrun, and calls in-process as the single-process reference.

    torchrun --standalone --nproc_per_node 2 tests/dist_stages.py OUT_DIR sft,dpo 0,2

writes OUT_DIR/{stage}_zero{S}/ (metrics.jsonl, summary.json, checkpoints/, final/) for each stage and
ZeRO stage S (0: plain torch). One launch runs them all: start-up (imports, process group) dominates.
"""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import REPO

from rlvr.train import run

DATA = REPO / "rlvr" / "tiny" / "data"
# 3 steps of 3 rows (pairs) in micro-batches of 1: rank 0 of 2 holds 2 rows, rank 1 holds 1 and runs a
# zero-weight filler micro-batch; a checkpoint at step 2 is written by both ranks.
COMMON = {"checkpoint_every": 2, "cpu_threads": 1}
RUNS = {
    "sft": (
        "tiny_sft.yaml",
        {
            "data.train": str(DATA / "sft_test.jsonl"),
            "data.test": str(DATA / "sft_test.jsonl"),
            "sft.steps": 3,
            "sft.seqs_per_step": 3,
            "sft.micro_batch_seqs": 1,
            "sft.eval_examples": 2,
            "sft.eval_max_new_tokens": 4,
        },
    ),
    "dpo": (
        "tiny_dpo.yaml",
        {
            "data.train": str(DATA / "prefs_test.jsonl"),
            "data.test": str(DATA / "prefs_test.jsonl"),
            "dpo.steps": 3,
            "dpo.pairs_per_step": 3,
            "dpo.micro_batch_pairs": 1,
            "dpo.eval_pairs": 2,
        },
    ),
}


def train(stage: str, zero: int, out: Path) -> dict:
    recipe, over = RUNS[stage]
    return run(
        str(REPO / "recipes" / recipe),
        output_dir=str(Path(out) / f"{stage}_zero{zero}"),
        **{**COMMON, **over, "deepspeed.zero_stage": zero},
    )


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    for z in map(int, sys.argv[3].split(",")):
        for st in sys.argv[2].split(","):
            train(st, z, out_dir)
