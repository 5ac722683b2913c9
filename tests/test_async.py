"""Asynchronous RL (rlvr.async_sampler): at 0 steps off-policy the synchronous run exactly; the staleness bound;
the weight channel and its guard; decoupled PPO's ratio; placements and bad settings; two torchrun "hosts" (slow)."""

import math
import os
import pickle
import socket
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from conftest import REPO

from rlvr import algos, async_sampler, data as data_lib, model as model_lib
from rlvr.config import ConfigError, load_config
from rlvr.learner import Learner
from rlvr.log import read_records
from rlvr.rl import SyncDrift, check_sync, targets, train
from rlvr.rollout import Batch, Rollout
from rlvr.sampler import make_sampler
from rlvr.sampling import SyncProbe, sample_and_score


def _rows(out) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("perf/", "async/"))} for r in read_records(out)]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_async_at_zero_steps_off_policy_is_the_synchronous_run(tmp_path, tiny_cfg):
    """k = 0 through the sampler process, the weight pushes and the store: the same metrics and bit for bit the same
    weights as sampling in the learner's process. A sampler that ran one step ahead (a batch sampled before the
    previous step's weights arrived) is refused by the bound; a push of stale weights changes the samples."""
    over = {"rl.steps": 3, "eval.problems": 4}
    sync = train(tiny_cfg(over | {"output_dir": str(tmp_path / "sync")}))
    out = tmp_path / "async"
    asyn = train(
        tiny_cfg(over | {"output_dir": str(out), "async_rl.enabled": True, "async_rl.max_off_policy_steps": 0})
    )
    assert _rows(out / "metrics.jsonl") == _rows(tmp_path / "sync" / "metrics.jsonl")
    rows = read_records(out / "metrics.jsonl")
    assert [r["async/staleness_max"] for r in rows] == [0.0] * 3 and all(r["sync/probe_gap"] == 0.0 for r in rows)
    want, got = _weights(tmp_path / "sync" / "final"), _weights(out / "final")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert {k: v for k, v in asyn.items() if k != "wall_s"} == {k: v for k, v in sync.items() if k != "wall_s"}


class _Place:
    """A Placement without processes: a store, and (``pg``) this end of a weight channel."""

    def __init__(self, store, pg=None):
        self.store, self.weights, self.child, self.sending, self.samplers = store, pg, None, False, 1
        self.timeout = timedelta(seconds=30)

    check_samplers = async_sampler.Placement.check_samplers
    wait_for = async_sampler.Placement.wait_for


def _message(step: int, versions: list[int], group: int = 2) -> bytes:
    n = len(versions)
    ro = Rollout([[1, 2]] * n, [[3]] * n, ["x"] * n, [[-0.5]] * n, [False] * n, versions=versions)
    return pickle.dumps(
        {
            "batch": Batch(ro, torch.arange(n, dtype=torch.float), group),
            "metrics": {},
            "stream": {"epoch": 0, "pos": step},
        }
    )


@pytest.mark.parametrize("k", [0, 1, 2])
def test_a_sample_is_never_trained_more_than_k_versions_after_it_was_sampled(tiny_cfg, k):
    """Batch s is trained at learner version s - 1: samples of versions s - 1 - k .. s - 1 pass, and their staleness is
    logged; one of version s - 2 - k (or a version from the future) stops the run."""
    cfg = tiny_cfg({"async_rl.enabled": True, "async_rl.max_off_policy_steps": k})
    store = tdist.HashStore()
    stream = data_lib.PromptStream(10, 0)
    remote = async_sampler.Remote(_Place(store), cfg, None, stream, None, 0)
    step = 5
    ok = [step - 1 - k, step - 1 - k, step - 1, step - 1]
    store.set(f"{async_sampler.BATCH}{step}", _message(step, ok))
    batch, m = remote.next(step)
    assert batch.rollout.versions == ok and stream.state() == {"epoch": 0, "pos": step}
    assert m["async/staleness_max"] == k and m["async/staleness_mean"] == k / 2
    for bad in ([step - 2 - k] * 4, [step] * 4):
        store.set(f"{async_sampler.BATCH}{step + 1}", _message(step + 1, [v + 1 for v in bad]))
        with pytest.raises(RuntimeError, match="policy versions"):
            remote.next(step + 1)


