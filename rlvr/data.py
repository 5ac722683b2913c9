"""Problems for RL and evaluation: load rows, map fields, find the answer, render prompts.

Sources: a JSONL / JSON / parquet file (``.gz`` too), a directory saved by ``datasets``, or a hub
id for users online (``openai/gsm8k``, with ``data.train_split``). Field names map in the recipe
(``data.question_field``, ``data.answer_field``); GSM8K's ``#### answer`` convention is understood.
Every other column of a row travels to the verifiers as ``meta`` (test cases, entry points, ...).
"""

from __future__ import annotations

import ast
import gzip
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlvr.templates import render


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file, row and fix."""


@dataclass
class Problem:
    question: str
    answer: str
    meta: dict = field(default_factory=dict)
    id: str = ""


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """-> [(line number, row)] of a JSONL file (``.gz`` too); blank lines skipped, bad lines named."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{i}: a row must be a JSON object, got {type(row).__name__}")
            rows.append((i, row))
    return rows


def read_rows(source: str, split: str = "train", hub_config: str | None = None) -> list[tuple[str, dict]]:
    """-> [(where, row)] with ``where`` = 'file:line' (or 'source[split] row i') for error messages.
    ``hub_config``: the configuration of a hub dataset (GSM8K's "main")."""
    path = Path(source).expanduser()
    name = path.name.lower()
    if path.is_file() and (name.endswith(".jsonl") or name.endswith(".jsonl.gz")):
        return [(f"{path}:{i}", row) for i, row in read_jsonl(path)]
    if path.is_file() and name.endswith(".json"):
        data = json.loads(path.read_text())
        data = data.get(split, data) if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of row objects (or {{'{split}': [...]}})")
        return [(f"{path} row {i}", r) for i, r in enumerate(data)]
    import datasets

    if path.is_file() and name.endswith(".parquet"):
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    elif path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            ds = datasets.load_dataset(str(path), split=split)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split {split!r}; it has {', '.join(ds)}")
            ds = ds[split]
    elif path.suffix or "/" not in source or source.startswith((".", "/", "~")):
        raise DataError(
            f"dataset {source!r} not found: give a JSONL/JSON/parquet file, a dataset directory, or a hub id"
        )
    else:
        try:
            ds = datasets.load_dataset(source, hub_config, split=split)
        except Exception as e:  # network, auth or name errors all end the same way for the user
            raise DataError(
                f"could not load dataset {source!r} (split {split!r}) from the hub: {e}; offline, give "
                f"a local copy (a JSONL/JSON/parquet file)"
            ) from None
    return [(f"{source}[{split}] row {i}", dict(r)) for i, r in enumerate(ds)]


def parse_answer(raw, answer_format: str) -> str:
    text = str(raw).strip()
    if answer_format == "gsm8k" or (answer_format == "auto" and "####" in text):
        text = text.rsplit("####", 1)[-1].strip().replace(",", "")
    return text


def load_problems(
    source: str,
    split: str,
    question_field: str,
    answer_field: str,
    answer_format: str = "auto",
    id_field: str | None = None,
    question_format: str = "",
) -> list[Problem]:
    if not source:
        raise DataError("no dataset given: set data.train (and data.test) in the recipe")
    problems = []
    for i, (where, row) in enumerate(read_rows(source, split)):
        for key in (question_field, answer_field) if answer_field else (question_field,):
            if key not in row or row[key] is None:
                raise DataError(
                    f"{where}: row has no '{key}' field (it has: {', '.join(map(str, row)) or 'nothing'}); "
                    f"set data.question_field / data.answer_field to the dataset's names"
                )
        meta = {k: v for k, v in row.items() if k not in (question_field, answer_field)}
        pid = str(row[id_field]) if id_field and id_field in row else str(i)
        question = str(row[question_field])
        if question_format:
            cols = {k: "\n".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}
            try:
                question = question_format.format(**cols)
            except (KeyError, IndexError, ValueError) as e:
                raise DataError(
                    f"{where}: data.question_format {question_format!r} cannot be filled from this row "
                    f"({type(e).__name__}: {e}); its columns are {', '.join(map(str, row))}"
                ) from None
        answer = parse_answer(row[answer_field], answer_format) if answer_field else ""  # "": a reward model judges
        problems.append(Problem(question, answer, meta, pid))
    if not problems:
        raise DataError(f"{source}: no rows")
    return problems


