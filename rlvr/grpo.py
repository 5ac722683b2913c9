"""GRPO, R1-Zero style: sample -> verify -> advantages -> loss -> step -> sync, one screen per stage.

    python -m rlvr.train recipes/tiny_zero.yaml                 # the CPU demo, a few minutes
    python -m rlvr.train recipes/r1_zero.yaml --grpo.lr=1e-6    # the GPU recipe

Each step draws ``prompts_per_step`` problems, samples ``samples_per_prompt`` completions of each,
scores them with the recipe's verifiers, normalises rewards within each group, and takes
``passes_per_step`` x ``optimizer_steps_per_pass`` clipped policy-gradient steps with the importance
ratio against the sampler's own log-probabilities (with ``grpo.tis_cap``: against the learner's own,
each token weighted by the truncated learner/sampler ratio). The algorithm math lives in ``rlvr.algos``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from dataclasses import dataclass

import torch
from tqdm import tqdm

from rlvr import algos, checkpoint as ckpt, config as config_lib, data as data_lib, dist, model as model_lib, packing, rewards as rewards_lib
from rlvr.learner import Learner
from rlvr.log import MetricsLogger, write_json_atomic
from rlvr.evaluate import evaluate_problems, plot_run
from rlvr.sampler import HFSampler, Rollout


@dataclass
class Batch:
    """A scored rollout ready for the learner (group by group)."""

    rollout: Rollout
    advantages: torch.Tensor  # (B,)


class SamplerCrash(RuntimeError):
    """The sampler raised; carries the batch (dataset rows and problem ids) it was generating."""

    def __init__(self, step: int, rows: list[int], ids: list[str], cause: BaseException):
        super().__init__(f"the sampler failed at step {step} generating problems {ids} (train rows {rows}): "
                         f"{type(cause).__name__}: {cause}")
        self.rows, self.ids = rows, ids


def make_sampler(cfg, model, tokenizer):
    if cfg.sampler.backend == "hf":
        return HFSampler(model, tokenizer, batch_seqs=cfg.sampler.batch_seqs, compile=cfg.sampler.compile)
    from rlvr.vllm_sampler import VLLMSampler

    return VLLMSampler(cfg.model, cfg.sampler, seed=cfg.seed)


def sample_and_score(cfg, sampler, stream, problems, prompts, prompt_texts, step) -> tuple[Batch | None, dict]:
    """sample -> verify -> advantages, with DAPO dynamic sampling: keep drawing prompts until
    ``prompts_per_step`` groups have informative (not all equal) rewards, or the rounds run out."""
    g, G = cfg.grpo, cfg.grpo.samples_per_prompt
    kept, kept_r, seen_r, raw_all, m = [], [], [], {}, {}
    t_sample = t_verify = 0.0
    for round_ in range(g.max_sampling_rounds if g.dynamic_sampling else 1):
        need = g.prompts_per_step - int(dist.global_sum(sum(len(r) // G for r in kept)))
        if need <= 0:
            break
        idx = dist.shard(stream.take(need))  # every rank draws the same prompts (one stream) and keeps its share
        t0 = time.time()
        try:
            ro = sampler.generate([prompts[i] for i in idx], G, temperature=cfg.sampler.temperature,
                                  top_p=cfg.sampler.top_p, max_new_tokens=cfg.sampler.max_new_tokens,
                                  seed=cfg.seed * 1_000_003 + step * 101 + round_)
        except Exception as e:  # a crash deep in generation is useless without the batch that caused it
            raise SamplerCrash(step, idx, [problems[i].id for i in idx], e) from e
        t1 = time.time()
        probs = [problems[i] for i in idx for _ in range(G)]
        r, rm, raw = rewards_lib.score(cfg.rewards, [prompt_texts[i] for i in idx for _ in range(G)], ro.texts, probs,
                                       timeout_s=g.verifier_timeout_s, workers=g.verifier_workers)
        if g.overlong == "penalty":
            lengths = torch.tensor([len(c) for c in ro.completion_ids])
            r = r + algos.overlong_penalty(lengths, cfg.sampler.max_new_tokens, g.overlong_buffer_tokens, g.overlong_penalty)
        t_sample, t_verify = t_sample + t1 - t0, t_verify + time.time() - t1
        for k, v in rm.items():  # failures add up over rounds; means are over everything sampled
            m[k] = m.get(k, 0.0) + v * (len(ro) if k.startswith("reward/") else 1)
        for k, v in raw.items():
            raw_all.setdefault(k, []).append(v)
        seen_r.append(r)
        keep = algos.informative_groups(r, G) if g.dynamic_sampling else torch.ones(len(idx), dtype=torch.bool)
        rows = [i * G + j for i in range(len(idx)) if keep[i] for j in range(G)]
        kept.append(ro.select(rows))
        kept_r.append(r[rows])
    n_seen = sum(len(r) for r in seen_r)
    seen = torch.cat(seen_r)
    m = {k: (v / n_seen if k.startswith("reward/") else v) for k, v in m.items()}
    m["reward/total"] = seen.mean().item()
    m["reward/std_in_group"] = seen.view(-1, G).std(dim=1).mean().item()
    if cfg.eval.verifier in raw_all:
        m["accuracy"] = (torch.cat(raw_all[cfg.eval.verifier]) >= 1.0).float().mean().item()
    rollout, r = Rollout.concat(kept), torch.cat(kept_r)
    m.update({"sampling/rounds": float(len(seen_r)), "sampling/kept_groups": float(len(rollout) // G),
              "perf/sample_s": t_sample, "perf/verify_s": t_verify})
    if g.dynamic_sampling and dist.world_size() > 1:
        rollout, r = deal_groups(rollout, r, G)
    if len(rollout) == 0:
        return None, m
    adv = algos.group_advantages(r, G, normalize_std=g.advantage == "grpo")
    if g.overlong == "mask":  # truncated completions teach nothing about the answer: zero their weight
        adv = adv * (1.0 - torch.tensor(rollout.truncated, dtype=torch.float))
    return Batch(rollout, adv), m


def deal_groups(rollout: Rollout, rewards: torch.Tensor, G: int) -> tuple[Rollout, torch.Tensor]:
    """Dynamic sampling keeps a different number of groups on each rank, possibly none on one (and then
    no rank could learn, the learner's calls being collective): every rank's kept groups, dealt out
    again rank-strided, so the ranks' shares differ by at most one group."""
    parts = dist.gather_objects((rollout, rewards.tolist()))
    every, r = Rollout.concat([p[0] for p in parts]), sum((p[1] for p in parts), [])
    rows = [g * G + j for g in dist.shard(range(len(every) // G)) for j in range(G)]
    return every.select(rows), torch.tensor([r[i] for i in rows])


def learn(learner: Learner, ref_model, batch: Batch, cfg, pad_id: int, step: int) -> dict:
    """loss -> step: passes x optimizer steps over the batch, micro-batched, exact loss normalisation."""
    g, T = cfg.grpo, cfg.sampler.temperature
    ro, B, G = batch.rollout, len(batch.rollout), cfg.grpo.samples_per_prompt
    device = next(learner.module.parameters()).device
    Tc = max(map(len, ro.completion_ids))
    old = torch.zeros(B, Tc)  # sampler log-probs, column j = completion token j
    for i, lp in enumerate(ro.logprobs):
        old[i, : len(lp)] = torch.tensor(lp)
    old, adv = old.to(device), batch.advantages.to(device)
    mask = (torch.arange(Tc)[None, :] < torch.tensor([len(c) for c in ro.completion_ids])[:, None]).float().to(device)
    # Micro-batches hold whole groups when they can, so each prompt's forward is shared by its samples.
    share = G if g.micro_batch_tokens or g.micro_batch_seqs % G == 0 else 1

    def logprobs(forward, rows, **kw):  # forward(fn, *args): the learner's (with gradients) or the reference's
        return forward(model_lib.grouped_logprobs, [ro.prompt_ids[r] for r in rows], [ro.completion_ids[r] for r in rows],
                       share, pad_id, T, padding_free=g.padding_free, share_prompt=g.share_prompt, **kw)

    def micro_batches(rows):
        if not g.micro_batch_tokens:
            return [rows[s:s + g.micro_batch_seqs] for s in range(0, len(rows), g.micro_batch_seqs)]
        groups = rows.view(-1, G)  # token budget over whole groups
        lens = [[len(ro.prompt_ids[r]) + len(ro.completion_ids[r]) for r in grp.tolist()] for grp in groups]
        if g.padding_free:  # a bin costs its tokens
            bins = packing.pack([sum(n) for n in lens], g.micro_batch_tokens)
        else:  # similar lengths together: a bin costs rows x its longest row
            bins = packing.pack([max(n) for n in lens], max(g.micro_batch_tokens // G, 1), padded=True)
        return [groups[b].reshape(-1) for b in bins]

    def score_all(forward, collective=False):  # no-grad log-probs of every row (B, Tc), micro-batch by micro-batch
        out, mbs = torch.zeros(B, Tc, device=device), micro_batches(torch.arange(B))
        # The learner under ZeRO-3 gathers weights in each forward: then every rank runs as many.
        with torch.no_grad():
            for i in range(int(dist.global_max(len(mbs))) if collective else len(mbs)):
                rows = mbs[min(i, len(mbs) - 1)].tolist()
                lp = logprobs(forward, rows)[0]
                if i < len(mbs):
                    out[rows, : lp.shape[1]] = lp
        return out

    ref = score_all(lambda fn, *args, **kw: fn(ref_model, *args, **kw)) if ref_model is not None else None
    # TIS: the clip ratio is taken against the learner's own log-probs before the update, and each token
    # weighted by min(learner / sampler probability, tis_cap), correcting for the sampler's drift (vLLM).
    prox = score_all(learner.forward, collective=True) if g.tis_cap else old
    is_weight = algos.truncated_is_weight(prox, old, g.tis_cap) if g.tis_cap else None
    per_opt = math.ceil(B / g.optimizer_steps_per_pass)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    sums: dict[str, float] = {}
    n_tok = float(mask.sum())

    def add(k, v):
        sums[k] = sums.get(k, 0.0) + float(v)

    for pass_ in range(g.passes_per_step):
        order = (torch.randperm(B // G, generator=gen)[:, None] * G + torch.arange(G)).view(-1)  # shuffle whole groups
        # Every rank's sequences make one loss: the denominator is global, and every rank runs as many
        # optimizer steps and backwards as the busiest one (ZeRO reduces inside backward and step).
        for o in range(int(dist.global_max(len(range(0, B, per_opt))))):
            rows = order[o * per_opt:(o + 1) * per_opt]
            denom = dist.global_sum(algos.loss_denominator(mask[rows], g.loss_agg))
            mbs = micro_batches(rows)
            for i in range(int(dist.global_max(len(mbs)))):
                mb, weight = (mbs[i], 1.0) if i < len(mbs) else (order[:g.micro_batch_seqs], 0.0)  # ran out: keep in step
                logp, m, ent = logprobs(learner.forward, mb.tolist(), with_entropy=True)
                m = m * weight
                w = m.shape[1]  # this micro-batch's longest completion
                pg, clipped = algos.clipped_surrogate(logp, prox[mb, :w], adv[mb], g.clip_low, g.clip_high)
                if is_weight is not None:
                    pg = pg * is_weight[mb, :w]
                per_tok = pg
                if ref is not None:
                    kl = algos.kl_estimate(logp, ref[mb, :w], g.kl_estimator)
                    per_tok = per_tok + g.beta * kl
                    add("kl", (kl.detach() * m).sum())
                if g.entropy_coef:
                    per_tok = per_tok - g.entropy_coef * ent
                loss = algos.masked_sum(per_tok, m, g.loss_agg, cfg.sampler.max_new_tokens) / denom
                learner.backward(loss)
                add("loss/total", loss.detach())
                add("loss/pg", algos.masked_sum(pg.detach(), m, g.loss_agg, cfg.sampler.max_new_tokens) / denom)
                add("clip_frac", (clipped * m).sum())
                add("entropy", (ent.detach() * m).sum())
                if pass_ == 0 and o == 0:  # weights untouched yet: learner vs sampler on the same tokens
                    add("mismatch/logprob_abs", ((logp.detach() - old[mb, :w]).abs() * m).sum())
                    add("mismatch/tokens", m.sum())
            grad_norm = learner.step()  # a non-finite loss or gradient on any rank: skipped (train() counts these)
            add("grad_norm", grad_norm)
            add("optimizer_steps", 1)
            if not math.isfinite(grad_norm):
                add("skipped_steps", 1)
    learner.scheduler.step()
    n_opt = sums.pop("optimizer_steps")
    for k in ("loss/total", "loss/pg", "clip_frac", "entropy", "mismatch/logprob_abs", "mismatch/tokens") + (("kl",) if ref is not None else ()):
        sums[k] = dist.global_sum(sums.get(k, 0.0))  # the same keys in the same order on every rank
    n_tok = dist.global_sum(n_tok)
    out = {
        "loss/total": sums["loss/total"] / n_opt, "loss/pg": sums["loss/pg"] / n_opt,
        "clip_frac": sums["clip_frac"] / (n_tok * g.passes_per_step), "entropy": sums["entropy"] / (n_tok * g.passes_per_step),
        "grad_norm": sums["grad_norm"] / n_opt, "lr": learner.scheduler.get_last_lr()[0],
        "mismatch/logprob_abs": sums["mismatch/logprob_abs"] / max(sums["mismatch/tokens"], 1.0),
        "skipped_steps": sums.get("skipped_steps", 0.0),
    }
    if "kl" in sums:
        out["kl"] = sums["kl"] / (n_tok * g.passes_per_step)
    if is_weight is not None:
        capped = (prox - old > math.log(g.tis_cap)).float()
        out["mismatch/tis_weight"] = dist.global_sum(float((is_weight * mask).sum())) / n_tok
        out["mismatch/tis_capped_frac"] = dist.global_sum(float((capped * mask).sum())) / n_tok
    return out


def evaluate_greedy(cfg, sampler, problems, prompts, out_dir=None, tag="eval") -> dict:
    """Greedy accuracy on held-out problems. ``accuracy``: the rewarded format *and* a right answer;
    ``accuracy_any_format``: a right final answer in whatever form the completion gives it."""
    max_new = cfg.eval.max_new_tokens or cfg.sampler.max_new_tokens
    ro = sampler.generate(prompts, 1, temperature=0.0, max_new_tokens=max_new, seed=cfg.seed)
    import verifiers

    answers, metas = [p.answer for p in problems], [p.meta for p in problems]
    right = verifiers.score_batch(cfg.eval.verifier, ro.texts, answers, metas, timeout_s=cfg.grpo.verifier_timeout_s)
    right = [bool(v and v >= 1.0) for v in right]
    if cfg.eval.format_verifier:
        fmt = verifiers.score_batch(cfg.eval.format_verifier, ro.texts, answers, metas, timeout_s=cfg.grpo.verifier_timeout_s)
        fmt = [bool(v and v >= 1.0) for v in fmt]
    else:
        fmt = [True] * len(right)
    if out_dir is not None:
        import json

        with open(out_dir / f"{tag}_samples.jsonl", "w") as f:
            for p, t, r, fo in zip(problems, ro.texts, right, fmt):
                f.write(json.dumps({"id": p.id, "question": p.question, "answer": p.answer, "completion": t,
                                    "correct": r, "format": fo}) + "\n")
    n = len(problems)
    return {"accuracy": sum(r and f for r, f in zip(right, fmt)) / n, "accuracy_any_format": sum(right) / n, "n": n}


def train(cfg) -> dict:
    t_start = time.time()
    out, resume_from = ckpt.start_run(cfg)
    main = dist.is_main()  # rank 0 alone writes files and prints; every rank computes
    if cfg.grpo.prompts_per_step % dist.world_size():
        raise config_lib.ConfigError(f"grpo.prompts_per_step={cfg.grpo.prompts_per_step} does not split over "
                                     f"{dist.world_size()} ranks; make it a multiple of the number of processes")
    dist.print0(f"resolved config (saved to {out / 'config.yaml'}):\n{config_lib.dump(cfg)}")
    d = cfg.data
    # A checkpoint is an HF model directory: the policy continues from it, the reference stays the base.
    model, tok = model_lib.load(dataclasses.replace(cfg.model, path=str(resume_from)) if resume_from else cfg.model)
    ckpt.check_space(out, ckpt.checkpoint_bytes(model))
    ref_model = None
    if cfg.grpo.beta > 0:
        ref_model, _ = model_lib.load(cfg.model)
        ref_model.eval().requires_grad_(False)
    load = lambda src, split: data_lib.load_problems(src, split, d.question_field, d.answer_field, d.answer_format,  # noqa: E731
                                                     question_format=d.question_format)
    train_set, test_set = load(d.train, d.train_split), load(d.test, d.test_split)
    test_set = test_set[: cfg.eval.problems]
    enc = lambda ps, src: data_lib.encode_prompts(ps, tok, d.template, d.max_prompt_tokens, d.system_prompt, src)  # noqa: E731
    train_prompts, test_prompts = enc(train_set, d.train), enc(test_set, d.test)
    train_texts = [tok.decode(p) for p in train_prompts]
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(map(len, train_prompts + test_prompts))
    if context and longest + cfg.sampler.max_new_tokens > context:
        raise data_lib.DataError(
            f"the longest prompt ({longest} tokens) plus sampler.max_new_tokens={cfg.sampler.max_new_tokens} exceeds "
            f"the model's context of {context} tokens; lower sampler.max_new_tokens or data.max_prompt_tokens")

    g = cfg.grpo
    learner = Learner.for_stage(model, cfg.deepspeed, g)
    model = learner.module
    sampler = make_sampler(cfg, model, tok)
    stream = data_lib.PromptStream(len(train_set), cfg.seed, d.shuffle)
    if resume_from:
        state = ckpt.restore(resume_from, learner, stream)
        summary, bad_steps, first = state["summary"], state["bad_steps"], state["step"] + 1
    else:
        summary, bad_steps, first = {"eval_initial": evaluate_greedy(cfg, sampler, test_set, test_prompts, out if main else None, "eval_initial")}, 0, 1
        dist.print0(f"initial greedy eval: {summary['eval_initial']}")
    logger = MetricsLogger(out, enabled=main, first_step=first)

    def save(step, bad_steps, score=None, **at):  # every rank calls: ZeRO shards are written by their ranks
        state = ckpt.loop_state(stream, summary=summary, bad_steps=bad_steps, **at)
        return ckpt.save_run(cfg, out, step, learner, tok, state, score)

    bar = tqdm(range(first, g.steps + 1), desc="grpo", dynamic_ncols=True, initial=first - 1, total=g.steps, disable=not main)
    with ckpt.StopRequest() as stop:
        for step in bar:
            t0 = time.time()
            at_start = {"data": stream.state(), "rng": ckpt.rng_state()}  # + untouched weights: a checkpoint of step - 1
            try:
                batch, metrics = sample_and_score(cfg, sampler, stream, train_set, train_prompts, train_texts, step)
            except SamplerCrash as e:
                traceback.print_exc()
                prev = out / "checkpoints" / f"step_{step - 1}"
                # Saving is collective: with other ranks still sampling, only a single process can save here.
                path = prev if ckpt.is_valid(prev) or dist.world_size() > 1 else save(step - 1, bad_steps, **at_start)
                raise ckpt.RunStopped(f"{e}. The state before this step is in {path}; fix the cause, then --resume=auto") from e
            if dist.world_size() > 1:  # rollout metrics over all ranks: means of means (equal shards), sums of counts
                metrics = {k: dist.global_sum(v) / (1 if k.startswith(("verifier/", "sampling/kept")) else dist.world_size())
                           for k, v in sorted(metrics.items()) if not k.startswith("perf/")} | {
                          k: v for k, v in metrics.items() if k.startswith("perf/")}
            if not dist.global_max(batch is None):  # all ranks learn, or none: the learner's calls are collective
                t1 = time.time()
                sampler.sleep()
                metrics.update(learn(learner, ref_model, batch, cfg, sampler.pad_id, step))
                sampler.wake()
                sampler.update_weights(learner.named_parameters_for_sync())
                metrics["perf/learn_s"] = time.time() - t1
                lens = torch.tensor([len(c) for c in batch.rollout.completion_ids], dtype=torch.float)
                metrics.update({"response/len": lens.mean().item(), "response/len_max": lens.max().item(),
                                "response/truncated_frac": sum(batch.rollout.truncated) / len(batch.rollout)})
                gen_tokens = lens.sum().item()
                metrics["perf/sample_tokens_per_s"] = gen_tokens / max(metrics["perf/sample_s"], 1e-9)
                metrics["perf/learn_tokens_per_s"] = (gen_tokens + sum(map(len, batch.rollout.prompt_ids))) * g.passes_per_step / max(metrics["perf/learn_s"], 1e-9)
            ckpt.crash_point(f"step{step}")
            metrics["perf/step_s"] = time.time() - t0
            if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step != g.steps:
                ev = evaluate_greedy(cfg, sampler, test_set, test_prompts)
                metrics.update({f"eval/{k}": v for k, v in ev.items() if k != "n"})
                if cfg.eval.samples:
                    ev = evaluate_problems(sampler, test_set, test_prompts, verifier=cfg.eval.verifier, n=cfg.eval.samples,
                                           k=sorted({1, cfg.eval.samples}), temperature=cfg.sampler.temperature,
                                           top_p=cfg.sampler.top_p, max_new_tokens=cfg.eval.max_new_tokens or cfg.sampler.max_new_tokens,
                                           seed=cfg.seed + step, greedy=False)
                    metrics.update({f"eval/{k}": v for k, v in ev.items() if isinstance(v, float)})
            logger.log(step, metrics)
            bar.set_postfix(reward=f"{metrics['reward/total']:.2f}", acc=f"{metrics.get('accuracy', float('nan')):.2f}")
            bad_steps = ckpt.end_step(cfg, stop, step, metrics, bad_steps, save)
    bar.close()

    summary["eval_final"] = evaluate_greedy(cfg, sampler, test_set, test_prompts, out if main else None, "eval_final")
    ckpt.save_model(learner, tok, out / "final")
    summary["steps"] = g.steps
    summary["wall_s"] = round(time.time() - t_start, 1)
    logger.close()
    if main:
        write_json_atomic(out / "summary.json", summary)
        plot_run(str(out))
    dist.print0(f"final greedy eval: {summary['eval_final']}  ({summary['wall_s']} s; outputs in {out}, curves in {out / 'curves.png'})")
    return summary
