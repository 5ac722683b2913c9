"""Multi-turn episodes (rlvr.episodes) on the hf sampler and the shipped tiny model: token in, token out (and a
re-tokenising loop failing the same check), masks and the gradient, turn and token budgets, the Python tool's
crashes and timeouts, environments from a user's file and environments that raise.

    python -m pytest tests/test_episodes.py            # ~1 min on 2 CPU cores
"""

import json
import random

import pytest
import torch
from conftest import TINY_DATA, TINY_MODEL, assert_close_norm
from test_packing import fp32_rel

from rlvr import algos, episodes, model as model_lib
from rlvr.config import ModelConfig
from rlvr.data import Problem
from rlvr.episodes import PythonEnv, Stop, Turn, turn_end
from rlvr.rollout import Batch
from rlvr.sampler import HFSampler, _static_step


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup()


def tiny_setup():
    """The tiny model, its tokenizer, 4 held-out problems and their prompts ("User: .. Assistant:")."""
    model, tok = model_lib.load(ModelConfig(path=str(TINY_MODEL)))
    rows = [json.loads(line) for line in open(TINY_DATA / "test.jsonl")][:4]
    problems = [Problem(r["question"], r["answer"], id=str(i)) for i, r in enumerate(rows)]
    prompts = [tok(f"User: {p.question} Assistant:")["input_ids"] for p in problems]
    return model, tok, problems, prompts


class Tags:
    """Ends a model turn at "<" and answers "/k>" (k: the turn). The tiny model writes " <think>" as the tokens
    " <", "think", ">", and " <" followed by "/" encodes as the one token " </": a loop that decodes the
    conversation and encodes it again feeds the sampler other ids than those it sampled."""

    stop = Stop("<")

    def __init__(self, problem):
        self.turns = 0

    def step(self, text):
        self.turns += 1
        return f"/{self.turns}>"


class Recording:
    """A sampler whose generate_turn calls are kept: (the prefixes it was given, the Rollout it returned)."""

    def __init__(self, inner):
        self.inner, self.tokenizer, self.calls = inner, inner.tokenizer, []

    def generate_turn(self, prefixes, **kw):
        ro = self.inner.generate_turn(prefixes, **kw)
        self.calls.append(([list(p) for p in prefixes], ro))
        return ro


class Retokenising(Recording):
    """The bug rlvr.episodes rules out (trl#5224, verl#6719): the conversation kept as text, encoded again for
    every turn. Its calls are recorded as the sampler saw them."""

    def generate_turn(self, prefixes, **kw):
        tok = self.tokenizer
        return super().generate_turn([tok.encode(tok.decode(p)) for p in prefixes], **kw)


def assert_token_exact(eps, calls, tok, observation):
    """Rebuild every episode from the sampler's calls and ``observation(k, text)``, the environment's answer to
    turn k: each turn continued the episode from exactly its ids so far, its tokens and log-probs are the
    sampler's (loss mask 1), and each observation is its text encoded on its own (loss mask 0, log-prob 0)."""
    ro = eps.rollout
    for r in range(len(ro)):
        comp, mask, lps = ro.completion_ids[r], ro.loss_mask[r], ro.logprobs[r]
        assert len(comp) == len(mask) == len(lps)
        pos, k = 0, 0
        while True:
            prefix = ro.prompt_ids[r] + comp[:pos]
            found = [
                (out, j)
                for given, out in calls
                for j, p in enumerate(given)
                if p == prefix and comp[pos : pos + len(out.completion_ids[j])] == out.completion_ids[j]
            ]
            assert found, f"episode {r}: no sampler call continued it from its ids at completion token {pos}"
            out, j = found[0]
            n = len(out.completion_ids[j])
            assert mask[pos : pos + n] == [1.0] * n and lps[pos : pos + n] == out.logprobs[j]
            pos, k = pos + n, k + 1
            if pos == len(comp):
                break
            obs = tok.encode(observation(k, out.texts[j]), add_special_tokens=False)
            assert comp[pos : pos + len(obs)] == obs, f"episode {r}: observation {k} is not its text's own ids"
            assert mask[pos : pos + len(obs)] == [0.0] * len(obs) and lps[pos : pos + len(obs)] == [0.0] * len(obs)
            pos += len(obs)
        assert k == eps.turns[r]


def run_tags(sampler, tiny, n=4, **kw):
    _, _, problems, prompts = tiny
    kw = {"temperature": 1.0, "max_new_tokens": 48, "max_turns": 4, "seed": 3} | kw
    return episodes.generate(sampler, Tags, problems, prompts, n, **kw)