def encode_prompts(
    problems: list[Problem],
    tokenizer,
    template: str,
    max_prompt_tokens: int,
    system: str | None = None,
    source: str = "",
) -> list[list[int]]:
    """Render and tokenize every prompt; a prompt over the budget is an error, never silently cut."""
    out = []
    for p in problems:
        text = render(p.question, template, tokenizer, system)
        ids = tokenizer(text, add_special_tokens=template != "chat")["input_ids"]
        if len(ids) > max_prompt_tokens:
            raise DataError(
                f"{source} problem {p.id}: prompt is {len(ids)} tokens, over data.max_prompt_tokens="
                f"{max_prompt_tokens}; raise it (and mind the model's context) or drop long rows"
            )
        out.append(ids)
    return out


# ---------------------------------------------------------------------------------------------
# Benchmarks for evaluation (rlvr.evaluate)

# name -> hub (id, config, split), fields, verifier, the column holding a reference solution, and the
# prompt template a base model is evaluated with (code sets are continued as plain text).
BENCHMARKS = {
    "gsm8k": dict(
        hub=("openai/gsm8k", "main", "test"),
        question="question",
        answer="answer",
        id=None,
        reference="answer",
        verifier="math",
        template="r1_zero",
    ),
    "math500": dict(
        hub=("HuggingFaceH4/MATH-500", None, "test"),
        question="problem",
        answer="answer",
        id="unique_id",
        reference="solution",
        verifier="math",
        template="r1_zero",
    ),
    "aime24": dict(
        hub=("HuggingFaceH4/aime_2024", None, "train"),
        question="problem",
        answer="answer",
        id="id",
        reference="solution",
        verifier="math",
        template="r1_zero",
    ),
    "humaneval": dict(
        hub=("openai/openai_humaneval", None, "test"),
        question="prompt",
        answer=None,
        id="task_id",
        reference="canonical_solution",
        verifier="code",
        template="plain",
    ),
    "mbpp": dict(
        hub=("google-research-datasets/mbpp", "full", "test"),
        question="text",
        answer=None,
        id="task_id",
        reference="code",
        verifier="code",
        template="plain",
    ),
}


MBPP_TEST_IDS = range(11, 511)  # the standard split: 1-10 are few-shot examples, 511+ train/validation


GROUP_FIELDS = ("subject", "level")  # per-group breakdown wherever every row has the field


def _first(row: dict, names) -> str | None:
    return next((f for f in names if f in row), None)