def test_the_sampler_runs_ahead_and_stays_within_the_bound(tmp_path, tiny_cfg):
    """k = 1 end to end: a batch trained at version v was sampled at v or v - 1, and the sampler did run ahead."""
    out = tmp_path / "run"
    cfg = tiny_cfg({"rl.steps": 5, "eval.problems": 4, "async_rl.enabled": True, "async_rl.max_off_policy_steps": 1})
    train(cfg)
    rows = read_records(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["async/staleness_max"] <= 1 for r in rows) and rows[0]["async/staleness_max"] == 0
    assert max(r["async/staleness_max"] for r in rows) == 1  # the sampler generated while the learner learnt
    assert all(math.isfinite(r["loss/total"]) for r in rows) and "mismatch/tis_weight" in rows[-1]


def _channel():
    """A weight channel inside this process: the learner's end (rank 0) and one sampler's (rank 1)."""
    store = tdist.HashStore()
    pgs = [None, None]

    def make(r):
        pgs[r] = tdist.ProcessGroupGloo(tdist.PrefixStore("w", store), r, 2, timedelta(seconds=30))

    threads = [threading.Thread(target=make, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return store, pgs


def test_pushed_weights_reach_the_sampler_and_the_guard_sees_a_skipped_load(tiny_cfg, monkeypatch):
    """The first push of a fresh run sends no tensors (the sampler loaded the same model.path: probe gap 0); a push
    after each learner step puts the learner's exact weights into the sampler's own model (gap 0); a sampler that
    skipped installing them keeps the old ones, and the guard's gap stops the run."""
    cfg = tiny_cfg({"async_rl.enabled": True, "rl.lr": 1e-2})
    model, tok = model_lib.load(cfg.model)
    theirs, _ = model_lib.load(cfg.model)
    learner = Learner(model, cfg.deepspeed, lr=cfg.rl.lr)
    train_set, test_set = data_lib.load_train_test(cfg, tok, None)
    probe = SyncProbe.build(cfg, test_set, train_set, model.config.vocab_size)
    store, (pg0, pg1) = _channel()
    sampler = make_sampler(cfg.sampler, cfg.model, theirs, tok)
    inbox = async_sampler.Inbox(_Place(store, pg1), theirs, sampler)
    remote = async_sampler.Remote(_Place(store, pg0), cfg, learner, data_lib.PromptStream(8, 0), probe, sampler.pad_id)

    def push_and_load(version: int) -> int:
        pusher = threading.Thread(target=remote.push, args=(version,))  # its broadcast waits for the receiver
        pusher.start()
        got = inbox.load(version)
        pusher.join()
        return got

    def learner_step():
        learner.backward(sum((p.float() ** 2).sum() for p in model.parameters()))
        learner.step()

    for version in (0, 1, 2):
        if version:
            learner_step()
        assert push_and_load(version) == version
        assert inbox.gap == 0.0 and check_sync(probe, inbox.gap, version + 1, cfg) == {"sync/probe_gap": 0.0}
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), theirs.state_dict().values()))
    monkeypatch.setattr(
        async_sampler.Inbox, "install", lambda self, tensors: list(tensors)
    )  # the defect: not installed
    learner_step()
    assert push_and_load(3) == 3 and inbox.gap > probe.max_gap
    with pytest.raises(SyncDrift):
        check_sync(probe, inbox.gap, 4, cfg)
    store.set(async_sampler.STOP, b"1")
    assert inbox.load(4) is None


def test_decoupled_ppo_by_hand():
    """Decoupled PPO: the ratio's clip against the proximal (learner) policy, times the behaviour weight
    p_prox / p_behaviour (truncated at tis_cap). One token each: (logp, prox, behaviour, advantage)."""
    logp, prox, behav = torch.log(torch.tensor([[0.5, 0.3]])), torch.log(torch.tensor([[0.4, 0.6]])), None
    behav = torch.log(torch.tensor([[0.2, 0.5]]))
    adv, mask = torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    pg, clipped = algos.ppo_loss(logp, prox, adv, mask, clip_low=0.2, clip_high=0.28)
    # token 1: ratio 0.5/0.4 = 1.25 inside [0.8, 1.28]: -1.25 x 1; token 2: ratio 0.5 < 0.8, A < 0: -(0.8 x -1) = 0.8
    assert torch.allclose(pg, torch.tensor([[-1.25, 0.8]])) and clipped.tolist() == [[0.0, 1.0]]
    w = algos.truncated_is_weight(prox, behav, math.inf)  # 0.4/0.2 = 2, 0.6/0.5 = 1.2
    assert torch.allclose(pg * w, torch.tensor([[-2.5, 0.96]]))
    w = algos.truncated_is_weight(prox, behav, 1.5)
    assert torch.allclose(pg * w, torch.tensor([[-1.875, 0.96]]))


