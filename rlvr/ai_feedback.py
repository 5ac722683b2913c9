"""AI feedback (RLAIF): preference pairs labelled by an LM judge instead of people. For each training prompt the policy
samples two answers; the judge (``rlvr.judge``, the ``judge`` section) compares them in both orders and the two
verdicts are averaged, so a judge that favours the first answer shown does not decide; the pairs it prefers by at
least ``ai_feedback.margin`` become chosen/rejected rows that ``stage: dpo`` and ``stage: reward_model`` read as is.
With ``ai_feedback.judge_by: pointwise`` the judge scores each answer alone instead (for a judge too small to
compare two: SmolLM2-135M-Instruct).

    python -m rlvr.train recipes/tiny_judge.yaml && python -m rlvr.train recipes/tiny_ai_feedback.yaml \\
        && python -m rlvr.train recipes/tiny_dpo.yaml --data.train=runs/tiny_ai_feedback/pairs.jsonl \\
        --dpo.lr=2e-4 --output_dir=runs/tiny_rlaif_dpo       # CPU, ~2.5 min in all
    python -m rlvr.train recipes/ai_feedback_qwen.yaml           # a real chat policy and judge (GPU)

Output (``OUTPUT_DIR``): ``pairs.jsonl``, one row per kept pair, the prompt under ``data.prompt_field`` and the answers
under ``data.chosen_field`` / ``data.rejected_field`` (the policy's sampled text), also ``id`` and ``preference``
(the judge's P(chosen better), >= 0.5); ``chunks/``, every pair with both verdicts, kept or not; ``summary.json``:
counts (kept, and dropped as ties under the margin, identical answers, a truncated chosen answer, or a prompt over
``judge.max_tokens``), the judge's ``position_bias`` (its pull towards the answer shown first: mean (P(first
better) + P(second better) - 1) / 2; 0 for a judge without one) and ``label_mass`` (the probability its next token
puts on the verdict tokens: near 0, the judge is not answering the question it is asked).

A truncated answer (no end) is never chosen: DPO would teach an end that was not sampled. No pair kept is an error
that says why the pairs were dropped.

Resume (``--resume=auto``): chunks of ``ai_feedback.chunk_prompts`` prompts are written whole (``rlvr.chunks``); a
stopped run reads the complete ones back and samples only the rest, and the margin is applied to all of them at the
end, so a resumed run may also change ``ai_feedback.margin``. N processes: each samples and judges its share of
every chunk.
"""

from __future__ import annotations

import time

from rlvr import chunks, data as data_lib, dist, judge as judge_lib, model as model_lib
from rlvr.log import write_json_atomic, write_jsonl_atomic
from rlvr.sampler import make_sampler

DROPS = ("tie", "identical", "truncated", "too_long")


def train(cfg) -> dict:
    """Sample, judge and write the pairs -> the summary (also ``summary.json``). Named ``train`` like every stage's
    entry; this one trains nothing."""
    t0 = time.time()
    out = chunks.start(cfg)
    d, a = cfg.data, cfg.ai_feedback
    model, tok = model_lib.load(cfg.model, chat_template=d.chat_template)
    prompts = data_lib.load_prompt_set(d.train, d.train_split, d, tok, limit=a.prompts or None)
    context = getattr(model.config, "max_position_embeddings", None)
    data_lib.check_context(prompts.prompts, cfg.sampler.max_new_tokens, context, "sampler.max_new_tokens", "lower it")
    sampler = make_sampler(cfg.sampler, cfg.model, model.eval(), tok, cfg.seed)
    judge = judge_lib.Judge.load(cfg.judge)

    def make(items: list[int], c: int) -> list[dict]:
        return judged_pairs(cfg, sampler, judge, prompts, items, c)

    rows, read_back = chunks.generate(out / "chunks", len(prompts), a.chunk_prompts, make, resume=bool(cfg.resume))
    pairs, counts = select_pairs(rows, a.margin, d)
    summary = {"prompts": len(rows), "pairs": len(pairs), **{f"dropped_{k}": counts[k] for k in DROPS}}
    summary |= {"chunks_read_back": read_back, **judge_stats(rows, a.judge_by), "wall_s": round(time.time() - t0, 1)}
    if not pairs:
        raise data_lib.DataError(
            f"ai_feedback kept no pair of {len(rows)} (dropped: {', '.join(f'{counts[k]} {k}' for k in DROPS)}; "
            f"judged pairs with both verdicts in {out / 'chunks'}). Ties: lower ai_feedback.margin (resume with "
            f"--resume=auto to reuse the judgements); identical: raise sampler.temperature; truncated: raise "
            f"sampler.max_new_tokens; too_long: raise judge.max_tokens"
        )
    if dist.is_main():
        write_jsonl_atomic(out / "pairs.jsonl", pairs)
        write_json_atomic(out / "summary.json", summary)
    dist.print0(f"ai feedback done: {summary}  (pairs: {out / 'pairs.jsonl'})")
    return summary


