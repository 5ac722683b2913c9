"""Rejection sampling (best-of-N, expert iteration; Llama 2's RS fine-tuning): for ``rejection_sampling.rounds``
rounds, sample ``samples_per_prompt`` completions of ``prompts_per_round`` training problems with the current
policy, score them with the recipe's ``rewards``, keep the best of each problem's, fine-tune on them with the SFT
loss, and sample the next round from the new policy.

    python -m rlvr.train recipes/tiny_rejection_sampling.yaml      # CPU demo: the tiny model and task
    python -m rlvr.train recipes/rejection_sampling_gsm8k.yaml     # a real model on GSM8K (GPU)

What a round keeps (``rejection_sampling.keep``, ``rlvr.algos.KEEP_RULES``): ``best``, each problem's sample with the
highest total reward; ``top_k``, its ``top_k`` highest; ``threshold``, every sample whose total reaches
``threshold``. Only eligible samples compete: with ``require_correct`` (one of the rewards' verifiers), those it
scores 1, and never a truncated one (no end: its SFT row would teach one that was not sampled). Ties go to the
earlier sample.

Round r writes ``OUTPUT_DIR/round_<r>/kept.jsonl``, one row per kept sample: the problem's question and the
completion's text under ``data.prompt_field`` / ``data.response_field``, so ``stage: sft`` with the same ``data``
settings reads it as is (``--data.train=OUTPUT_DIR/round_1/kept.jsonl``); also ``id``, ``sample``, ``reward`` and the
prompt's and completion's token ids, which this stage trains on (the sampler's own, never re-tokenised).
``round.json`` beside it holds the round's sampling metrics and marks the file complete. Then ``steps_per_round``
SFT steps (``rlvr.supervised``) of ``seqs_per_step`` kept samples, and the greedy held-out accuracy, as the RL stage
measures it (``eval`` section; samples in ``round_<r>/eval_samples.jsonl``).

Steps are SFT optimizer steps, numbered over all rounds (round r's are (r-1) x steps_per_round + 1 onwards).
Metrics, one dict per step: ``loss``, ``grad_norm``, ``tokens``, ``lr``; on a round's first step its sampling
(``round/kept``, ``round/reward_mean``, ``round/reward_kept_mean``, ``round/prompts_kept_frac``,
``round/sample_accuracy``, ...), on its last its held-out accuracy (``round/accuracy``).

Resume (``--resume=auto``) restores a step checkpoint (``checkpoint_every``, or one saved on SIGINT/SIGTERM): the
weights, optimizer and LR schedule, RNG, summary, the training problems' stream position (which problems later
rounds draw) and the position in the round's kept samples, which are read back from ``kept.jsonl``, never sampled
again. A round that had written its samples but not yet checkpointed when the run stopped is read back too; a
fresh run samples every round anew.
"""

from __future__ import annotations

import json
import shutil
import time

import torch

from rlvr import algos, data as data_lib, dist, grading, model as model_lib, rewards as rewards_lib
from rlvr.learner import Learner
from rlvr.log import write_json_atomic, write_jsonl_atomic
from rlvr.run import Run
from rlvr.sampler import make_sampler
from rlvr.supervised import sft_step


class RoundData:
    """The stage's data position, which ``Run`` checkpoints as its stream: the training problems' stream, which
    each round draws its prompts from, and the position in the current round's kept samples."""

    def __init__(self, n_problems: int, seed: int, shuffle: bool):
        self.seed, self.shuffle = seed, shuffle
        self.problems = data_lib.PromptStream(n_problems, seed, shuffle)
        self.kept: data_lib.PromptStream | None = None
        self._saved_kept = None  # a checkpoint's position in its round's kept samples

    def state(self) -> dict:
        return {"problems": self.problems.state(), "kept": self.kept.state() if self.kept else None}

    def load_state(self, state: dict) -> None:
        self.problems.load_state(state["problems"])
        self._saved_kept = state["kept"]

    def start_round(self, r: int, n_kept: int, mid_round: bool) -> None:
        """Round r's order over its ``n_kept`` samples; ``mid_round``: at the checkpoint's position in it."""
        self.kept = data_lib.PromptStream(n_kept, self.seed * 1_000_003 + r, self.shuffle) if n_kept else None
        if mid_round and self.kept is not None and self._saved_kept is not None:
            self.kept.load_state(self._saved_kept)
        self._saved_kept = None


class Policy:
    """The sampler beside the learner: asleep while the learner steps, woken and given the learner's weights before
    it samples again (no-ops for the hf sampler, which generates with the learner's own module)."""

    def __init__(self, sampler, learner: Learner):
        self.sampler, self.learner, self.stale = sampler, learner, False

    def sampling(self):
        if self.stale:
            self.sampler.wake()
            self.sampler.update_weights(self.learner.named_parameters_for_sync())
            self.stale = False
        return self.sampler

    def learning(self) -> Learner:
        if not self.stale:
            self.sampler.sleep()
            self.stale = True
        return self.learner