def test_stale_samples_are_clipped_against_the_learner_and_weighted(tiny_cfg):
    """Samples of an older policy (each token's sampler log-prob 0.3 below the learner's): the ratio is clipped
    against the learner's log-probs before the step, not the stale ones (which would clip tokens at 1.35 > 1.28),
    and the gradient is the on-policy one times the behaviour weight e^0.3 (or the cap 1.2). With one update per
    batch the loss's own forward gives the learner's log-probs; with more, a no-grad forward before them does."""
    from rlvr.rl import learn

    cfg = tiny_cfg({"rl.lr": 0.0, "rl.max_grad_norm": 0.0})
    model, tok = model_lib.load(cfg.model)
    train_set, _ = data_lib.load_train_test(cfg, tok, None)
    sampler = make_sampler(cfg.sampler, cfg.model, model, tok)
    batch, _ = sample_and_score(cfg, sampler, data_lib.PromptStream(len(train_set), 0), train_set, 1)
    learner = Learner(model, cfg.deepspeed, lr=0.0)
    fresh = batch.rollout.logprobs
    on_policy = learn(learner, None, batch, cfg, sampler.pad_id, 1)["grad_norm"]
    batch.rollout.logprobs = [[x - 0.3 for x in lp] for lp in fresh]
    for over, factor in (({}, math.exp(0.3)), ({"rl.tis_cap": 1.2}, 1.2)):
        c = tiny_cfg({"async_rl.enabled": True, "async_rl.max_off_policy_steps": 1, "rl.max_grad_norm": 0.0} | over)
        m = learn(learner, None, batch, c, sampler.pad_id, 1)
        assert abs(m["grad_norm"] / (factor * on_policy) - 1) < 1e-4, (m["grad_norm"], factor * on_policy)
        assert m["clip_frac"] == 0.0 and abs(m["mismatch/tis_weight"] / factor - 1) < 1e-4
    c = tiny_cfg({"async_rl.enabled": True, "async_rl.max_off_policy_steps": 1, "rl.passes_per_step": 2})
    t = targets(learner, None, None, batch, c, sampler.pad_id)
    mask = t.mask.bool()
    assert (t.prox - batch.sampler_logprobs())[mask].sub(0.3).abs().max() < 1e-4  # the learner's: fresh ones
    assert (t.is_weight[mask] - math.exp(0.3)).abs().max() < 1e-3 and t.weight_cap is None
    t0 = targets(
        learner, None, None, batch, tiny_cfg({"async_rl.enabled": True, "async_rl.max_off_policy_steps": 0}), 0
    )
    assert t0.is_weight is None and t0.weight_cap is None and torch.equal(t0.prox, t0.old)


@pytest.mark.parametrize(
    "over, world, match",
    [
        ({"async_rl.sampler_ranks": 1}, "1", "async_rl.enabled is false"),
        ({"async_rl.enabled": True}, "2", "async_rl.sampler_ranks names"),
        ({"async_rl.enabled": True, "async_rl.sampler_ranks": 2}, "2", "leaves no learner"),
        ({"async_rl.enabled": True, "async_rl.max_off_policy_steps": -1}, "1", "must be >= 0"),
        ({"async_rl.enabled": True, "async_rl.sampler_cores": "[4096]"}, "1", "async_rl.sampler_cores"),
        ({"async_rl.enabled": True, "stage": "sft"}, "1", "stages rl and distill"),
        ({"async_rl.enabled": True, "async_rl.sampler_ranks": 2, "rl.prompts_per_step": 3}, "3", "sampler processes"),
    ],
)
def test_bad_async_settings_name_the_key(over, world, match, monkeypatch, tiny_overrides):
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(ConfigError, match=match):
        load_config(REPO / "recipes" / "tiny_zero.yaml", tiny_overrides | over)


