"""Asynchronous RL: the sampler generates and verifies in process(es) of its own, ahead of the learner, which trains
on what they produce and pushes its weights after every step. Batch s is what the learner trains at version s - 1
(after s - 1 steps); ``async_rl.max_off_policy_steps`` (k) lets it be sampled with weights as old as version
s - 1 - k, so the sampler runs up to k batches ahead. k = 0 is the synchronous run, exactly (tests/test_async.py).

    python -m rlvr.train recipes/tiny_zero_async.yaml          # this process learns, one it starts samples
    torchrun --nproc_per_node 3 -m rlvr.train recipes/tiny_zero.yaml --async_rl.enabled=true --async_rl.sampler_ranks=1
    # two hosts, the learner on node 0 and the sampler on node 1 (the last sampler_ranks ranks sample):
    torchrun --nnodes 2 --nproc_per_node 1 --node_rank N --rdzv_backend c10d --rdzv_endpoint HOST0:29500 \\
        -m rlvr.train recipes/tiny_zero.yaml --async_rl.enabled=true --async_rl.sampler_ranks=1

Processes. torchrun's ranks (or, with no launcher, this process and the sampler it starts: forked on a Linux
machine without GPUs, else ``python -m rlvr.train`` as torchrun's rank 1) meet in one store. The learners form one
process group and the samplers another: ``rlvr.dist`` in each process sees only its role's (RANK and WORLD_SIZE are
rewritten), so the learners' ZeRO and the samplers' dynamic sampling (``rlvr.sampling``) run as in the colocated
loop. Between the roles:

* weights: after every step learner rank 0 puts a header in the store (the version, the learner's log-probs of the
  weight-sync guard's probe, and, the first time, the data position and the tensors' names), then broadcasts
  ``Learner.named_parameters_for_sync`` (every learner rank iterates it: ZeRO-3 gathers) over a gloo group of
  itself and the samplers. A sampler takes every announced push between batches, one tensor at a time, so the
  learner's broadcast waits at most for the rest of a batch; it waits for a push only when its weights are too old
  for the next batch.
* batches: sampler rank 0 puts each step's batch (every sampler's groups) into the store under its step; every
  learner rank reads it and trains on its share of the groups.

Each sample carries the version that generated it (``Rollout.versions``); the learner checks the bound and logs
``async/staleness_mean`` and ``async/staleness_max``. With k > 0 the loss is decoupled PPO's (``rlvr.rl.targets``).

Resume: a checkpoint after step s holds the learner's weights, its optimizer and the data position after batch s.
Batches sampled beyond s (at most k, in flight) are not in it: the resumed samplers start at batch s + 1 from that
position with the checkpoint's weights (version s). At k = 0 the resumed run is the uninterrupted one; at k > 0 the
batches that were in flight are sampled again (same prompts and seeds) by fresher weights.

Evaluations (greedy before and after, ``eval.every_steps``) run in the learner process with the hf sampler over
the learner's own weights, whatever ``sampler.backend`` generates the training batches.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as tdist

from rlvr import checkpoint as ckpt, config as config_lib, data as data_lib, dist, episodes, model as model_lib
from rlvr.config import LoraConfig
from rlvr.rollout import Batch, Rollout
from rlvr.sampler import make_sampler
from rlvr.sampling import mean_gap, rank_means, sample_and_score

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Store keys: a sampler's error, each step's batch, each push's header, the newest push, the first, the end.
ERROR, BATCH, PUSH, PUSHED, FIRST, STOP = (
    "rlvr/error",
    "rlvr/batch/",
    "rlvr/push/",
    "rlvr/pushed",
    "rlvr/first",
    "rlvr/stop",
)
PARENT = "RLVR_SAMPLER_PARENT"  # set for the sampler process a learner starts: the learner's pid


class SamplerFailed(RuntimeError):
    """A sampler process failed, exited or fell silent; its own error, when it sent one."""


class Placement:
    """This process's role (``learner`` or ``sampler``), its rank among its role's processes, and the channels
    between the roles. ``with`` it around the run: leaving stops the samplers (learner side), joins the process
    this one started and gives RANK and WORLD_SIZE back."""

    def __init__(self, cfg):
        a = cfg.async_rl
        self.saved_env = {k: os.environ.get(k) for k in ENV_KEYS}
        self.timeout = timedelta(seconds=a.timeout_s)
        self.child = start_sampler_process(cfg) if not a.sampler_ranks else None
        world, grank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        self.samplers = a.sampler_ranks or 1
        self.learners = world - self.samplers
        self.role = "sampler" if grank >= self.learners else "learner"
        if self.role == "sampler":
            follow_the_learner()
        self.rank = grank - self.learners if self.role == "sampler" else grank
        if self.child is not None:  # the store's server is here; the started process connects to it
            addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
            self.store = tdist.TCPStore(addr, port, world, True, timeout=self.timeout, wait_for_workers=False)
        else:
            self.store = next(tdist.rendezvous("env://", timeout=self.timeout))[0]
        role_world = self.samplers if self.role == "sampler" else self.learners
        self.cores = os.sched_getaffinity(0) if a.sampler_cores else None
        if a.sampler_cores:  # the samplers on theirs, the learners on the others: neither evicts the other's caches
            os.sched_setaffinity(
                0, set(a.sampler_cores) if self.role == "sampler" else self.cores - set(a.sampler_cores)
            )
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(role_world))
        dist._ROLE_STORE = tdist.PrefixStore(f"rlvr/{self.role}s", self.store)
        self.sending, self._weights = False, None

    @property
    def weights(self):
        """The gloo group the weights go over (learner rank 0 and every sampler), built at its first use: every
        member builds it at the same push, the first with tensors, by when the samplers are up."""
        if self._weights is None:
            me = self.rank + 1 if self.role == "sampler" else 0
            prefix = tdist.PrefixStore("rlvr/weights", self.store)
            self._weights = tdist.ProcessGroupGloo(prefix, me, self.samplers + 1, self.timeout)
        return self._weights

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if self.role == "learner" and self.rank == 0:
                self.stop_samplers()
        finally:
            if self.child is not None:
                try:
                    self.child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.child.kill()
                    self.child.wait()
            dist._ROLE_STORE = None
            if self.cores is not None:
                os.sched_setaffinity(0, self.cores)
            for k, v in self.saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def stop_samplers(self) -> None:
        """Tell every sampler to finish (it drops what it was generating); a started process that cannot be told
        (a push to it was cut short) is killed."""
        self.store.set(STOP, b"1")
        if self.sending and self.child is not None and self.child.poll() is None:
            self.child.kill()

    def check_samplers(self, what: str) -> None:
        """A SamplerFailed if a sampler sent its error or the started process exited."""
        if self.store.check([ERROR]):
            raise SamplerFailed(f"the sampler failed before {what}: {self.store.get(ERROR).decode()}")
        if self.child is not None and self.child.poll() is not None:
            raise SamplerFailed(
                f"the sampler process exited (code {self.child.returncode}) before {what}; its output is above"
            )

    def wait_for(self, key: str, what: str) -> bytes:
        """The store's ``key`` once set; a SamplerFailed if a sampler sends its error, the started process exits,
        or ``async_rl.timeout_s`` passes first."""
        deadline = time.time() + self.timeout.total_seconds()
        while not self.store.check([key]):
            self.check_samplers(what)
            if time.time() > deadline:
                raise SamplerFailed(f"no word from the samplers before {what} in async_rl.timeout_s={self.timeout}")
            time.sleep(0.002)
        return self.store.get(key)


def follow_the_learner() -> None:
    """A sampler stops when the learner tells it to, not on SIGINT/SIGTERM (a Ctrl-C reaches every process of the
    terminal, torchrun forwards signals to every rank): the learner first finishes its step, pushes and saves. A
    sampler this process's learner started dies with it (Linux), even when it is killed."""
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
    parent = os.environ.get(PARENT)
    if parent and sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != int(parent):  # it died before the line above
            os._exit(1)


