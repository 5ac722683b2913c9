"""Problems for RL and evaluation: load rows, map fields, find the answer, render prompts.

Sources: a JSONL / JSON / parquet file (``.gz`` too), a directory saved by ``datasets``, or a hub
id for users online (``openai/gsm8k``, with ``data.train_split``). Field names map in the recipe
(``data.question_field``, ``data.answer_field``); GSM8K's ``#### answer`` convention is understood.
Every other column of a row travels to the verifiers as ``meta`` (test cases, entry points, ...).
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from rlvr.templates import render


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file, row and fix."""


@dataclass
class Problem:
    question: str
    answer: str
    meta: dict = field(default_factory=dict)
    id: str = ""


def read_rows(source: str, split: str = "train") -> list[tuple[str, dict]]:
    """-> [(where, row)] with ``where`` = 'file:line' (or 'source[split] row i') for error messages."""
    path = Path(source).expanduser()
    name = path.name.lower()
    if path.is_file() and (name.endswith(".jsonl") or name.endswith(".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
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
                rows.append((f"{path}:{i}", row))
        return rows
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
        raise DataError(f"dataset {source!r} not found: give a JSONL/JSON/parquet file, a dataset directory, or a hub id")
    else:
        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as e:  # network, auth or name errors all end the same way for the user
            raise DataError(f"could not load dataset {source!r} (split {split!r}) from the hub: {e}") from None
    return [(f"{source}[{split}] row {i}", dict(r)) for i, r in enumerate(ds)]


def parse_answer(raw, answer_format: str) -> str:
    text = str(raw).strip()
    if answer_format == "gsm8k" or (answer_format == "auto" and "####" in text):
        text = text.rsplit("####", 1)[-1].strip().replace(",", "")
    return text


def load_problems(source: str, split: str, question_field: str, answer_field: str, answer_format: str = "auto",
                  id_field: str | None = None) -> list[Problem]:
    if not source:
        raise DataError("no dataset given: set data.train (and data.test) in the recipe")
    problems = []
    for i, (where, row) in enumerate(read_rows(source, split)):
        for key in (question_field, answer_field):
            if key not in row or row[key] is None:
                raise DataError(
                    f"{where}: row has no '{key}' field (it has: {', '.join(map(str, row)) or 'nothing'}); "
                    f"set data.question_field / data.answer_field to the dataset's names")
        meta = {k: v for k, v in row.items() if k not in (question_field, answer_field)}
        pid = str(row[id_field]) if id_field and id_field in row else str(i)
        problems.append(Problem(str(row[question_field]), parse_answer(row[answer_field], answer_format), meta, pid))
    if not problems:
        raise DataError(f"{source}: no rows")
    return problems


def encode_prompts(problems: list[Problem], tokenizer, template: str, max_prompt_tokens: int,
                   system: str | None = None, source: str = "") -> list[list[int]]:
    """Render and tokenize every prompt; a prompt over the budget is an error, never silently cut."""
    out = []
    for p in problems:
        text = render(p.question, template, tokenizer, system)
        ids = tokenizer(text, add_special_tokens=template != "chat")["input_ids"]
        if len(ids) > max_prompt_tokens:
            raise DataError(
                f"{source} problem {p.id}: prompt is {len(ids)} tokens, over data.max_prompt_tokens="
                f"{max_prompt_tokens}; raise it (and mind the model's context) or drop long rows")
        out.append(ids)
    return out


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
