"""SFT: chat data checks (file:line errors), assistant-only loss mask, packing, and a two-step run."""

import json
import re

import pytest
import torch
from conftest import REPO, assert_close_norm, torchrun
from test_packing import fp32_rel

from rlvr import data as data_lib, model as model_lib
from rlvr.config import ConfigError, load_config
from rlvr.tiny.chat_data import CHAT_TEMPLATE

TINY = REPO / "rlvr" / "tiny"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def test_roles_must_alternate(tmp_path):
    d = load_config(None).data
    f = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"messages": msgs(("user", "a"), ("assistant", "b"))},
            {"messages": msgs(("user", "a"), ("user", "b"), ("assistant", "c"))},
        ],
    )
    with pytest.raises(data_lib.DataError, match=r"c\.jsonl:2: roles must alternate.*user -> user -> assistant"):
        data_lib.load_conversations(f, "train", d)


def test_bad_conversations_name_the_row(tmp_path):
    d = load_config(None).data
    cases = [
        ({"messages": msgs(("user", "a"), ("assistant", "  "))}, "message 1 \\(assistant\\) is empty"),
        ({"messages": msgs(("user", "a"))}, "must end with a assistant message"),
        ({"messages": msgs(("user", "a"), ("assistant", "b"), ("system", "c"))}, "roles must alternate"),
        ({"messages": msgs(("robot", "a"))}, "role 'robot'"),
        ({"prompt": "q"}, "no 'response' field"),
        ({"prompt": "q", "response": ""}, "empty response"),
        ({"text": "q"}, "neither 'messages' nor 'prompt'/'response'"),
    ]
    for i, (row, pattern) in enumerate(cases):
        f = write_jsonl(tmp_path / f"bad{i}.jsonl", [{"prompt": "ok", "response": "fine"}, row])
        with pytest.raises(data_lib.DataError, match=rf"bad{i}\.jsonl:2: .*{pattern}"):
            data_lib.load_conversations(f, "train", d)


def test_loss_mask_is_assistant_tokens_only_and_system_prompt_added():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY / "model")
    tok.chat_template = CHAT_TEMPLATE
    chat = msgs(("user", "q1"), ("assistant", "A1"), ("user", "q2"), ("assistant", "A2"))
    segs = data_lib.chat_segments(chat, tok, "chat", system="SYS")
    text = "".join(tok.decode(s) for s, _ in segs)
    assert text == "SYS\nUser: q1\nAssistant: A1<|endoftext|>User: q2\nAssistant: A2<|endoftext|>"
    assert [tok.decode(s) for s, a in segs if a] == [" A1<|endoftext|>", " A2<|endoftext|>"]
    # plain template: one question, the reply followed by EOS; multi-turn needs the chat template
    segs = data_lib.chat_segments(chat[:2], tok, "plain")
    assert [a for _, a in segs] == [False, True] and segs[1][0][-1] == tok.eos_token_id
    with pytest.raises(data_lib.DataError, match="multi-turn chat needs data.template: chat"):
        data_lib.chat_segments(chat, tok, "plain")


def test_packing_keeps_examples_whole_and_restarts_positions():
    ex = [([1, 2, 3], [0, 1, 1], 1), ([4, 5], [0, 1], 1), ([6, 7, 8, 9], [0, 0, 1, 1], 2)]
    rows = data_lib.make_rows(ex, packing=True, max_len=6, seed=0)
    # 3 + 2 + 4 tokens into rows of 6: two rows, each example once and whole
    assert len(rows) == 2 and sorted(tuple(i) for r in rows for i, _ in r) == [(1, 2, 3), (4, 5), (6, 7, 8, 9)]
    assert all(sum(len(i) for i, _ in r) <= 6 for r in rows)
    ids, attn, pos, mask = data_lib.collate([[ex[0][:2], ex[1][:2]]], pad_id=0)
    assert attn is None  # packed: transformers derives per-example attention from the positions
    assert pos.tolist() == [[0, 1, 2, 0, 1]] and mask.tolist() == [[0, 1, 1, 0, 1]]
    ids, attn, pos, mask = data_lib.collate([[ex[1][:2]], [ex[0][:2]]], pad_id=0)
    assert attn.tolist() == [[1, 1, 0], [1, 1, 1]] and ids.tolist() == [[4, 5, 0], [1, 2, 3]]


def test_packed_attention_stays_within_examples():
    # The same example alone and packed after another must get the same loss (no cross-example attention).
    cfg = load_config("recipes/tiny_sft.yaml")
    model, tok = model_lib.load(cfg.model, chat_template=cfg.data.chat_template)
    model.eval()
    a, b = ([5, 6, 7, 8, 9], [0, 0, 1, 1, 1]), ([10, 11, 12, 13], [0, 1, 1, 1])
    with torch.no_grad():
        alone = (
            model_lib.nll_sum(model, *data_lib.collate([[a]], 0))[0]
            + model_lib.nll_sum(model, *data_lib.collate([[b]], 0))[0]
        )
        rows = model_lib.nll_sum(model, *data_lib.collate([[a, b], [b]], 0))[0]
        b_alone = model_lib.nll_sum(model, *data_lib.collate([[b]], 0))[0]
    # a 9-token row's fp32 rounding (test_packing's bound), of the sums it subtracts; attending across examples: ~1
    assert_close_norm(rows - b_alone, alone, fp32_rel(9), "packed", scale=float(rows + b_alone))