def judged_pairs(cfg, sampler, judge, prompts, items: list[int], c: int) -> list[dict]:
    """Two samples of each prompt ``items`` and the judge's verdict on them in both orders -> one row each."""
    if not items:
        return []
    ro = sampler.generate(
        [prompts.prompts[i] for i in items],
        2,
        temperature=cfg.sampler.temperature,
        top_p=cfg.sampler.top_p,
        max_new_tokens=cfg.sampler.max_new_tokens,
        seed=cfg.seed * 1_000_003 + c,
    )
    questions = [prompts.problems[i].question for i in items]
    if cfg.ai_feedback.judge_by == "pairwise":
        first, second = judge.compare_orders(questions, ro.texts[0::2], ro.texts[1::2])
    else:  # each scored alone: "a_first" and "b_first" hold the two scores
        first, second = judge.score(questions + questions, ro.texts[0::2] + ro.texts[1::2]).view(2, -1)
    pref = judge_lib.preference(first, second)
    mass = judge.last_mass.view(2, -1).mean(0)
    nan_free = [[None if x != x else x for x in t.tolist()] for t in (first, second, pref, mass)]  # NaN: not judged
    return [
        {
            "item": i,
            "id": prompts.problems[i].id,
            "question": questions[k],
            "a": ro.texts[2 * k],
            "b": ro.texts[2 * k + 1],
            "a_truncated": ro.truncated[2 * k],
            "b_truncated": ro.truncated[2 * k + 1],
            "a_first": nan_free[0][k],  # P(a better), a shown first (pointwise: a's score)
            "b_first": nan_free[1][k],  # P(b better), b shown first (pointwise: b's score)
            "preference": nan_free[2][k],  # P(a better), both orders
            "label_mass": nan_free[3][k],  # the mean over both orders
        }
        for k, i in enumerate(items)
    ]


def select_pairs(rows: list[dict], margin: float, d) -> tuple[list[dict], dict]:
    """Judged rows -> (pairs for DPO, counts of each reason a row was dropped)."""
    pairs, counts = [], dict.fromkeys(DROPS, 0)
    for r in rows:
        p = r["preference"]
        if p is None:
            why = "too_long"
        elif r["a"].strip() == r["b"].strip():
            why = "identical"
        elif p == 0.5 or abs(2 * p - 1) < margin:
            why = "tie"
        elif r["a_truncated"] if p > 0.5 else r["b_truncated"]:
            why = "truncated"
        else:
            chosen, rejected = (r["a"], r["b"]) if p > 0.5 else (r["b"], r["a"])
            pairs.append(
                {
                    d.prompt_field: r["question"],
                    d.chosen_field: chosen,
                    d.rejected_field: rejected,
                    "id": r["id"],
                    "preference": max(p, 1 - p),
                }
            )
            continue
        counts[why] += 1
    return pairs, counts


def judge_stats(rows: list[dict], judge_by: str) -> dict:
    """The judge's position bias (pairwise) and label mass over every judged row (read-back chunks included)."""
    judged = [r for r in rows if r["preference"] is not None]
    n = max(len(judged), 1)
    bias = sum(r["a_first"] + r["b_first"] - 1 for r in judged) / (2 * n)  # as judge.position_bias
    return {
        "position_bias": bias if judge_by == "pairwise" else None,
        "label_mass": sum(r["label_mass"] for r in judged) / n,
        "mean_margin": sum(abs(2 * r["preference"] - 1) for r in judged) / n,
    }