def load_benchmark(
    dataset: str,
    data_path: str | None = None,
    *,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
) -> tuple[list[Problem], dict]:
    """A named benchmark (hub, or ``data_path``) or a file -> (problems, spec). ``spec`` holds ``name``,
    ``verifier``, ``template``, ``reference`` (the column with a reference solution) and ``groups``."""
    dataset = str(dataset)
    if dataset in BENCHMARKS:
        spec = dict(BENCHMARKS[dataset], name=dataset)
        hub_id, hub_config, split = spec["hub"]
        rows = read_rows(data_path, split) if data_path else read_rows(hub_id, split, hub_config)
    elif Path(dataset).expanduser().exists() or data_path:
        rows = read_rows(data_path or dataset, "test")
        spec = dict(
            name=Path(data_path or dataset).name,
            question=None,
            answer=None,
            id=None,
            reference=None,
            verifier=None,
            template="r1_zero",
        )
    else:
        raise DataError(
            f"unknown dataset {dataset!r}: choose one of {', '.join(BENCHMARKS)}, or give a path to "
            f"a JSONL/JSON/parquet file"
        )
    if not rows:
        raise DataError(f"{data_path or dataset}: no rows")
    first = rows[0][1]
    code = "test_list" in first or ("test" in first and "entry_point" in first)
    spec["verifier"] = spec["verifier"] or ("code" if code else "math")
    spec["question"] = question_field or spec["question"] or _first(first, ("question", "problem", "prompt", "text"))
    spec["answer"] = answer_field or spec["answer"] or (None if code else _first(first, ("answer", "solution")))
    if id_field:
        spec["id"] = id_field
    elif dataset not in BENCHMARKS:
        spec["id"] = _first(first, ("unique_id", "task_id", "id"))
    spec["reference"] = (
        spec["reference"]
        or _first(first, ("solution", "canonical_solution", "code"))
        or (spec["answer"] if "####" in str(first.get(spec["answer"], "")) else None)
    )
    spec["groups"] = [g for g in GROUP_FIELDS if all(g in r for _, r in rows)]
    if spec["question"] is None:
        raise DataError(
            f"{rows[0][0]}: no question field (looked for question, problem, prompt, text; the row has "
            f"{', '.join(first)}); name it with --question_field"
        )

    problems = [p for i, (where, row) in enumerate(rows) if (p := _benchmark_problem(i, where, row, spec, dataset))]
    if len({p.id for p in problems}) != len(problems):
        raise DataError(
            f"{data_path or dataset}: problem ids ({spec['id'] or 'row index'}) are not unique; "
            f"name a unique field with --id_field"
        )
    return problems, spec


def _benchmark_problem(i: int, where: str, row: dict, spec: dict, dataset: str) -> Problem | None:
    """One benchmark row -> its Problem (None: a row the benchmark's published numbers leave out)."""
    meta = dict(row)
    if "test_list" in meta:
        if dataset == "mbpp" and int(meta["task_id"]) not in MBPP_TEST_IDS:
            return None
        for key in ("test_list", "challenge_test_list"):  # some copies store the lists as Python literals
            if isinstance(meta.get(key), str):
                meta[key] = ast.literal_eval(meta[key])
        # MBPP's published numbers use test_list only; the code verifier would add the challenge tests.
        meta.pop("challenge_test_list", None)
    for key in (spec["question"], spec["answer"], spec["id"]):
        if key is not None and row.get(key) is None:
            raise DataError(f"{where}: row has no '{key}' field (it has: {', '.join(row)})")
    question = str(row[spec["question"]])
    if "test_list" in meta and spec["question"] == "text":  # MBPP's standard prompt shows the tests
        question = f"{question}\nYour code should pass these tests:\n\n" + "\n".join(meta["test_list"]) + "\n"
    answer = parse_answer(row[spec["answer"]], "auto") if spec["answer"] else ""
    if spec["name"] == "aime24":  # "025": an integer written with leading zeros
        answer = str(int(answer))
    pid = str(row[spec["id"]]) if spec["id"] else str(i)
    return Problem(question, answer, meta, pid)