def test_sft_config_checks_batch_sizes_and_zero3():
    with pytest.raises(ConfigError, match="sft.seqs_per_step=6 is not a multiple of sft.micro_batch_seqs=4"):
        load_config("recipes/tiny_sft.yaml", {"sft.seqs_per_step": 6, "sft.micro_batch_seqs": 4})
    # ZeRO-3 shards the weights the greedy held-out replies are generated with
    with pytest.raises(ConfigError, match="zero_stage=3 shards the weights that sft's held-out evaluation"):
        load_config("recipes/tiny_sft.yaml", {"deepspeed.zero_stage": 3})
    assert load_config("recipes/tiny_sft.yaml", {"deepspeed.zero_stage": 3, "data.test": ""}).deepspeed.zero_stage == 3


def test_two_step_sft_run_writes_summary_and_a_loadable_checkpoint(tmp_path):
    from rlvr.train import run

    rows = [json.loads(line) for line in (TINY / "data" / "sft_test.jsonl").open()][:8]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    s = run(
        "recipes/tiny_sft.yaml",
        output_dir=str(tmp_path / "run"),
        **{
            "data.train": train,
            "data.test": train,
            "sft.steps": 2,
            "sft.seqs_per_step": 4,
            "sft.micro_batch_seqs": 2,
            "sft.eval_max_new_tokens": 4,
        },
    )
    assert set(s["eval_initial"]) >= {"heldout_loss", "format_rate", "exact_match"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    assert tok.chat_template == CHAT_TEMPLATE  # later stages render chats the same way
    assert re.search(
        "Assistant:", tok.apply_chat_template(rows[0]["messages"][:2], tokenize=False, add_generation_prompt=True)
    )


def test_stage_step_tail_checkpoints_and_stops_like_grpo(tmp_path, monkeypatch):
    """Run.end_step, the end of every GRPO, SFT, DPO and reward-model step: the schedule advances when the step
    learnt, NaN streaks, due checkpoints, signals."""
    import signal
    from types import SimpleNamespace

    from rlvr.run import Run, RunStopped

    cfg = load_config(
        "recipes/tiny_sft.yaml",
        {
            "sft.steps": 5,
            "checkpoint_every": 2,
            "max_bad_steps": 2,
            "keep_best_metric": "loss",
            "output_dir": str(tmp_path),
        },
    )
    run, saved, stepped = Run(cfg, cfg.sft, show={}), [], []
    run.learner = SimpleNamespace(scheduler=SimpleNamespace(step=lambda: stepped.append(1), get_last_lr=lambda: [0.1]))
    run.logger, run.bar, run.stop, run.bad_steps, run.t_step = (
        SimpleNamespace(log=lambda *a: None),
        SimpleNamespace(set_postfix=lambda *a: None),
        SimpleNamespace(signum=None),
        0,
        0.0,
    )
    monkeypatch.setattr(run, "save", lambda step, score: saved.append((step, run.bad_steps, score)) or f"step_{step}")

    def tail(step, norm):
        m = {"loss": 0.5} if norm is None else {"grad_norm": norm, "loss": 0.5}
        run.end_step(step, m)
        return m

    assert tail(1, float("nan"))["lr"] == 0.1 and run.bad_steps == 1 and saved == [] and len(stepped) == 1
    tail(2, 3.0)
    assert run.bad_steps == 0 and saved == [(2, 0, 0.5)]  # due; a finite step ends the streak
    assert "lr" not in tail(3, None) and len(stepped) == 2  # nothing learnt: the schedule holds
    tail(4, float("inf"))
    with pytest.raises(RunStopped, match="2 steps in a row.*--resume=step_5"):
        tail(5, float("nan"))  # the last step: not due, but the streak saves it
    assert saved[-1] == (5, 2, 0.5)
    run.bad_steps, run.stop.signum = 0, signal.SIGTERM
    with pytest.raises(RunStopped, match="SIGTERM") as e:
        tail(3, 1.0)
    assert e.value.exit_code == 128 + signal.SIGTERM and saved[-1] == (3, 0, 0.5)


def test_sft_and_dpo_on_two_processes_match_one(tmp_path):
    """torchrun with 2 ranks (gloo, CPU), plain torch and ZeRO-2, takes the same steps as 1 process: each rank
    trains on its shard of every step's rows with the global loss denominator, ranks with fewer
    micro-batches run zero-weight ones, and the learner sums gradients over ranks."""
    import dist_stages
    from test_resume import metrics

    torchrun(REPO / "tests" / "dist_stages.py", tmp_path / "two", "sft,dpo", "0,2")
    for stage, loss in (("sft", "loss"), ("dpo", "train/loss")):
        dist_stages.train(stage, 0, tmp_path / "one")
        ref = metrics(tmp_path / "one" / f"{stage}_zero0")
        for zero in (0, 2):
            got = metrics(tmp_path / "two" / f"{stage}_zero{zero}")
            assert [m["step"] for m in got] == [1, 2, 3]
            for a, b in zip(got, ref):
                for k in (loss, "grad_norm"):  # shapes and summation order differ: 3 rows of <= 256 tokens round
                    assert_close_norm(a[k], b[k], fp32_rel(3 * 256), f"{stage}, ZeRO-{zero}, step {a['step']}: {k}")