def train(cfg) -> dict:
    run = Run(cfg, cfg.rejection_sampling, show={"loss": "loss"})
    s, d = cfg.rejection_sampling, cfg.data
    model, tok = model_lib.load(run.model_config(cfg.model))
    train_set, test_set = data_lib.load_train_test(cfg, tok, getattr(model.config, "max_position_embeddings", None))
    learner = Learner.for_stage(model, cfg.deepspeed, s)
    policy = Policy(make_sampler(cfg.sampler, run.model_config(cfg.model), learner.module, tok, cfg.seed), learner)
    data = RoundData(len(train_set), cfg.seed, d.shuffle)
    pad = tok.pad_token_id

    def evaluate(name: str, samples: str) -> dict:  # every rank evaluates everything; rank 0 saves the samples
        ev = greedy_eval(cfg, policy.sampling(), test_set, run.out / samples if run.main else None)
        dist.print0(f"{name} greedy accuracy: {ev}")
        return ev

    summary = run.begin(
        learner,
        tok,
        data,
        {"train_problems": len(train_set)},
        initial=lambda: {"eval_initial": evaluate("initial", "eval_initial_samples.jsonl")},
    )
    rows, ev = [], {}
    with run:
        for step in run.steps():
            r, k = divmod(step - 1, s.steps_per_round)
            r, m = r + 1, {}
            if k == 0:  # the round starts: sample and select (or read back what a stopped run saved)
                rows, m = round_samples(cfg, policy, train_set, data.problems.take(s.prompts_per_round), r, run)
                data.start_round(r, len(rows), mid_round=False)
            elif step == run.first:  # resumed mid-round: its kept samples are on disk
                rows = read_kept(run.out / f"round_{r}", cfg, r)[0]
                data.start_round(r, len(rows), mid_round=True)
            if data.kept is not None:  # a round that kept nothing does not learn
                m |= sft_step(policy.learning(), rows, data.kept.take(s.seqs_per_step), s.micro_batch_seqs, pad)
            if k == s.steps_per_round - 1:  # the round ends: held-out greedy accuracy
                ev = evaluate(f"round {r}", f"round_{r}/eval_samples.jsonl")
                m |= {f"round/{key}": v for key, v in ev.items() if key != "n"}
            run.end_step(step, m)
    summary["eval_final"] = ev
    if run.main:  # the last round's greedy samples are the run's final ones (rlvr.reward_model scores them)
        shutil.copyfile(run.out / f"round_{s.rounds}" / "eval_samples.jsonl", run.out / "eval_final_samples.jsonl")
    summary = run.finish(summary)
    dist.print0(f"rejection sampling done: {summary}  ({summary['wall_s']} s; outputs in {run.out})")
    return summary


def round_samples(cfg, policy: Policy, train_set, idx: list[int], r: int, run: Run) -> tuple[list, dict]:
    """Round r's kept samples of the problems ``idx`` as training rows, and its sampling metrics: read back from
    ``round_<r>/`` when a resumed run finds them complete there, else sampled (each rank its share), scored,
    selected and saved."""
    where = run.out / f"round_{r}"
    if run.resume_from is not None and (where / "round.json").exists():
        return read_kept(where, cfg, r)
    kept, sums = sample_and_select(cfg, policy.sampling(), train_set, dist.shard(idx), r)
    kept = [row for part in dist.gather_objects(kept) for row in part]  # in rank order, on every rank
    reduce = {k: (dist.global_max if k.startswith("perf/") else dist.global_sum)(v) for k, v in sorted(sums.items())}
    m = round_metrics(cfg, reduce, len(idx))
    if not kept:
        dist.print0(f"round {r} kept no samples: its steps do not learn (see round/* in metrics.jsonl)")
    if run.main:
        where.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(where / "kept.jsonl", kept)
        write_json_atomic(where / "round.json", m)  # last: marks the round's samples complete
    dist.barrier()
    return training_rows(kept, cfg, r), m


