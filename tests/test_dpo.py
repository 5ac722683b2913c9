"""DPO: preference-row checks (file:line errors), the formats it reads, and a short run."""

import json

import pytest
from conftest import REPO

from rlvr import data as data_lib
from rlvr.config import load_config

PREFS = REPO / "rlvr" / "tiny" / "data" / "prefs_test.jsonl"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_preference_rows_name_the_row(tmp_path):
    d = load_config(None).data
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    cases = [
        ({"prompt": "q", "chosen": "same", "rejected": " same "}, "chosen and rejected replies are identical"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "empty 'chosen' response"),
        ({"prompt": "q", "chosen": "a", "rejected": "  "}, "empty 'rejected' response"),
        ({"prompt": "q", "chosen": "a"}, "no 'rejected' field"),
        ({"chosen": "a", "rejected": "b"}, "no 'prompt' field"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty prompt"),
        (
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}],
            },
            "differ before the last reply",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}],
                "chosen": "a",
                "rejected": "b",
            },
            "roles must alternate",
        ),
    ]
    for i, (row, pattern) in enumerate(cases):
        f = write_jsonl(tmp_path / f"bad{i}.jsonl", [good, row])
        with pytest.raises(data_lib.DataError, match=rf"bad{i}\.jsonl:2\b.*{pattern}"):
            data_lib.load_preferences(f, "train", d)


def test_preference_formats(tmp_path):
    d = load_config(None).data
    u = {"role": "user", "content": "q"}
    rows = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {
            "prompt": [u],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        {"chosen": [u, {"role": "assistant", "content": "a"}], "rejected": [u, {"role": "assistant", "content": "b"}]},
        # UltraFeedback: a prompt string and whole conversations
        {
            "prompt": "q",
            "chosen": [u, {"role": "assistant", "content": "a"}],
            "rejected": [u, {"role": "assistant", "content": "b"}],
        },
    ]
    pairs = data_lib.load_preferences(write_jsonl(tmp_path / "p.jsonl", rows), "train", d)
    assert all((p.prompt, p.chosen, p.rejected) == ([u], "a", "b") for p in pairs)


def test_short_dpo_run_moves_preferences(tmp_path):
    from rlvr.train import run

    f = write_jsonl(tmp_path / "p.jsonl", [json.loads(line) for line in PREFS.open()][:16])
    s = run(
        "recipes/tiny_dpo.yaml",
        output_dir=str(tmp_path / "run"),
        **{"data.train": f, "data.test": f, "dpo.steps": 3, "dpo.pairs_per_step": 8, "dpo.micro_batch_pairs": 4},
    )
    assert s["eval_initial"]["preference_accuracy"] == 0.5  # policy = reference: every pair ties
    assert s["eval_initial"]["reward_margin"] == 0.0
    assert s["eval_final"]["reward_margin"] > 0  # three steps on these very pairs
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert {"train/loss", "train/margin", "train/accuracy", "train/logp_c", "train/logp_r"} <= set(rows[0])


def test_ipo_length_normalised_config():
    cfg = load_config("recipes/tiny_dpo.yaml", {"dpo.loss": "ipo", "dpo.length_normalize": True})
    assert cfg.dpo.loss == "ipo"
    with pytest.raises(Exception, match="choose one of sigmoid, ipo"):
        load_config("recipes/tiny_dpo.yaml", {"dpo.loss": "hinge"})