def test_hf_turns_are_token_exact_and_the_learner_scores_exactly_what_was_sampled(tiny):
    model, tok, _, _ = tiny
    rec = Recording(HFSampler(model, tok))
    eps = run_tags(rec, tiny)
    assert len(rec.calls) >= 3 and max(eps.turns) >= 3 and min(eps.tool_calls) >= 1  # several turns, really
    assert_token_exact(eps, rec.calls, tok, lambda k, text: f"/{k}>")
    # The learner, given the episodes, puts on every sampled token the log-prob the sampler drew it with.
    ro = eps.rollout
    with torch.no_grad():
        logp, _ = model_lib.grouped_logprobs(model, ro.prompt_ids, ro.completion_ids, 4, tok.pad_token_id, 1.0)
    batch = Batch(ro, torch.zeros(len(ro)), 4)
    mask = batch.token_mask()
    assert mask.sum() < sum(map(len, ro.completion_ids))  # observations are masked out
    longest = max(len(p) + len(c) for p, c in zip(ro.prompt_ids, ro.completion_ids))
    assert_close_norm(logp * mask, batch.sampler_logprobs() * mask, fp32_rel(longest), "learner vs sampler")


def test_a_retokenising_loop_fails_the_token_check(tiny):
    model, tok, _, _ = tiny
    rec = Retokenising(HFSampler(model, tok))
    eps = run_tags(rec, tiny)
    with pytest.raises(AssertionError, match="no sampler call continued it"):
        assert_token_exact(eps, rec.calls, tok, lambda k, text: f"/{k}>")


def test_the_static_decode_stops_turns_where_the_dynamic_one_does(tiny):
    """The static path checks for stops every SYNC_EVERY tokens and cuts after: the same turns, greedy."""
    model, tok, _, prompts = tiny
    static = HFSampler(model, tok, batch_seqs=8, compile=True)
    static._step = _static_step  # its token step uncompiled: compiling takes minutes on a CPU
    kw = dict(max_new_tokens=[40, 3, 40, 25], stop=Stop("</think>", "<think>"), temperature=0.0)
    a, b = HFSampler(model, tok).generate_turn(prompts, **kw), static.generate_turn(prompts, **kw)
    assert a.completion_ids == b.completion_ids and a.truncated == b.truncated
    assert [len(c) for c in a.completion_ids][1] == 3 and a.truncated[1]
    assert any(t.endswith("</think>") for t in a.texts)  # the stop ended at least one turn


def test_stop_ends_a_turn_after_the_token_that_completes_its_marker(tiny):
    _, tok, _, _ = tiny
    text = "Let me run it.\n```python\nprint(6 * 7)\n``` and more\n```"
    ids = tok.encode(text)
    end = Stop("```", "```python").end(ids, tok.decode)
    assert tok.decode(ids[:end]) == "Let me run it.\n```python\nprint(6 * 7)\n```"  # not the opening backticks
    assert Stop("```").end(ids, tok.decode) == len(tok.encode("Let me run it.\n```"))
    assert Stop("```", "```js").end(ids, tok.decode) is None
    # A marker completed inside a token keeps the whole token: the ids stay as sampled.
    ids = tok.encode(" The answer is 5")
    assert tok.decode(ids[: Stop("answ").end(ids, tok.decode)]) == " The answer"
    # turn_end: EOS first, then the stop, then the limit (the only cut that counts as truncated)
    eos = tok.eos_token_id
    stop = Stop("```")
    assert turn_end(ids + [eos, 7], 50, {eos}, stop, tok.decode) == (len(ids) + 1, False)
    code = tok.encode("x```y")
    assert turn_end(code + [eos], 50, {eos}, stop, tok.decode) == (4, False)
    assert turn_end(code, 2, {eos}, stop, tok.decode) == (2, True)


def test_budgets_bound_turns_and_tokens(tiny):
    model, tok, problems, prompts = tiny
    asked = []

    class Long(Tags):
        def step(self, text):
            asked.append(text)
            return "/" + "x" * 30

    # max_turns: the environment is not asked after the last turn
    rec = Recording(HFSampler(model, tok))
    kw = dict(temperature=1.0, max_new_tokens=40, seed=5)
    eps = episodes.generate(rec, Tags, problems, prompts, 3, max_turns=2, **kw)
    assert max(eps.turns) == 2 and len(rec.calls) == 2 and max(eps.tool_calls) == 1
    # the episode's token budget: turns and observations together; an observation that leaves no room for a
    # model token after it is not appended, and the episode is over (truncated)
    rec = Recording(HFSampler(model, tok))
    eps = episodes.generate(rec, Long, problems, prompts, 3, max_turns=4, **kw)
    n_obs, first = len(tok.encode("/" + "x" * 30)), rec.calls[0][1]  # turn 1: every episode, in order
    assert len(asked) >= len(first) - sum(first.truncated) > 0
    for r, c in enumerate(eps.rollout.completion_ids):
        assert len(c) <= 40
        if not first.truncated[r] and len(first.completion_ids[r]) + n_obs >= 40:
            assert c == first.completion_ids[r] and eps.rollout.truncated[r] and eps.tool_calls[r] == 1
    assert any(eps.turns[r] == 2 for r in range(len(eps.turns)))  # and one that fitted went on
    # max_turn_tokens caps every turn, and a turn it cuts ends its episode (truncated)
    rec = Recording(HFSampler(model, tok))
    eps = episodes.generate(rec, Tags, problems, prompts, 3, max_turns=4, max_turn_tokens=3, **kw)
    assert all(len(c) <= 3 for _, ro in rec.calls for c in ro.completion_ids)
    assert sum(rec.calls[0][1].truncated) > 0 and len(rec.calls) > 1
    for r in range(len(eps.turns)):
        assert eps.turns[r] == 1 or not rec.calls[0][1].truncated[r]