def test_a_sampler_that_dies_stops_the_run_with_a_checkpoint(tiny_cfg, monkeypatch):
    """The sampler process killed while it generates batch 2: the learner, waiting for that batch, stops with a
    RunStopped that says so, step 1's state saved to resume from; a sampler's own error reaches it by the store."""
    from rlvr.run import RunStopped

    monkeypatch.setenv("RLVR_CRASH_AT", "sampler_step2")
    cfg = tiny_cfg({"rl.steps": 3, "async_rl.enabled": True, "async_rl.max_off_policy_steps": 0})
    with pytest.raises(RunStopped, match="sampler process exited"):
        train(cfg)
    assert (Path(cfg.output_dir) / "checkpoints" / "step_1" / "model.safetensors").exists()
    store = tdist.HashStore()
    store.set(async_sampler.ERROR, b"ValueError: no such verifier")
    remote = async_sampler.Remote(_Place(store), cfg, None, data_lib.PromptStream(8, 0), None, 0)
    with pytest.raises(async_sampler.SamplerFailed, match="no such verifier"):
        remote.next(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_hosts_over_loopback_are_the_one_host_run(tmp_path, tiny_overrides):
    """Two torchrun "nodes" on this machine, the learner on node 0 and the sampler on node 1 (async_rl.sampler_ranks:
    1), rendezvous over loopback: at k = 0 the metrics and weights of the run whose learner starts its sampler."""
    over = tiny_overrides | {
        "rl.steps": 3,
        "eval.problems": 4,
        "async_rl.enabled": True,
        "async_rl.max_off_policy_steps": 0,
    }
    one = load_config(REPO / "recipes" / "tiny_zero.yaml", over | {"output_dir": str(tmp_path / "one")})
    train(one)
    recipe = tmp_path / "two.yaml"
    from rlvr import config as config_lib

    recipe.write_text(
        config_lib.dump(load_config(REPO / "recipes" / "tiny_zero.yaml", over | {"output_dir": str(tmp_path / "two")}))
    )
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(node),
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"127.0.0.1:{port}",
                "-m",
                "rlvr.train",
                str(recipe),
                "--async_rl.sampler_ranks=1",
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    assert _rows(tmp_path / "two" / "metrics.jsonl") == _rows(tmp_path / "one" / "metrics.jsonl")
    want, got = _weights(tmp_path / "one" / "final"), _weights(tmp_path / "two" / "final")
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_resume_with_batches_in_flight(tmp_path, tiny_overrides):
    """A learner killed after step 3 (checkpoint at 2) resumes: at k = 0 into the uninterrupted run exactly; at
    k = 1 the batches that were in flight are sampled again and the run completes within the bound."""
    for k in (0, 1):
        over = tiny_overrides | {
            "rl.steps": 4,
            "eval.problems": 4,
            "checkpoint_every": 2,
            "async_rl.enabled": True,
            "async_rl.max_off_policy_steps": k,
        }
        ref, out = tmp_path / f"ref{k}", tmp_path / f"run{k}"
        recipe = tmp_path / f"k{k}.yaml"
        from rlvr import config as config_lib

        recipe.write_text(config_lib.dump(load_config(REPO / "recipes" / "tiny_zero.yaml", over)))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "rlvr.train", str(recipe)]
        subprocess.run([*cmd, f"--output_dir={ref}"], env=env, cwd=REPO, check=True, capture_output=True)
        killed = subprocess.run(
            [*cmd, f"--output_dir={out}"],
            env=env | {"RLVR_CRASH_AT": "step3"},
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert killed.returncode != 0
        r = subprocess.run(
            [*cmd, f"--output_dir={out}", "--resume=auto"], env=env, cwd=REPO, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr[-3000:]
        rows = read_records(out / "metrics.jsonl")
        assert [x["step"] for x in rows] == [1, 2, 3, 4] and all(x["async/staleness_max"] <= k for x in rows)
        if k == 0:
            assert _rows(out / "metrics.jsonl") == _rows(ref / "metrics.jsonl")
            want, got = _weights(ref / "final"), _weights(out / "final")
            assert all(torch.equal(got[n], want[n]) for n in want)