def read_predictions(path: str | Path, problems: list[Problem], dataset: str) -> list[dict]:
    """``{"id", "completion"}`` lines -> records (sample numbers in file order per id); every bad line is
    an error naming the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"predictions file {path} does not exist")
    ids = {p.id for p in problems}
    example = ", ".join(repr(p.id) for p in problems[:3])
    counts: Counter = Counter()
    records = []
    for line_no, row in read_jsonl(path):
        for key in ("id", "completion"):
            if key not in row:
                raise DataError(
                    f"{path}:{line_no}: missing field '{key}'; each line is "
                    f'{{"id": ..., "completion": "..."}} (it has: {", ".join(row) or "nothing"})'
                )
        if not isinstance(row["completion"], str):
            raise DataError(f"{path}:{line_no}: 'completion' must be a string, got {type(row['completion']).__name__}")
        pid = str(row["id"])
        if pid not in ids:
            raise DataError(
                f"{path}:{line_no}: unknown problem id {pid!r} for dataset {dataset} (its ids look "
                f"like {example}; GSM8K and plain files use the 0-based row index)"
            )
        records.append({"id": pid, "sample": counts[pid], "prompt": None, "completion": row["completion"]})
        counts[pid] += 1
    if not records:
        raise DataError(f"{path}: no predictions")
    return records


@dataclass
class PromptSet:
    """Problems with their prompts rendered and tokenized, as the sampler sees them."""

    problems: list[Problem]
    prompts: list[list[int]]  # token ids
    texts: list[str]  # the prompts decoded: what reward functions are given

    def __len__(self) -> int:
        return len(self.problems)


def load_prompt_set(source: str, split: str, d, tokenizer, limit: int | None = None) -> PromptSet:
    """``data`` section ``d`` -> the problems of ``source`` (the first ``limit``), rendered with ``d.template``."""
    problems = load_problems(
        source, split, d.question_field, d.answer_field, d.answer_format, question_format=d.question_format
    )[:limit]
    prompts = encode_prompts(problems, tokenizer, d.template, d.max_prompt_tokens, d.system_prompt, source)
    return PromptSet(problems, prompts, [tokenizer.decode(p) for p in prompts])


def load_train_test(cfg, tokenizer, context: int | None) -> tuple[PromptSet, PromptSet]:
    """The sampling stages' problems: ``data.train`` and the first ``eval.problems`` of ``data.test``, rendered;
    the longest prompt plus ``sampler.max_new_tokens`` must fit the model's ``context``."""
    d = cfg.data
    train_set = load_prompt_set(d.train, d.train_split, d, tokenizer)
    test_set = load_prompt_set(d.test, d.test_split, d, tokenizer, limit=cfg.eval.problems)
    check_context(
        train_set.prompts + test_set.prompts,
        cfg.sampler.max_new_tokens,
        context,
        "sampler.max_new_tokens",
        "lower it or data.max_prompt_tokens",
    )
    return train_set, test_set


def check_context(prompts: list[list[int]], max_new_tokens: int, context: int | None, setting: str, fix: str) -> None:
    """The longest prompt plus the generation budget (``setting``) must fit the model's context (None: unknown)."""
    longest = max(map(len, prompts), default=0)
    if context and longest + max_new_tokens > context:
        raise DataError(
            f"the longest prompt ({longest} tokens) plus {setting}={max_new_tokens} exceeds the model's "
            f"context of {context} tokens; {fix}"
        )


class PromptStream:
    """Endless shuffled passes over the training problems; its position is two integers (resume)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._permutation()


# ---------------------------------------------------------------------------------------------
# Conversations (SFT) and preference pairs (DPO, reward model)

ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    """A chat for SFT: an optional system message, then user/assistant turns, ending with the assistant."""

    messages: list[dict]
    where: str = ""


@dataclass
class Preference:
    """One preference pair: the chat up to the user's last turn, and two different assistant replies."""

    prompt: list[dict]
    chosen: str
    rejected: str
    where: str = ""


def _field(row: dict, key: str, where: str, setting: str):
    if key not in row or row[key] is None:
        raise DataError(
            f"{where}: row has no '{key}' field (it has: {', '.join(map(str, row)) or 'nothing'}); "
            f"set {setting} to the dataset's name for it"
        )
    return row[key]


