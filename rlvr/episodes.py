"""Multi-turn, tool-using episodes (agentic RL): a model turn, an environment's observation, the next turn, ...

    from rlvr import episodes
    make = episodes.make_env("python", {"timeout_s": 2.0})     # or "my_env.py:MyEnv", "package.module:MyEnv"
    eps = episodes.generate(sampler, make, problems, prompts, 8, temperature=1.0, max_new_tokens=256, max_turns=3)
    eps.rollout                      # a Rollout: completion = every turn and observation after the prompt
    eps.rewards(verifier_total)      # + per-turn rewards; 0 where the environment failed
    eps.metrics()                    # env/turns, env/tool_calls, env/tool_call_frac, env/tool_errors, env/failures
    setup = episodes.from_config(cfg.env)   # a recipe's env section: the class checked, the limits; None for none
    eps = setup.generate(sampler, problems, prompts, 8, temperature=1.0, max_new_tokens=256)

An environment is a class, made once per episode from its problem and the recipe's options, with one method:

    class Guess:
        stop = None                          # a model turn ends at EOS; or Stop(close, open): at a marker
        def __init__(self, problem, **options):
            self.answer = problem.answer
        def step(self, text: str):           # the model's turn, decoded
            if self.answer in text:
                return None                  # the episode is over
            return " Wrong, try again. Assistant:"   # appended to the episode; then the model's next turn

``step`` may also return ``Turn(observation, reward=..., error=...)``: per-turn rewards add up into the episode's
reward, ``error`` counts a failed tool call (``env/tool_errors``; the episode goes on, the observation says what
failed). The recipe's verifiers score the whole episode's text at the end, observations included. An environment
that raises (making it or in ``step``) ends that episode with reward 0, counted in ``env/failures``; its first
traceback is printed once. ``python`` (``PythonEnv``) is the built-in tool: a code block, run in the sandbox.

Token in, token out: each turn, the sampler continues every episode from its exact token ids (its prompt, its
sampled tokens, its observations' tokens), an observation is tokenised on its own and appended, and nothing already
sampled is ever decoded and encoded again. So the learner trains on exactly the tokens that were sampled, at the
positions they were sampled in (peers' multi-turn rollouts that re-tokenise the conversation do not: trl#5224,
verl#6719). Observation tokens have loss mask 0 and log-probability 0: the policy did not choose them (and a
log-prob of 0 keeps the ratio exp(learner - sampler) <= 1 there, so the masked-out terms stay finite). Encoding
alone, a SentencePiece tokenizer that adds a prefix space gives the observation one: its text, not its tokens, is
what changes, so write observations for the model's tokenizer.

A turn is one call of the sampler's ``generate_turn(prefixes, *, max_new_tokens, stop, temperature, top_p, seed)``
over the episodes still going (both backends have it): episodes waiting for a tool leave the batch and the next
turn's call takes them back. The tools of a turn run concurrently (threads; the sandbox runs programs in parallel).
``sampler.max_new_tokens`` is the whole episode's budget: its turns and observations together.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import inspect
import os
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

import sandbox
from rlvr import rewards
from rlvr.config import ConfigError
from rlvr.rollout import Rollout

# ----------------------------------------------------------------------------- where a turn ends


@dataclass(frozen=True)
class Stop:
    """A model turn ends right after the token that completes ``close`` in the text sampled after the token that
    completed ``open`` ("" : anywhere in the turn). ``Stop("```", "```python")`` ends it at the end of a Python
    block, not at the backticks that open it. Matched on the decoded text of the turn's tokens; the tokens are
    kept as sampled (the one completing ``close`` may hold more text after it)."""

    close: str
    open: str = ""

    def end(self, ids: list[int], decode: Callable, piece: Callable | None = None) -> int | None:
        """How many of ``ids`` (a turn's tokens) the turn keeps, or None when ``stop`` does not end it there.
        ``decode(ids) -> str``; ``piece(id) -> str``, one token's text (pass a cached one: it filters the
        positions worth decoding)."""
        piece = piece or (lambda i: decode([i]))
        start = 0
        for marker in (self.open, self.close):
            if marker:
                at = _completed_at(ids, start, marker, decode, piece)
                if at is None:
                    return None
                start = at + 1
        return start

    def could_end(self, ids: list[int], piece: Callable) -> bool:
        """Whether any of these tokens could complete a marker (its text holds a marker's last character)."""
        return any(m and (m[-1] in piece(i) or not m[-1].isascii()) for i in ids for m in (self.open, self.close))


def _completed_at(ids: list[int], start: int, marker: str, decode, piece) -> int | None:
    """The first j >= start with ``marker`` in decode(ids[start : j + 1]). Only tokens whose own text holds the
    marker's last character can complete it (any token, for a non-ASCII one: a byte-level piece may hold half)."""
    last = marker[-1]
    for j in range(start, len(ids)):
        if (last in piece(ids[j]) or not last.isascii()) and marker in decode(ids[start : j + 1]):
            return j
    return None


def turn_end(ids: list[int], limit: int, eos_ids, stop: Stop | None, decode, piece=None) -> tuple[int, bool]:
    """A turn's sampled tokens (any beyond its end included) -> (how many it keeps, whether its ``limit`` cut it):
    it ends after the first EOS, after the token where ``stop`` ends it, or after ``limit`` tokens. The samplers'
    one definition of where a turn ends."""
    ids = ids[:limit]
    eos = next((j for j, t in enumerate(ids) if t in eos_ids), None)
    keep = len(ids) if eos is None else eos + 1
    end = stop.end(ids[:keep], decode, piece) if stop is not None else None
    return (end, False) if end is not None else (keep, eos is None)


# ----------------------------------------------------------------------------- environments


@dataclass
class Turn:
    """What ``step`` returns when a plain observation string (or None) is not enough."""

    observation: str | None  # appended to the episode; None ends it
    reward: float = 0.0  # added to the episode's reward
    error: bool = False  # the tool failed (counted in env/tool_errors); the episode goes on


class PythonEnv:
    """The built-in tool (``python``): the model writes a Python block, the sandbox runs it, its output comes back.

    A model turn ends at the end of a block (``block_open`` ... ``block_close``); the code runs in
    ``sandbox.run_program`` (isolated; ``timeout_s`` of wall clock, ``memory_mb``). Its stdout, cut to
    ``max_output_chars``, then, when it failed, the last line of its stderr (the exception, e.g.
    ``ZeroDivisionError: division by zero``) or the sandbox's reason, comes back in ``output_format``. A crash, a
    timeout or a flood of output is an observation (``Turn.error``), never a failed episode; a turn without a
    complete block ends the episode. Only a failure of the sandbox itself raises.

    State persists across an episode's blocks (``persist``): each run first re-runs, output discarded, the blocks
    of the episode that ran cleanly, so the names they defined are there (at the cost of running them again, and
    of their randomness and time: a block that reads the clock sees a later one). ``persist=False``: every
    block runs alone."""

    def __init__(
        self,
        problem=None,
        *,
        block_open: str = "```python",
        block_close: str = "```",
        output_format: str = "\n```output\n{output}\n```\n",
        timeout_s: float = 5.0,
        memory_mb: int = 1024,
        max_output_chars: int = 512,
        persist: bool = True,
    ):
        self.stop = Stop(block_close, block_open)
        self.output_format, self.timeout_s, self.memory_mb = output_format, timeout_s, memory_mb
        self.max_output_chars, self.persist = max_output_chars, persist
        self.cells: list[str] = []  # the blocks that ran cleanly, replayed before the next (persist)

    def code(self, text: str) -> str | None:
        """The code of the block that closes the turn, or None when the turn did not end with one."""
        start = text.rfind(self.stop.open)
        if start < 0:
            return None
        body = text[start + len(self.stop.open) :]
        end = body.find(self.stop.close)
        return None if end < 0 else body[:end]

    def step(self, text: str) -> Turn | None:
        code = self.code(text)
        if code is None:
            return None
        program = _replay(self.cells, code) if self.persist else code
        v = sandbox.run_program(
            program, timeout_s=self.timeout_s, memory_mb=self.memory_mb, max_output_bytes=4 * self.max_output_chars
        )
        if v.sandbox_error:  # not the model's doing: fail the episode (reward 0, counted, printed once)
            raise RuntimeError(f"the sandbox failed: {v.reason}")
        if v.passed:
            self.cells.append(code)
        return Turn(self.output_format.format(output=self.render(v)), error=not v.passed)

    def render(self, v) -> str:
        """A run's verdict -> the observation's text: stdout (its first ``max_output_chars``), then, when it
        failed, one line saying why."""
        out, n = v.stdout.rstrip("\n"), self.max_output_chars
        out = out if len(out) <= n else out[: n - 4] + "\n..."
        if v.passed:
            return out
        lines = [line for line in v.stderr.strip().splitlines() if line.strip()]
        if v.status == "timeout":
            why = f"TimeoutError: the program ran past {self.timeout_s:g} s"
        else:  # the exception's line; else the sandbox's reason (an output flood, a signal, an exit status)
            why = lines[-1][-n:] if lines and v.exit_code else f"Error: {v.reason}"
        return f"{out}\n{why}" if out else why


def _replay(cells: list[str], code: str) -> str:
    """One program: the earlier blocks, their output discarded, then ``code``, in one namespace."""
    if not cells:
        return code
    run = "".join(f"exec(compile({c!r}, '<block {i}>', 'exec'))\n" for i, c in enumerate(cells))
    quiet = (
        "import io as _io, sys as _sys\n_out = _sys.stdout, _sys.stderr\n_sys.stdout = _sys.stderr = _io.StringIO()\n"
    )
    return f"{quiet}{run}_sys.stdout, _sys.stderr = _out\nexec(compile({code!r}, '<block>', 'exec'))\n"


ENVS: dict[str, type] = {"python": PythonEnv}


def load_env(name: str) -> type:
    """A registered environment (``python``), ``path/to/file.py:Class`` or ``package.module:Class``."""
    if name in ENVS:
        return ENVS[name]
    where, _, attr = name.rpartition(":")
    if not where:
        raise ValueError(f"unknown environment {name!r}; built in: {', '.join(ENVS)}; or 'path/to/file.py:Class'")
    if where.endswith(".py"):
        file = Path(where).expanduser().resolve()
        if not file.is_file():
            raise ValueError(f"environment file {where!r} does not exist (resolved to {file})")
        spec = importlib.util.spec_from_file_location(f"_rlvr_env_{abs(hash(str(file)))}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    cls = getattr(module, attr, None)
    if not callable(cls) or not callable(getattr(cls, "step", None)):
        raise ValueError(f"environment {name!r}: {where} has no class {attr!r} with a step(text) method")
    return cls


def make_env(name: str, options: dict | None = None) -> Callable | None:
    """-> make(problem), an episode's environment: the class ``name`` with the recipe's ``options``; None for
    ``none`` (no environment: single-turn sampling). Checked here, before any episode: the class exists and takes
    those options (a misspelt one is named, with the nearest it takes)."""
    return None if name == "none" else _bind(load_env(name), name, options)


def _bind(cls: type, name: str, options: dict | None) -> Callable:
    options = dict(options or {})
    try:
        inspect.signature(cls).bind(None, **options)
    except TypeError as e:
        takes = list(inspect.signature(cls).parameters)[1:]
        bad = [
            f"{k} (did you mean {near[0]}?)" if (near := difflib.get_close_matches(k, takes, 1)) else k
            for k in options
            if k not in takes
        ]
        raise ValueError(
            f"environment {name!r} does not take the options {', '.join(bad) or e}; it takes {', '.join(takes)}"
        ) from None
    return functools.partial(cls, **options)


@dataclass(frozen=True)
class EnvSetup:
    """An environment as the recipe's ``env`` section sets it up: how to make one per episode, and the limits."""

    make: Callable
    max_turns: int = 4
    max_turn_tokens: int = 0
    workers: int = 0

    def generate(self, sampler, problems: list, prompts: list[list[int]], n: int, **kw) -> Episodes:
        """``generate`` with this set-up; ``kw``: temperature, top_p, max_new_tokens, seed."""
        limits = {"max_turns": self.max_turns, "max_turn_tokens": self.max_turn_tokens, "workers": self.workers}
        return generate(sampler, self.make, problems, prompts, n, **limits, **kw)


def from_config(env, where: Callable[[str], str] = lambda key: "config") -> EnvSetup | None:
    """The ``env`` section (``rlvr.config.EnvConfig``) -> its EnvSetup, None for ``none``. A name that does not
    load or options its class does not take are a ConfigError naming the key and ``where(key)`` it was set."""
    if env.name == "none":
        return None
    try:
        cls = load_env(env.name)
    except Exception as e:  # a user's file may fail to import in any way: say which key points at it
        raise ConfigError(f"{where('env.name')}: env.name: {type(e).__name__}: {e}") from None
    try:
        make = _bind(cls, env.name, env.options)
    except ValueError as e:
        raise ConfigError(f"{where('env.options')}: env.options: {e}") from None
    return EnvSetup(make, env.max_turns, env.max_turn_tokens, env.workers)


# ----------------------------------------------------------------------------- episodes


@dataclass
class Episodes:
    """Finished episodes, rows in groups like a ``Rollout`` (prompt i's samples are rows i*n .. i*n+n-1)."""

    rollout: Rollout  # completion = all turns and observations after the prompt; loss_mask 0 on observations
    turns: list[int]  # model turns
    tool_calls: list[int]  # steps that returned an observation (appended, unless it did not fit)
    tool_errors: list[int]  # steps that returned Turn(error=True)
    env_reward: list[float]  # per-turn rewards, summed
    failed: list[bool]  # the environment raised: the episode scores 0

    def rewards(self, verifier_total: torch.Tensor) -> torch.Tensor:
        """(B,) the verifiers' total -> the episodes' rewards: plus their per-turn rewards; 0 where they failed."""
        total = verifier_total + torch.tensor(self.env_reward, dtype=verifier_total.dtype)
        return total.masked_fill(torch.tensor(self.failed), 0.0)

    def metrics(self) -> dict[str, float]:
        n = max(len(self.turns), 1)
        return {
            "env/turns": sum(self.turns) / n,
            "env/tool_calls": sum(self.tool_calls) / n,
            "env/tool_call_frac": sum(c > 0 for c in self.tool_calls) / n,
            "env/tool_errors": sum(self.tool_errors) / n,
            "env/failures": float(sum(self.failed)),
        }


def generate(
    sampler,
    make: Callable,
    problems: list,
    prompts: list[list[int]],
    n: int,
    *,
    temperature: float,
    top_p: float = 1.0,
    max_new_tokens: int,
    seed: int = 0,
    max_turns: int = 4,
    max_turn_tokens: int = 0,
    workers: int = 0,
) -> Episodes:
    """``n`` episodes of each prompt (token ids; ``problems[i]`` makes its environments): model turns and
    observations, turn by turn, until the environment ends an episode, it has had ``max_turns`` model turns
    (the environment is not asked after the last), or its ``max_new_tokens`` (turns and observations together;
    ``max_turn_tokens`` per turn when set) run out. ``workers``: environment steps run at once (0: two per core)."""
    tok, B = sampler.tokenizer, len(prompts) * n
    base = [list(prompts[r // n]) for r in range(B)]
    ids, lps, mask = [[] for _ in range(B)], [[] for _ in range(B)], [[] for _ in range(B)]
    turns, calls, errors, env_r = [0] * B, [0] * B, [0] * B, [0.0] * B
    truncated, failed = [False] * B, [False] * B
    envs = _start(make, [problems[r // n] for r in range(B)], failed)
    stop = _stop_of(envs)
    active = [r for r in range(B) if not failed[r]]
    for turn in range(max_turns):
        if not active:
            break
        left = [max_new_tokens - len(ids[r]) for r in active]
        ro = sampler.generate_turn(
            [base[r] + ids[r] for r in active],
            max_new_tokens=[min(x, max_turn_tokens) if max_turn_tokens else x for x in left],
            stop=stop,
            temperature=temperature,
            top_p=top_p,
            seed=seed + 7919 * turn,
        )
        for j, r in enumerate(active):  # the turn's tokens, exactly as sampled
            ids[r] += ro.completion_ids[j]
            lps[r] += ro.logprobs[j]
            mask[r] += [1.0] * len(ro.completion_ids[j])
            turns[r], truncated[r] = turns[r] + 1, ro.truncated[j]
        asked = [(r, ro.texts[j]) for j, r in enumerate(active) if not ro.truncated[j] and turn + 1 < max_turns]
        active = []
        for (r, _), (out, trace) in zip(asked, _step_all(envs, asked, workers)):
            if trace is not None:
                failed[r] = True
                _report_first_failure(make, trace)
                continue
            if out.observation is None:
                env_r[r] += out.reward
                continue
            env_r[r], calls[r], errors[r] = env_r[r] + out.reward, calls[r] + 1, errors[r] + out.error
            obs = tok.encode(out.observation, add_special_tokens=False)  # on its own: nothing sampled re-encoded
            if len(ids[r]) + len(obs) >= max_new_tokens:  # no room left for a model token after it
                truncated[r] = True
                continue
            ids[r], lps[r], mask[r] = ids[r] + obs, lps[r] + [0.0] * len(obs), mask[r] + [0.0] * len(obs)
            active.append(r)
    texts = tok.batch_decode(ids, skip_special_tokens=True) if B else []
    return Episodes(Rollout(base, ids, texts, lps, truncated, mask), turns, calls, errors, env_r, failed)


def _start(make, problems: list, failed: list[bool]) -> list:
    """One environment per episode; one that cannot be made fails its episode (``failed``), reported once."""
    envs = []
    for r, p in enumerate(problems):
        try:
            envs.append(make(p))
        except Exception:
            envs.append(None)
            failed[r] = True
            _report_first_failure(make, traceback.format_exc())
    return envs


def _stop_of(envs: list) -> Stop | None:
    stops = {getattr(e, "stop", None) for e in envs if e is not None}
    if len(stops) > 1:
        raise ValueError(f"the episodes of one batch must end turns alike; their environments' stops: {stops}")
    return next(iter(stops), None)


def _step_all(envs: list, asked: list[tuple[int, str]], workers: int) -> list[tuple[Turn | None, str | None]]:
    """Every asked episode's ``step``, concurrently -> (its Turn, None) or (None, the traceback it raised)."""

    def one(job):
        r, text = job
        try:
            out = envs[r].step(text)
            if out is None or isinstance(out, str):
                out = Turn(out)
            if not isinstance(out, Turn):
                raise TypeError(f"step returned {type(out).__name__}; return a str, None or rlvr.episodes.Turn")
            return out, None
        except Exception:
            return None, traceback.format_exc()

    if len(asked) <= 1:
        return [one(job) for job in asked]
    with ThreadPoolExecutor(max_workers=min(workers or 2 * (os.cpu_count() or 1), len(asked))) as ex:
        return list(ex.map(one, asked))


def _report_first_failure(make, message: str) -> None:
    """An environment's first failure, printed once per class (``rlvr.rewards.report_first_failure``)."""
    cls = getattr(make, "func", make)
    name = f"{cls.__module__}.{getattr(cls, '__qualname__', cls)}"
    rewards.report_first_failure(name, message, "env/failures", what="environment")