def sample_and_select(cfg, sampler, train_set, idx: list[int], r: int) -> tuple[list[dict], dict]:
    """``samples_per_prompt`` completions of each problem ``idx``, scored by the recipe's rewards and selected by
    ``rejection_sampling.keep`` -> (kept rows, as ``kept.jsonl`` holds them; sums behind the round's metrics)."""
    s, n = cfg.rejection_sampling, cfg.rejection_sampling.samples_per_prompt
    t0 = time.time()
    ro = sampler.generate(
        [train_set.prompts[i] for i in idx],
        n,
        temperature=cfg.sampler.temperature,
        top_p=cfg.sampler.top_p,
        max_new_tokens=cfg.sampler.max_new_tokens,
        seed=cfg.seed * 1_000_003 + r * 101,
    )
    t1 = time.time()
    problems = [train_set.problems[i] for i in idx for _ in range(n)]
    total, rm, raw = rewards_lib.score(
        cfg.rewards,
        [train_set.texts[i] for i in idx for _ in range(n)],
        ro.texts,
        problems,
        timeout_s=s.verifier_timeout_s,
        workers=s.verifier_workers,
    )
    eligible = ~torch.tensor(ro.truncated, dtype=torch.bool)
    if s.require_correct:
        eligible &= raw[rewards_lib.reward_name(s.require_correct)] >= 1.0
    keep = algos.KEEP_RULES[s.keep](total.view(-1, n), eligible.view(-1, n), k=s.top_k, threshold=s.threshold)
    rows = keep.flatten().nonzero().flatten().tolist()
    d = cfg.data
    kept = [
        {
            d.prompt_field: problems[i].question,
            d.response_field: ro.texts[i],
            "id": problems[i].id,
            "sample": i % n,
            "reward": total[i].item(),
            "prompt_ids": ro.prompt_ids[i],
            "completion_ids": ro.completion_ids[i],
        }
        for i in rows
    ]
    sums = {k: v * (1 if k.startswith("verifier/") else len(ro)) for k, v in rm.items()}
    sums |= {
        "samples": len(ro),
        "kept": len(rows),
        "reward_sum": total.sum().item(),
        "kept_reward_sum": total[rows].sum().item(),
        "prompts_kept": keep.any(dim=1).sum().item(),
        "truncated": sum(ro.truncated),
        "perf/sample_s": t1 - t0,
        "perf/verify_s": time.time() - t1,
    }
    if cfg.eval.verifier in raw:
        sums["correct"] = (raw[cfg.eval.verifier] >= 1.0).sum().item()
    return kept, sums


def round_metrics(cfg, sums: dict, prompts: int) -> dict:
    """The sums over every rank's samples -> the round's metrics (``perf/``: the slowest rank's times)."""
    s, n, kept = cfg.rejection_sampling, sums["samples"], sums["kept"]
    m = {
        "round/kept": kept,
        "round/prompts_kept_frac": sums["prompts_kept"] / prompts,
        "round/reward_mean": sums["reward_sum"] / n,
        "round/reward_kept_mean": sums["kept_reward_sum"] / max(kept, 1),
        "round/truncated_frac": sums["truncated"] / n,
        "round/epochs": s.steps_per_round * s.seqs_per_step / max(kept, 1),  # passes over the kept samples
    }
    if "correct" in sums:
        m["round/sample_accuracy"] = sums["correct"] / n
    m |= {k: v / n for k, v in sums.items() if k.startswith("reward/")}
    m |= {k: v for k, v in sums.items() if k.startswith("verifier/")}
    return m | {k: v for k, v in sums.items() if k.startswith("perf/")}


def read_kept(where, cfg, r: int) -> tuple[list, dict]:
    """Round r's kept samples, saved by ``round_samples`` -> (training rows, the round's metrics)."""
    if not (where / "round.json").exists():
        raise data_lib.DataError(
            f"{where}: round {r}'s kept samples are missing (round.json, kept.jsonl), and a resumed run mid-round "
            f"trains on them rather than sampling again; restore them, or start a fresh run"
        )
    kept = [row for _, row in data_lib.read_jsonl(where / "kept.jsonl")]
    return training_rows(kept, cfg, r), json.loads((where / "round.json").read_text())


def training_rows(kept: list[dict], cfg, r: int) -> list:
    """Kept rows -> SFT rows (``rlvr.data.make_rows``) of the sampler's own token ids, the completion's the targets."""
    examples = [
        (
            row["prompt_ids"] + row["completion_ids"],
            [0.0] * len(row["prompt_ids"]) + [1.0] * len(row["completion_ids"]),
            0,
        )
        for row in kept
    ]
    max_len = cfg.data.max_prompt_tokens + cfg.sampler.max_new_tokens
    return data_lib.make_rows(examples, cfg.rejection_sampling.packing, max_len, cfg.seed * 1_000_003 + r)


def greedy_eval(cfg, sampler, test_set, samples_path=None) -> dict:
    """Greedy held-out accuracy (``rlvr.grading.greedy_accuracy``, the ``eval`` section's verifiers), samples saved
    to ``samples_path``."""
    return grading.greedy_accuracy(
        sampler,
        test_set.problems,
        test_set.prompts,
        verifier=cfg.eval.verifier,
        format_verifier=cfg.eval.format_verifier,
        max_new_tokens=cfg.eval.max_new_tokens or cfg.sampler.max_new_tokens,
        timeout_s=cfg.rejection_sampling.verifier_timeout_s,
        batch_seqs=cfg.sampler.batch_seqs,
        samples_path=samples_path,
    )