def check_messages(messages, where: str, last: str) -> list[dict]:
    """Messages must be {role, content} dicts: an optional leading system message, then user and
    assistant alternating from the user, ending with ``last``; no empty turns."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {i} must be an object with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: message {i} has role {m['role']!r}; roles are {', '.join(ROLES)}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise DataError(f"{where}: message {i} ({m['role']}) is empty")
        out.append({"role": m["role"], "content": m["content"]})
    turns = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            got = [m["role"] for m in out]
            raise DataError(
                f"{where}: roles must alternate user/assistant after an optional system message, "
                f"got {' -> '.join(got)} (turn {i + (len(out) - len(turns))} should be {want})"
            )
    if not turns or turns[-1]["role"] != last:
        raise DataError(
            f"{where}: the conversation must end with a {last} message, got {' -> '.join(m['role'] for m in out)}"
        )
    return out


def load_conversations(source: str, split: str, d) -> list[Conversation]:
    """SFT rows: a ``d.messages_field`` chat, or ``d.prompt_field`` + ``d.response_field`` strings."""
    if not source:
        raise DataError("no dataset given: set data.train (and data.test) in the recipe")
    out = []
    for where, row in read_rows(source, split):
        if d.messages_field in row:
            msgs = row[d.messages_field]
        elif d.prompt_field in row or d.response_field in row:
            prompt = _field(row, d.prompt_field, where, "data.prompt_field")
            response = _field(row, d.response_field, where, "data.response_field")
            if not isinstance(response, str) or not response.strip():
                raise DataError(f"{where}: empty response in '{d.response_field}'")
            msgs = (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]) + [
                {"role": "assistant", "content": response}
            ]
        else:
            raise DataError(
                f"{where}: row has neither '{d.messages_field}' nor '{d.prompt_field}'/'{d.response_field}' "
                f"(it has: {', '.join(map(str, row)) or 'nothing'}); set data.messages_field or "
                f"data.prompt_field / data.response_field"
            )
        out.append(Conversation(check_messages(msgs, where, "assistant"), where))
    if not out:
        raise DataError(f"{source}: no rows")
    return out


def _reply(value, where: str, name: str, prompt: list[dict] | None) -> tuple[list[dict] | None, str]:
    """A chosen/rejected value -> (the chat before the reply if the value carries one, the reply).
    A message list is either the whole conversation (UltraFeedback style) or, starting with the
    assistant, the reply to ``prompt`` (TRL's prompt + completion style)."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty '{name}' response")
        return None, value
    if isinstance(value, list) and value:
        first = value[0].get("role") if isinstance(value[0], dict) else None
        if first == "assistant" and prompt is None:
            raise DataError(f"{where}: '{name}' holds only the reply, and the row has no prompt; set data.prompt_field")
        msgs = check_messages(prompt + value if first == "assistant" else value, where + f" ('{name}')", "assistant")
        return msgs[:-1], msgs[-1]["content"]
    raise DataError(f"{where}: '{name}' must be a non-empty string or a list of messages, got {value!r:.80}")


def load_preferences(source: str, split: str, d) -> list[Preference]:
    """Preference rows: ``prompt`` (string or messages) with ``chosen``/``rejected`` replies (strings or
    messages), or chosen/rejected as whole conversations sharing everything but the last reply."""
    if not source:
        raise DataError("no dataset given: set data.train (and data.test) in the recipe")
    out = []
    for where, row in read_rows(source, split):
        chosen = _field(row, d.chosen_field, where, "data.chosen_field")
        rejected = _field(row, d.rejected_field, where, "data.rejected_field")
        prompt = row.get(d.prompt_field)
        if prompt is None and (isinstance(chosen, str) or isinstance(rejected, str)):
            _field(row, d.prompt_field, where, "data.prompt_field")  # string replies need a prompt: raises
        if isinstance(prompt, str):
            if not prompt.strip():
                raise DataError(f"{where}: empty prompt in '{d.prompt_field}'")
            prompt = [{"role": "user", "content": prompt}]
        elif prompt is not None:
            prompt = check_messages(prompt, where + f" ('{d.prompt_field}')", "user")
        ctx_c, text_c = _reply(chosen, where, d.chosen_field, prompt)
        ctx_r, text_r = _reply(rejected, where, d.rejected_field, prompt)
        if ctx_c is not None and ctx_r is not None and ctx_c != ctx_r:
            raise DataError(
                f"{where}: '{d.chosen_field}' and '{d.rejected_field}' conversations differ before the "
                f"last reply; a preference pair compares two replies to the same prompt"
            )
        if text_c.strip() == text_r.strip():
            raise DataError(
                f"{where}: chosen and rejected replies are identical; such a pair carries no preference (drop the row)"
            )
        out.append(Preference(ctx_c or ctx_r or prompt, text_c, text_r, where))
    if not out:
        raise DataError(f"{source}: no rows")
    return out


def chat_segments(
    messages: list[dict], tokenizer, template: str, system: str | None = None, where: str = ""
) -> list[tuple[list[int], bool]]:
    """Tokenize a chat ending with an assistant reply -> [(token ids, is_assistant)] in order.

    ``chat``: the tokenizer's chat template; each assistant segment is what the template adds for that
    reply (content and end-of-turn marker), everything between is context. Segments are tokenized
    separately, as the sampler sees them (the prompt, then what it generates). ``plain``/``r1_zero``:
    one user turn, rendered like an RL prompt; the reply is followed by EOS so the model learns to stop.
    ``system`` (data.system_prompt) is added when the chat has no system message of its own."""
    if template != "chat":
        turns = [m for m in messages if m["role"] != "system"]
        if len(turns) != 2:
            raise DataError(
                f"{where}: a multi-turn chat needs data.template: chat (template {template!r} renders one question)"
            )
        prompt = tokenizer(render(turns[0]["content"], template), add_special_tokens=True)["input_ids"]
        reply = tokenizer(turns[1]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return [(prompt, False), (reply, True)]
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "data.template is 'chat' but the tokenizer has no chat template; set data.chat_template "
            "or use template plain / r1_zero"
        )
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    segments, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not before.startswith(done) or not through.startswith(before):
            raise DataError(
                f"{where}: the chat template does not render conversations as prefixes of each other, "
                f"so assistant tokens cannot be located; use a template that does"
            )
        segments.append((tokenizer(before[len(done) :], add_special_tokens=False)["input_ids"], False))
        segments.append((tokenizer(through[len(before) :], add_special_tokens=False)["input_ids"], True))
        done = through
    return segments


def encode_chats(convs: list[Conversation], tok, d) -> list[tuple[list[int], list[float], int]]:
    """-> [(token ids, loss mask, index where the last assistant reply starts)] per conversation."""
    out = []
    for c in convs:
        segs = chat_segments(c.messages, tok, d.template, d.system_prompt, c.where)
        ids = [t for s, _ in segs for t in s]
        mask = [float(a) for s, a in segs for _ in s]
        if len(ids) > d.max_seq_tokens:
            raise DataError(
                f"{c.where}: example is {len(ids)} tokens, over data.max_seq_tokens="
                f"{d.max_seq_tokens}; raise it (within the model's context) or drop the row"
            )
        out.append((ids, mask, len(ids) - len(segs[-1][0])))
    return out


def make_rows(examples, packing: bool, max_len: int, seed: int) -> list[list[tuple[list[int], list[float]]]]:
    """Examples -> training rows: one example per row, or (packing) whole examples first-fit into rows of
    at most max_len tokens, in a seeded shuffled order; an example is never split across rows."""
    if not packing:
        return [[(ids, mask)] for ids, mask, _ in examples]
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    rows, lens = [], []
    for i in order:
        ids, mask, _ = examples[i]
        j = next((k for k, n in enumerate(lens) if n + len(ids) <= max_len), None)
        if j is None:
            rows.append([]), lens.append(0)
            j = len(rows) - 1
        rows[j].append((ids, mask))
        lens[j] += len(ids)
    return rows


def collate(rows, pad_id: int):
    """Rows of examples -> ids (B, L), attention (B, L) or None when packed, position ids (B, L), mask (B, L).

    A packed batch passes no attention mask: transformers reads the restarting position ids as example
    boundaries and keeps attention within each example. The padding tail is one more such "example"."""
    L = max(sum(len(ids) for ids, _ in r) for r in rows)
    B = len(rows)
    ids, pos = torch.full((B, L), pad_id, dtype=torch.long), torch.zeros((B, L), dtype=torch.long)
    attn, mask = torch.zeros((B, L), dtype=torch.long), torch.zeros((B, L))
    packed = any(len(r) > 1 for r in rows)
    for b, r in enumerate(rows):
        at = 0
        for e_ids, e_mask in r:
            n = len(e_ids)
            ids[b, at : at + n], mask[b, at : at + n] = torch.tensor(e_ids), torch.tensor(e_mask)
            pos[b, at : at + n], attn[b, at : at + n] = torch.arange(n), 1
            at += n
        pos[b, at:] = torch.arange(L - at)
    return ids, (None if packed else attn), pos, mask