def test_python_tool_crashes_timeouts_and_floods_are_observations():
    env = PythonEnv(timeout_s=1.0, max_output_chars=40)
    block = "Let me run it.\n```python\n{}\n```".format
    assert env.step("no code here") is None
    assert env.step(block("print(6 * 7)")) == Turn("\n```output\n42\n```\n")
    out = env.step(block("print('a')\n1 / 0"))
    assert out.error and out.observation == "\n```output\na\nZeroDivisionError: division by zero\n```\n"
    out = env.step(block("while True:\n    pass"))
    assert out.error and "TimeoutError: the program ran past 1 s" in out.observation
    out = env.step(block("print('y' * 10**6)"))
    assert out.error and out.observation.count("y") == 36 and "exceeded its size limit" in out.observation
    out = env.step(block("print(1 +"))
    assert out.error and "SyntaxError" in out.observation


def test_python_tool_state_persists_across_an_episodes_blocks():
    block = "```python\n{}\n```".format
    env = PythonEnv()
    assert env.step(block("x = 6\nprint('set')")).observation == "\n```output\nset\n```\n"
    env.step(block("y = x * 7\n1 / 0"))  # failed: not replayed, so y stays undefined
    assert env.step(block("print(x * 7)")).observation == "\n```output\n42\n```\n"  # earlier output not repeated
    assert "NameError: name 'y'" in env.step(block("print(y)")).observation
    fresh = PythonEnv(persist=False)
    fresh.step(block("x = 6"))
    assert "NameError: name 'x'" in fresh.step(block("print(x)")).observation


def test_a_tool_crash_through_the_episode_loop_is_an_observation_not_a_failure(tiny):
    model, tok, problems, prompts = tiny

    class Crashing(PythonEnv):
        """Runs a crash, then a hang, whatever the model writes (its turns end at "<")."""

        def __init__(self, problem):
            super().__init__(problem, timeout_s=0.5)
            self.stop, self.programs = Stop("<"), ["1 / 0", "while True: pass"]

        def code(self, text):
            return self.programs.pop(0) if self.programs else None

    eps = episodes.generate(
        HFSampler(model, tok), Crashing, problems[:2], prompts[:2], 2, temperature=1.0, max_new_tokens=96
    )
    assert not any(eps.failed) and eps.metrics()["env/failures"] == 0
    shown = 0
    for r, text in enumerate(eps.rollout.texts):
        assert eps.tool_errors[r] == eps.tool_calls[r] > 0
        mask = eps.rollout.loss_mask[r]
        appended = sum(a == 1 and b == 0 for a, b in zip(mask, mask[1:]))  # an observation that fitted
        assert ("ZeroDivisionError" in text) == (appended >= 1) and ("TimeoutError" in text) == (appended == 2)
        shown += appended
    assert shown >= 3