def place(cfg) -> Placement | None:
    """Split the processes into learners and samplers, starting the sampler process when there is no launcher;
    None without ``async_rl.enabled``. Call before anything joins a process group."""
    return Placement(cfg) if cfg.async_rl.enabled else None


def start_sampler_process(cfg):
    """This process becomes rank 0 of two, as under ``torchrun --nproc_per_node 2``, and starts rank 1, the
    sampler, on this config with one sampler rank: forked on a Linux machine without GPUs (it starts with every
    module imported and verifier registered, seconds sooner), else ``python -m rlvr.train`` on the resolved
    config. -> a handle with ``poll``, ``wait``, ``kill`` and ``returncode``, as ``subprocess.Popen``'s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child_cfg = dataclasses.replace(cfg, async_rl=dataclasses.replace(cfg.async_rl, sampler_ranks=1))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", LOCAL_RANK="0")
    last_gpu = str(max(torch.cuda.device_count() - 1, 0))  # the sampler's GPU, when there are any: the last
    child_env = dict(env, RANK="1", LOCAL_RANK=last_gpu, **{PARENT: str(os.getpid())})
    os.environ.update(env, RANK="0")
    if sys.platform == "linux" and not torch.cuda.is_available():  # a CUDA context would not survive a fork
        return Forked(child_cfg, child_env)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="rlvr_sampler_", delete=False) as f:
        f.write(config_lib.dump(child_cfg))
    return subprocess.Popen([sys.executable, "-m", "rlvr.train", f.name], env=child_env)


def _own_fork_server() -> None:
    """A forked child starts the verifier pool's multiprocessing fork server of its own: the one it inherited is
    its parent's, whose workers are not its children."""
    from multiprocessing import forkserver

    fs = forkserver._forkserver  # the module's singleton: its state is private, its names stable since 3.4
    fs._forkserver_address = fs._forkserver_alive_fd = fs._forkserver_pid = None
    fs._lock = threading.Lock()


