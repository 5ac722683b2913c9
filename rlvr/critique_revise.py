"""Constitutional AI, the supervised phase (Bai et al. 2022): the policy answers each training prompt, critiques its
answer against a principle drawn from a constitution, and revises it; the revisions, as the answers to the original
prompts, are fine-tuned on with the SFT loss.

    python -m rlvr.train recipes/tiny_critique_revise.yaml        # CPU, the mechanics on the tiny chat model
    python -m rlvr.train recipes/constitutional_qwen.yaml         # a real chat model on a hub dataset (GPU)

The constitution is ``critique_revise.constitution`` (inline principles), or ``constitution_file`` (a YAML/JSON list,
or text with principles separated by blank lines), else ``CONSTITUTION``. Each answer goes through
``critique_revise.revisions`` rounds, each with a principle drawn anew (seeded by the prompt: a resumed run draws
the same): the critique prompt (``critique_prompt``: ``{question}``, ``{answer}``, ``{principle}``) and the revision
prompt (``revision_prompt``: the same and ``{critique}``) are user messages, rendered with ``data.template`` like
the training prompts, and sampled with the ``sampler`` settings; the revision is the next round's answer.

Output (``OUTPUT_DIR``): ``revisions.jsonl``, one row per kept revision: the question under ``data.prompt_field`` and
the last revision under ``data.response_field``, so ``stage: sft`` with the same ``data`` settings reads it as is;
also ``id``, ``initial`` (the first answer), ``principles`` and ``critiques``. A revision that was truncated (no end:
SFT would teach an end that was not sampled) or is empty, or a prompt that with ``sampler.max_new_tokens`` is over
the model's context, is dropped and counted (``summary.json``: ``revisions``, ``dropped_*``, ``changed_frac``: the
share of kept revisions that differ from the first answer). No revision kept is an error. Then
``critique_revise.steps`` SFT steps (``rlvr.supervised``) on the kept revisions.

Resume (``--resume=auto``): the samples are generated in chunks of ``chunk_prompts`` prompts (``rlvr.chunks``), each
written whole; a run stopped while generating reads the complete ones back and generates the rest with the starting
model; one stopped while training restores its checkpoint (weights, optimizer, position in the revisions) and reads
every chunk back. N processes: each generates its share of every chunk, and trains on its share of every step.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import yaml

from rlvr import chunks, data as data_lib, dist, model as model_lib
from rlvr.learner import Learner
from rlvr.log import write_jsonl_atomic
from rlvr.run import Run
from rlvr.sampler import make_sampler
from rlvr.supervised import sft_step
from rlvr.templates import render

CONSTITUTION = [
    "The answer should be correct: every fact and every step of reasoning in it should be true.",
    "The answer should answer exactly what was asked, without going off topic.",
    "The answer should be clear and concise, with nothing unnecessary.",
    "The answer should be honest: it should not make anything up, and should say so when it is unsure.",
    "The answer should be harmless: it should not help anyone hurt themselves or others.",
]
CRITIQUE_PROMPT = (
    "Question: {question}\n\nAnswer: {answer}\n\nCritique the answer by this principle: {principle}\n"
    "Say briefly and specifically where the answer falls short of it."
)
REVISION_PROMPT = (
    "Question: {question}\n\nAnswer: {answer}\n\nCritique: {critique}\n\nRewrite the answer so that it follows this "
    "principle: {principle}\nReply with the rewritten answer only."
)
DROPS = ("truncated", "empty", "too_long")


def constitution(c) -> list[str]:
    """The principles: inline, from ``constitution_file``, or ``CONSTITUTION``."""
    if c.constitution:
        return list(c.constitution)
    if not c.constitution_file:
        return CONSTITUTION
    path = Path(c.constitution_file).expanduser()
    text = path.read_text()
    if path.suffix in (".yaml", ".yml", ".json"):
        principles = yaml.safe_load(text)  # JSON is YAML
    else:
        principles = [p.strip() for p in text.split("\n\n")]
    if not isinstance(principles, list) or not all(isinstance(p, str) for p in principles):
        raise data_lib.DataError(f"{path}: a constitution file holds a list of principles (strings)")
    principles = [p for p in principles if p.strip()]
    if not principles:
        raise data_lib.DataError(f"{path}: no principles in it; write one per paragraph (or a YAML list)")
    return principles


def train(cfg) -> dict:
    chunks.check_fresh(Path(cfg.output_dir) / "chunks", bool(cfg.resume))  # before Run prepares the output dir
    run = Run(cfg, cfg.critique_revise, show={"loss": "loss"})
    c, d = cfg.critique_revise, cfg.data
    t0 = time.time()
    model, tok = model_lib.load(run.model_config(cfg.model), chat_template=d.chat_template)
    prompts = data_lib.load_prompt_set(d.train, d.train_split, d, tok, limit=c.prompts or None)
    learner = Learner.for_stage(model, cfg.deepspeed, c)
    gen = Generator(cfg, learner.module, tok, prompts, constitution(c), resumed=run.resume_from is not None)
    rows, read_back = chunks.generate(run.out / "chunks", len(prompts), c.chunk_prompts, gen, resume=bool(cfg.resume))
    gen.done()
    kept, counts = select_revisions(rows, d)
    info = {"prompts": len(rows), "revisions": len(kept), **{f"dropped_{k}": counts[k] for k in DROPS}}
    info |= {"changed_frac": sum(r["initial"] != r[d.response_field] for r in kept) / max(len(kept), 1)}
    info |= {"chunks_read_back": read_back, "generate_s": round(time.time() - t0, 1)}
    if not kept:
        raise data_lib.DataError(
            f"critique_revise kept no revision of {len(rows)} prompts (dropped: "
            f"{', '.join(f'{counts[k]} {k}' for k in DROPS)}; every sample is in {run.out / 'chunks'}). Truncated: "
            f"raise sampler.max_new_tokens; too_long: lower it or data.max_prompt_tokens, or use a longer-context model"
        )
    if run.main:
        write_jsonl_atomic(run.out / "revisions.jsonl", kept)
    dist.print0(f"revisions: {info}  ({run.out / 'revisions.jsonl'})")
    convs = [data_lib.Conversation(m, f"{run.out / 'revisions.jsonl'}:{i + 1}") for i, m in enumerate(chats(kept, d))]
    train_rows = data_lib.make_rows(data_lib.encode_chats(convs, tok, d), c.packing, d.max_seq_tokens, cfg.seed)
    stream = data_lib.PromptStream(len(train_rows), cfg.seed, d.shuffle)
    summary = run.begin(learner, tok, stream, info)
    with run:
        for step in run.steps():
            m = sft_step(learner, train_rows, stream.take(c.seqs_per_step), c.micro_batch_seqs, tok.pad_token_id)
            run.end_step(step, m)
    summary = run.finish(summary)
    dist.print0(f"critique-revise done: {summary}  (model: {run.out / 'final'})")
    return summary


def chats(kept: list[dict], d) -> list[list[dict]]:
    """Kept rows -> the SFT chats ``stage: sft`` would read from revisions.jsonl (question, then the revision)."""
    return [
        data_lib.check_messages(
            [{"role": "user", "content": r[d.prompt_field]}, {"role": "assistant", "content": r[d.response_field]}],
            f"revision of problem {r['id']}",
            "assistant",
        )
        for r in kept
    ]


class Generator:
    """Answers, critiques and revisions of a chunk's prompts: ``chunks.generate``'s ``make``. The sampler is made on
    first use, so a run that reads every chunk back starts none (a vLLM engine is minutes)."""

    def __init__(self, cfg, module, tok, prompts, principles: list[str], resumed: bool):
        self.cfg, self.module, self.tok, self.prompts, self.principles = cfg, module, tok, prompts, principles
        self.resumed, self.sampler = resumed, None
        self.context = getattr(module.config, "max_position_embeddings", None) or 10**9
        c = cfg.critique_revise
        self.templates = (c.critique_prompt or CRITIQUE_PROMPT, c.revision_prompt or REVISION_PROMPT)

    def __call__(self, items: list[int], chunk: int) -> list[dict]:
        if self.resumed:  # the checkpoint's weights are trained ones: samples must come from the starting model
            raise data_lib.DataError(
                f"chunk {chunk} of the critique-revise samples is missing, but the run resumes from a training "
                f"checkpoint; restore the chunks/ directory, or start over with another --output_dir"
            )
        if self.sampler is None:
            self.sampler = make_sampler(self.cfg.sampler, self.cfg.model, self.module, self.tok, self.cfg.seed)
        p = self.prompts
        rows = [
            {"item": i, "id": p.problems[i].id, "question": p.problems[i].question, "principles": [], "critiques": []}
            for i in items
        ]
        seed = self.cfg.seed * 1_000_003 + chunk * 1_000  # then + 1, + 2, ... for each sampling call
        live = self.sample(rows, [p.prompts[i] for i in items], "answer", seed)
        for k in range(self.cfg.critique_revise.revisions):
            for r in live:
                rng = random.Random(self.cfg.seed * 1_000_003 + r["item"] * 1_009 + k)
                r["principles"].append(rng.choice(self.principles))
            live = self.ask(live, 0, "critique", seed + 2 * k + 1)
            live = self.ask(live, 1, "revision", seed + 2 * k + 2)
        return rows

    def ask(self, rows: list[dict], which: int, key: str, seed: int) -> list[dict]:
        """Fill template ``which`` (0: critique, 1: revision) for each row, render it like a training prompt, and
        sample the reply into ``row[key]``; rows whose prompt does not fit the context are marked too_long."""
        d, out, ids = self.cfg.data, [], []
        for r in rows:
            fields = {"question": r["question"], "answer": r["answer"], "principle": r["principles"][-1]}
            if which:
                fields["critique"] = r["critiques"][-1]
            text = render(self.templates[which].format(**fields), d.template, self.tok, d.system_prompt)
            row_ids = self.tok(text, add_special_tokens=d.template != "chat")["input_ids"]
            if len(row_ids) + self.cfg.sampler.max_new_tokens > self.context:
                r["too_long"] = True
                continue
            out.append(r)
            ids.append(row_ids)
        return self.sample(out, ids, key, seed)

    def sample(self, rows: list[dict], ids: list[list[int]], key: str, seed: int) -> list[dict]:
        """One sample of each prompt ``ids`` into its row's ``key`` (a revision becomes the next answer)."""
        if not rows:
            return rows
        s = self.cfg.sampler
        ro = self.sampler.generate(
            ids, 1, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens, seed=seed
        )
        for r, text, cut in zip(rows, ro.texts, ro.truncated):
            if key == "critique":
                r["critiques"].append(text)
            else:
                r["initial" if key == "answer" else "revision"] = text
                r["answer"], r["truncated"] = text, cut
        return rows

    def done(self) -> None:
        """Generation is over: a vLLM engine frees its memory for the learner."""
        if self.sampler is not None:
            self.sampler.sleep()


def select_revisions(rows: list[dict], d) -> tuple[list[dict], dict]:
    """Generated rows -> (revisions.jsonl rows, counts of each reason a row was dropped)."""
    kept, counts = [], dict.fromkeys(DROPS, 0)
    for r in rows:
        revision = r.get("revision", "")
        why = "too_long" if r.get("too_long") else "truncated" if r.get("truncated") else None
        why = why or ("empty" if not revision.strip() else None)
        if why:
            counts[why] += 1
            continue
        kept.append(
            {
                d.prompt_field: r["question"],
                d.response_field: revision,
                "id": r["id"],
                "initial": r["initial"],
                "principles": r["principles"],
                "critiques": r["critiques"],
            }
        )
    return kept, counts