def test_an_environment_from_a_users_file_with_options_and_per_turn_rewards(tiny, tmp_path):
    model, tok, problems, prompts = tiny
    path = tmp_path / "my_env.py"
    path.write_text(
        "from rlvr.episodes import Stop, Turn\n\n"
        "class Hint:\n"
        "    stop = Stop('<')\n"
        "    def __init__(self, problem, bonus=0.0):\n"
        "        self.answer, self.bonus, self.turns = problem.answer, bonus, 0\n"
        "    def step(self, text):\n"
        "        self.turns += 1\n"
        "        return Turn(f'/{self.answer}>', reward=self.bonus) if self.turns < 3 else None\n"
    )
    make = episodes.make_env(f"{path}:Hint", {"bonus": 0.25})
    eps = episodes.generate(HFSampler(model, tok), make, problems, prompts, 2, temperature=1.0, max_new_tokens=48)
    assert sum(eps.tool_calls) > 0
    for r in range(len(eps.rollout)):
        answer = problems[r // 2].answer
        assert eps.env_reward[r] == 0.25 * eps.tool_calls[r]
        assert eps.rollout.texts[r].count(f"/{answer}>") >= eps.tool_calls[r]
    total = eps.rewards(torch.ones(len(eps.rollout)))
    assert total.tolist() == [1.0 + 0.25 * c for c in eps.tool_calls]
    with pytest.raises(ValueError, match=r"does not take the options bonsu \(did you mean bonus\?\)"):
        episodes.make_env(f"{path}:Hint", {"bonsu": 1})
    assert episodes.make_env("none") is None
    with pytest.raises(ValueError, match="no class 'Nope'"):
        episodes.make_env(f"{path}:Nope")
    with pytest.raises(ValueError, match="does not exist"):
        episodes.make_env(f"{tmp_path}/missing.py:Hint")
    with pytest.raises(ValueError, match="unknown environment"):
        episodes.make_env("pyhton")


def test_an_environment_that_raises_ends_its_episode_with_reward_0_and_is_reported_once(tiny, capsys):
    model, tok, problems, prompts = tiny

    class Buggy(Tags):
        def __init__(self, problem):
            super().__init__(problem)
            if problem.id == "1":
                raise KeyError("no such tool")

        def step(self, text):
            if random.Random(text).random() < 0.5:
                return {}["missing"]
            return super().step(text)

    sampler = HFSampler(model, tok)
    eps = episodes.generate(sampler, Buggy, problems, prompts, 4, temperature=1.0, max_new_tokens=48)
    assert eps.failed[4:8] == [True] * 4 and all(c == [] for c in eps.rollout.completion_ids[4:8])
    assert 4 < sum(eps.failed) < len(eps.failed) and eps.metrics()["env/failures"] == sum(eps.failed)
    total = eps.rewards(torch.ones(len(eps.failed)))
    assert total.tolist() == [0.0 if f else 1.0 for f in eps.failed]
    episodes.generate(sampler, Buggy, problems, prompts, 4, temperature=1.0, max_new_tokens=48, seed=9)
    err = capsys.readouterr().err
    assert err.count("Traceback") == 1 and "KeyError: 'no such tool'" in err and "env/failures" in err


def test_observation_tokens_do_not_move_the_gradient(tiny):
    """What the policy did not choose must not enter the loss: observation tokens' stored log-probs, and their
    content where no model token follows, change nothing; counted (mask 1) they would."""
    model, tok, _, _ = tiny
    eps = run_tags(HFSampler(model, tok), tiny)
    ro, gen = eps.rollout, torch.Generator().manual_seed(0)
    adv = torch.randn(len(ro), generator=gen)

    def grad(rollout):
        model.zero_grad()
        batch = Batch(rollout, adv, 4)
        logp, _ = model_lib.grouped_logprobs(model, rollout.prompt_ids, rollout.completion_ids, 4, tok.pad_token_id)
        mask = batch.token_mask()
        pg, _ = algos.clipped_surrogate(logp, batch.sampler_logprobs(), adv, 0.2, 0.28)
        (algos.masked_sum(pg, mask, "token_mean") / algos.loss_denominator(mask, "token_mean")).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    def with_column(rollout, name, fn):
        new = rollout.select(range(len(rollout)))
        setattr(
            new,
            name,
            [
                [fn(x) if m == 0 else x for x, m in zip(row, mr)]
                for row, mr in zip(getattr(rollout, name), rollout.loss_mask)
            ],
        )
        return new

    other_lps = with_column(ro, "logprobs", lambda x: -5 * torch.rand(1, generator=gen).item())
    assert torch.equal(grad(ro), grad(other_lps))
    # Each episode cut after its first observation: that observation's tokens are the last, scored by nothing.
    first = [next(i for i, m in enumerate(mr) if m == 0) for mr in ro.loss_mask]
    ends = [f + next(i for i, m in enumerate(mr[f:]) if m == 1) for f, mr in zip(first, ro.loss_mask)]
    cut = ro.select(range(len(ro)))
    for name in ("completion_ids", "logprobs", "loss_mask"):
        setattr(cut, name, [row[:e] for row, e in zip(getattr(ro, name), ends)])
    other_ids = with_column(cut, "completion_ids", lambda x: int(torch.randint(1, 384, (1,), generator=gen)))
    assert other_ids.completion_ids != cut.completion_ids
    assert torch.equal(grad(cut), grad(other_ids))
    # The same perturbations with observations counted do move it (so the two checks above can fail).
    for a, b in ((ro, other_lps), (cut, other_ids)):
        a, b = a.select(range(len(a))), b.select(range(len(b)))
        a.loss_mask = b.loss_mask = [[1.0] * len(m) for m in a.loss_mask]
        assert not torch.allclose(grad(a), grad(b))