class Forked:
    """The sampler in a forked copy of this process; the part of ``subprocess.Popen`` the Placement uses."""

    def __init__(self, cfg, env: dict):
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid, self.returncode = os.fork(), None
        if self.pid == 0:  # the child never returns into the caller's code (a test runner, a notebook)
            code = 1
            try:
                os.environ.clear()
                os.environ.update(env)
                _own_fork_server()
                with Placement(cfg) as place:
                    sampler_main(cfg, place)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else's wait for any child: it has exited
                pid, status = self.pid, 255 << 8
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.time() + timeout
        while self.poll() is None:
            if time.time() > deadline:
                raise subprocess.TimeoutExpired("sampler", timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def _broadcast(pg, t: torch.Tensor) -> None:
    opts = tdist.BroadcastOptions()
    opts.rootRank = 0
    pg.broadcast([t], opts).wait()


# ---------------------------------------------------------------------------------------------
# The learner's end


class Remote:
    """The learner's source of batches: ``next(step)`` takes the samplers' batch of ``step`` (this rank's share
    of its groups), ``push(version)`` sends the learner's weights after a step. ``probe``: the weight-sync guard's
    (``rlvr.sampling.SyncProbe``) or None; the samplers measure its gap and send it with each batch."""

    def __init__(self, place: Placement, cfg, learner, stream, probe, pad_id: int):
        self.place, self.cfg, self.learner, self.stream, self.probe = place, cfg, learner, stream, probe
        self.pad_id, self.names = pad_id, None

    @property
    def started(self) -> bool:
        return self.names is not None

    def push(self, version: int) -> float:
        """Every learner rank calls (ZeRO-3 gathers each tensor, the probe's forward too); rank 0 announces the
        push in the store and broadcasts the tensors, which the samplers take between batches. -> seconds it took."""
        t0 = time.time()
        lp = self.probe.learner_logprobs(self.learner, self.pad_id) if self.probe is not None else None
        header = {"version": version, "probe_logprobs": lp}
        # A fresh run's first weights are the ones the samplers loaded themselves from model.path: only a LoRA
        # policy (merged) or a resumed one has others to send. The probe's gap checks that they are the same.
        header["tensors"] = self.started or version > 0 or model_lib.is_lora(self.learner.module)
        if self.names is None:  # what a sampler needs once: where the data stands, the probe, the tensors' names
            self.names = [n for n, _ in self.learner.named_parameters_for_sync()]
            header |= {"stream": self.stream.state(), "names": self.names}
            if self.probe is not None:
                header |= {"probe": (self.probe.prompts, self.probe.completions)}
        tensors = self.learner.named_parameters_for_sync() if header["tensors"] else ()
        if not dist.is_main():  # other learner ranks: join the gathers
            for _ in tensors:
                pass
            return time.time() - t0
        place = self.place
        place.check_samplers("a weight push")
        if not place.store.check([FIRST]):
            place.store.set(FIRST, str(version))
        place.store.set(f"{PUSH}{version}", pickle.dumps(header))
        place.store.set(PUSHED, str(version))
        place.sending = True  # a push cut short leaves the samplers mid-message
        for _, t in tensors:
            _broadcast(place.weights, t.detach().to("cpu", copy=True).contiguous())
        place.sending = False
        return time.time() - t0

    def next(self, step: int) -> tuple[Batch | None, dict]:
        """The batch of ``step`` (this rank's share) and its metrics; raises SamplerFailed, or an error if a sample
        is older than ``max_off_policy_steps`` allows (which would be a bug)."""
        t0 = time.time()
        msg = pickle.loads(self.place.wait_for(f"{BATCH}{step}", f"batch {step}"))
        if dist.is_main() and step > 1:
            self.place.store.delete_key(f"{BATCH}{step - 1}")  # every learner rank has trained on it
        self.stream.load_state(msg["stream"])  # the data position after this batch: what a checkpoint saves
        batch, m = msg["batch"], msg["metrics"] | {"async/wait_s": time.time() - t0}
        if batch is None:
            return None, m
        k = self.cfg.async_rl.max_off_policy_steps
        stale = [step - 1 - v for v in batch.rollout.versions]
        if not stale or max(stale) > k or min(stale) < 0:
            raise RuntimeError(
                f"batch {step} was sampled with policy versions {sorted(set(batch.rollout.versions))}, but the "
                f"learner is at version {step - 1} and async_rl.max_off_policy_steps={k}"
            )
        m |= {"async/staleness_mean": sum(stale) / len(stale), "async/staleness_max": float(max(stale))}
        g = batch.group_size
        rows = [i * g + j for i in dist.shard(range(len(batch) // g)) for j in range(g)]
        if not rows:
            return None, m
        return Batch(batch.rollout.select(rows), batch.rewards[rows], g), m


# ---------------------------------------------------------------------------------------------
# The samplers' end


def sampler_main(cfg, place: Placement) -> dict:
    """A sampler process's loop: wait for weights recent enough for the next batch, sample and score it with the
    samplers' share of the groups, and (sampler rank 0) put it in the store; until the learner says stop."""
    a = cfg.async_rl
    dist.init()
    threads = a.sampler_threads or cfg.cpu_threads
    if threads:
        torch.set_num_threads(threads)
    device = a.sampler_device or (f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu")
    # The plain model: a LoRA learner pushes its weights merged, under the plain model's names.
    model_cfg = dataclasses.replace(cfg.model, lora=LoraConfig(), gradient_checkpointing=False)
    model, tok = model_lib.load(model_cfg, device)
    # Parameters keep requires_grad, as the learner's do: CPU kernels differ with it in the last bits, even under
    # no_grad, and k = 0 must sample exactly what the colocated loop samples.
    model.eval()
    train_set, _ = data_lib.load_train_test(cfg, tok, getattr(model.config, "max_position_embeddings", None))
    sampler = make_sampler(cfg.sampler, model_cfg, model, tok, cfg.seed)
    inbox = Inbox(place, model, sampler)
    stream = data_lib.PromptStream(len(train_set), cfg.seed, cfg.data.shuffle)
    env = episodes.from_config(cfg.env)
    try:
        version = inbox.load(None)
        if version is None:
            return {}
        stream.load_state(inbox.header["stream"])
        for step in range(version + 1, cfg.rl.steps + 1):
            version = inbox.load(step - 1 - a.max_off_policy_steps)
            if version is None:
                break
            batch, m = sample_and_score(cfg, sampler, stream, train_set, step, env)
            ckpt.crash_point(f"sampler_step{step}")
            if batch is not None:
                batch.rollout.versions = [version] * len(batch)
            m = rank_means(m)
            if inbox.gap is not None:
                m["sync/probe_gap"] = dist.global_max(inbox.gap)
            parts = [p for p in dist.gather_objects(batch) if p is not None]
            if dist.is_main():
                g = cfg.rl.samples_per_prompt
                whole = Batch(Rollout.concat([p.rollout for p in parts]), torch.cat([p.rewards for p in parts]), g)
                msg = {"batch": whole if parts else None, "metrics": m, "stream": stream.state()}
                place.store.set(f"{BATCH}{step}", pickle.dumps(msg))
        while inbox.load(float("inf")) is not None:  # until the learner says stop: it may still push
            pass
    except Exception as e:
        place.store.set(ERROR, f"{type(e).__name__}: {e}\n{traceback.format_exc()}".encode())
        raise
    return {}


class Inbox:
    """A sampler's end of the weight pushes. Between batches it takes every push the learner has announced in the
    store (the learner's broadcast waits for it meanwhile: at most the rest of a batch), one tensor at a time into
    the sampler's weights, and measures the weight-sync guard's probe on the newest."""

    def __init__(self, place: Placement, model, sampler):
        self.place, self.model, self.sampler = place, model, sampler
        self.version, self.header, self.gap = None, {}, None

    def load(self, need: float | None) -> int | None:
        """Take the announced pushes, waiting for one of version ``need`` or newer (None: any); -> the version
        of the weights the sampler now has, None once the learner said stop."""
        store = self.place.store
        while True:
            if store.check([STOP]):
                return None
            announced = int(store.get(PUSHED)) if store.check([PUSHED]) else None
            if announced is not None and announced != self.version:
                first = int(store.get(FIRST)) if self.version is None else self.version + 1
                for v in range(first, announced + 1):
                    self.receive(pickle.loads(store.get(f"{PUSH}{v}")))
                lp = self.header.get("probe_logprobs")
                self.gap = None if lp is None else mean_gap(lp, self.sampler.score(*self.header["probe"]))
            if self.version is not None and (need is None or self.version >= need):
                return self.version
            time.sleep(0.002)

    def receive(self, header: dict) -> None:
        self.header |= header
        names, mine = self.header["names"], self.model.state_dict()
        if set(names) != set(mine):
            raise SamplerFailed(
                f"the learner's weights do not fit the sampler's model: only the learner's "
                f"{sorted(set(names) - set(mine))[:5]}, only the sampler's {sorted(set(mine) - set(names))[:5]}"
            )
        if header["tensors"]:
            self.install(self._tensors(names, mine))
        self.version = header["version"]

    def _tensors(self, names, mine):
        for n in names:
            t = torch.empty_like(mine[n], device="cpu")
            _broadcast(self.place.weights, t)
            yield n, t

    def install(self, named_tensors) -> None:
        """The pushed tensors into the sampler, as they arrive: vLLM's own loader, or a copy into the hf model."""
        if hasattr(self.sampler, "llm"):
            self.sampler.update_weights(named_tensors)
            return
        mine = self.model.state_dict()
        with torch.no_grad():
            for n, t in named_tensors:
                mine[n].copy_(t)
