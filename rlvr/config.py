"""Typed configuration: dataclass defaults are the vetted settings, a recipe YAML lists what differs.

    cfg = load_config("recipes/tiny_zero.yaml", {"rl.lr": 1e-5, "output_dir": "/tmp/run"})

Unknown or misspelt keys fail at load with the file, line and nearest valid key; values are checked
against the field's type (and its allowed choices); batch sizes name their unit and must divide.
Relative paths in a recipe are relative to the directory you run from.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlvr import algos

STAGES = ("rl", "sft", "dpo", "reward_model", "rejection_sampling", "ai_feedback", "critique_revise")
# Names of earlier releases: a recipe that uses one gets an error naming the new one.
RENAMED = {"grpo": "rl"}


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message says where and how to fix it."""


@dataclass
class LoraConfig:
    """LoRA adapters on the policy (rlvr.model.load, through peft): only they train, the base stays frozen. The KL
    reference is the base (adapters off), checkpoints hold the adapter, ``final/`` the merged model. The PPO critic
    and the reward-model stage train in full."""

    r: int = 0  # the adapters' rank; 0: off, the whole model trains
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0
    # Module names to adapt (peft's target_modules, e.g. [q_proj, v_proj]); []: every linear layer of the decoder,
    # peft's "all-linear" (the LM head and the embeddings stay frozen)
    target_modules: list[str] = field(default_factory=list)
    adapter: str = ""  # a saved peft adapter directory to continue training (a checkpoint, or final/adapter)


@dataclass
class ModelConfig:
    path: str = "rlvr/tiny/model"  # a local HF-format directory or a hub id
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    train: str = ""  # JSONL / JSON / parquet file, a local dataset dir, or a hub id
    train_split: str = "train"
    test: str = ""  # held-out problems for evaluation; never used for training
    test_split: str = "test"
    question_field: str = "question"
    # Optional format string over the row's columns, e.g. "{text}\nYour code must pass:\n{test_list}";
    # list columns are joined with newlines. Empty: the question_field as is.
    question_format: str = ""
    answer_field: str = "answer"  # "": prompts without answers (a reward model judges the replies)
    # gsm8k: the answer follows "#### " in the answer field; auto: detect that per row
    answer_format: Literal["auto", "plain", "gsm8k"] = "auto"
    template: Literal["r1_zero", "chat", "plain"] = "r1_zero"
    system_prompt: str | None = None
    max_prompt_tokens: int = 512
    shuffle: bool = True
    # SFT / DPO / reward-model rows (rlvr.data.load_conversations / load_preferences)
    prompt_field: str = "prompt"  # a string, or a list of chat messages ending with a user turn
    response_field: str = "response"
    messages_field: str = "messages"  # a chat: [{role, content}, ...] user/assistant alternating
    chosen_field: str = "chosen"  # a string, or messages whose last one is the assistant's reply
    rejected_field: str = "rejected"
    # A Jinja chat template for a tokenizer that has none (the tiny model); saved with checkpoints
    chat_template: str = ""
    ptx: str = ""  # rl.ptx_coef's SFT data: chats or prompt/response rows, read like the SFT stage's
    max_seq_tokens: int = 512  # prompt + response; a longer example is an error, never silently cut


@dataclass
class SamplerConfig:
    backend: Literal["hf", "vllm"] = "hf"
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    batch_seqs: int = 256  # hf backend: sequences generated together
    # hf backend: fixed-shape decode, its token step under torch.compile (CUDA graphs on a GPU): far fewer
    # kernel launches per token. Every chunk pads to batch_seqs rows (so set it near the rows a step samples)
    # in a KV cache kept between calls; each new (rows, prompt + new tokens) shape compiles once (~1 min).
    compile: bool = False
    gpu_memory_utilization: float = 0.3  # vllm: TRL learnt to leave the learner room (trl#2688)
    enable_sleep: bool = True  # vllm: free the KV cache and weights while the learner steps
    tensor_parallel_size: int = 1


@dataclass
class RewardSpec:
    verifier: str = "math"  # registered name, or path/to/file.py:function
    weight: float = 1.0


@dataclass
class CriticConfig:
    """The value model of ``rl.advantage: gae``: a scalar head over a causal LM's body, trained beside the policy."""

    # "" : the policy's own weights with a new value head; else a model directory or hub id, e.g. the
    # reward model's checkpoint (InstructGPT initialised the critic from it)
    path: str = ""
    lr: float = 1e-5
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    value_clip: float = 0.2  # PPO's value clipping around the values the advantages used (0: unclipped)


@dataclass
class RLConfig:
    steps: int = 200  # rollout steps (one sample-verify-learn round each)
    prompts_per_step: int = 64
    samples_per_prompt: int = 8
    micro_batch_seqs: int = 8  # sequences per forward/backward
    micro_batch_tokens: int = 0  # if set: token-budget micro-batches of whole groups (bin packing) instead
    # each micro-batch's sequences as one row without padding (for flash-attention's varlen kernels:
    # no compute on padding); the prompt then runs once per sample, not once per group
    padding_free: bool = False
    # the learner runs each group's prompt once and its samples from that KV cache: fewer FLOPs when
    # prompts are long, but two decoder passes per micro-batch (false: every row whole, in one pass)
    share_prompt: bool = True
    optimizer_steps_per_pass: int = 1  # the rollout batch splits into this many optimizer steps
    passes_per_step: int = 1  # optimisation passes over each rollout batch (PPO epochs)
    lr: float = 1e-6
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # The advantage estimator (rlvr.algos.ADVANTAGES). grpo: (r - mean) / std within the group; drgrpo:
    # r - mean (Dr. GRPO); rloo: r - the mean of the group's others; reinforce_pp(_baseline): REINFORCE++, the
    # reward-to-go whitened over the batch (after the group mean); gae: PPO's, from a learned critic (rl.critic)
    advantage: Literal["grpo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae"] = "drgrpo"
    # The policy loss (rlvr.algos.POLICY_LOSSES): ppo (clipped ratio per token), gspo (one clipped ratio per
    # sequence; clip_low/clip_high ~3e-4/4e-4), cispo (a clipped, stop-gradient weight times log-prob)
    policy_loss: Literal["ppo", "gspo", "cispo"] = "ppo"
    # Dr. GRPO's constant normaliser (seq_mean_token_sum_norm) removes the length bias of the others.
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    clip_low: float = 0.2
    clip_high: float = 0.28  # DAPO clip-higher
    beta: float = 0.0  # KL to a frozen reference; 0 loads no reference model
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    # Where the KL goes: "loss" (GRPO's: beta x KL per token in the loss), or "reward" (InstructGPT's: -beta x
    # KL on every token's reward, for the token-level estimators reinforce_pp* and gae)
    kl_penalty: Literal["loss", "reward"] = "loss"
    gamma: float = 1.0  # token-level estimators: the discount
    lam: float = 0.95  # gae: lambda
    whiten_advantages: bool = False  # gae: normalise advantages over the batch's tokens (REINFORCE++ always does)
    critic: CriticConfig = field(default_factory=CriticConfig)
    # PPO-ptx (InstructGPT): each optimizer step also takes the next-token loss of ptx_seqs_per_step SFT rows
    # (data.ptx), weighted by ptx_coef, so the policy keeps what SFT taught it
    ptx_coef: float = 0.0
    ptx_seqs_per_step: int = 8
    entropy_coef: float = 0.0
    # > 0: truncated importance sampling for the sampler-learner mismatch (vLLM): the clip ratio against
    # the learner's own log-probs (one more no-grad forward), each token weighted by min(ratio, tis_cap)
    tis_cap: float = 0.0
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, sample more
    max_sampling_rounds: int = 4
    overlong: Literal["none", "mask", "penalty"] = "none"
    overlong_buffer_tokens: int = 128  # penalty ramps from 0 to overlong_penalty over the last N tokens
    overlong_penalty: float = 1.0
    verifier_timeout_s: float = 1.0
    verifier_workers: int = 0  # 0: one per core
    # The weight-sync guard: after every sync the sampler and the learner score a fixed probe of held-out
    # tokens; a mean |log-prob gap| above this stops the run (logged as sync/probe_gap). None: the backend's
    # and dtype's default from measured float noise (rlvr.sampling.SYNC_MAX_GAP); 0: off
    sync_max_gap: float | None = None


@dataclass
class EnvConfig:
    """Multi-turn episodes (rlvr.episodes): the model's turns and an environment's observations, e.g. a tool's
    output, scored as a whole by the recipe's verifiers."""

    # none: single-turn completions; python: the sandboxed Python tool (rlvr.episodes.PythonEnv); or a class of
    # your own, path/to/file.py:Class or package.module:Class
    name: str = "none"
    max_turns: int = 4  # model turns per episode (max_turns - 1 observations at most)
    max_turn_tokens: int = 0  # tokens per model turn (0: what is left of the episode's sampler.max_new_tokens)
    workers: int = 0  # environment steps run at once (0: two per core)
    options: dict = field(default_factory=dict)  # the environment class's keyword arguments, e.g. {timeout_s: 2}


@dataclass
class EvalConfig:
    problems: int = 200  # held-out problems scored greedily before and after training
    every_steps: int = 0  # also evaluate every N steps (0: only before and after)
    samples: int = 0  # with every_steps: also sample N completions per problem for pass@1 / pass@N
    max_new_tokens: int = 0  # 0: the sampler's
    verifier: str = "math"  # judges the final answer (accuracy_any_format)
    format_verifier: str = "format"  # also required for `accuracy`; "" to count the answer alone


@dataclass
class SFTConfig:
    steps: int = 1000  # optimizer steps
    seqs_per_step: int = 32  # examples (or packed rows) per optimizer step
    micro_batch_seqs: int = 8
    lr: float = 1e-5
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    packing: bool = False  # pack whole examples into rows of data.max_seq_tokens (attention kept per example)
    eval_every: int = 0  # held-out loss every N steps (0: before and after only)
    eval_examples: int = 200
    eval_max_new_tokens: int = 64  # greedy replies to held-out prompts, saved for inspection
    format_regex: str = ""  # if set, report the fraction of greedy held-out replies that fully match it


@dataclass
class RejectionSamplingConfig:
    """Rejection sampling (rlvr.rejection_sampling): each round samples the policy, keeps the best samples by the
    recipe's ``rewards`` and fine-tunes on them (the SFT loss); the next round samples the new policy."""

    rounds: int = 4
    prompts_per_round: int = 256  # training problems sampled each round
    samples_per_prompt: int = 8  # N: completions of each problem to choose from
    # Which to keep (rlvr.algos.KEEP_RULES): best (the highest total reward of each problem's), top_k (its
    # top_k highest) or threshold (every one whose total reward reaches threshold). Truncated ones never.
    keep: Literal["best", "top_k", "threshold"] = "best"
    top_k: int = 2
    threshold: float = 1.0
    # A verifier of `rewards` (as spelt there) that must score a sample 1 for it to be kept; "": any reward
    require_correct: str = "math"
    steps_per_round: int = 50  # SFT optimizer steps on each round's kept samples
    seqs_per_step: int = 32  # kept samples (or packed rows) per optimizer step
    micro_batch_seqs: int = 8
    lr: float = 1e-5
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"  # over all rounds' steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    packing: bool = False  # pack kept samples into rows of data.max_prompt_tokens + sampler.max_new_tokens
    verifier_timeout_s: float = 1.0
    verifier_workers: int = 0  # 0: one per core

    @property
    def steps(self) -> int:
        """The run's optimizer steps, all rounds (the step count every stage's section has)."""
        return self.rounds * self.steps_per_round


@dataclass
class DPOConfig:
    steps: int = 500
    pairs_per_step: int = 32
    micro_batch_pairs: int = 8
    lr: float = 5e-7
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.1
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    # mean log-probability per response token instead of the sum (SimPO/IPO-style length normalisation)
    length_normalize: bool = False
    eval_every: int = 0
    eval_pairs: int = 200


@dataclass
class RewardModelConfig:
    steps: int = 500
    pairs_per_step: int = 32
    micro_batch_pairs: int = 8
    lr: float = 1e-5
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    center_coef: float = 0.0  # pulls mean scores toward 0 (reward centering); the BT loss ignores offsets
    eval_every: int = 0
    eval_pairs: int = 200
    # GRPO recipes: the trained reward model that the `reward_model` verifier scores completions with
    scorer: str = ""
    scorer_batch_seqs: int = 64


@dataclass
class JudgeConfig:
    """An LM judge (rlvr.judge): a chat model's next-token probabilities score answers against a rubric. Used by
    ``stage: ai_feedback`` and by ``{verifier: judge}`` in a sampling stage's rewards."""

    model: str = ""  # a local HF directory or hub id of a causal LM with a chat template
    # yes_no: P(yes) among the tokens judge.yes / judge.no; rating: the expected 1-10 rating (1-9 where "10" is
    # two tokens), mapped to [0, 1]
    mode: Literal["yes_no", "rating"] = "yes_no"
    rubric: str = ""  # the standard, inline ("" : rubric_file, else rlvr.judge.RUBRIC)
    rubric_file: str = ""  # or a text file holding it (a constitution)
    # The user message for one answer: {rubric}, {question}, {answer}, {top} (the rating scale's top); and for two,
    # {answer_a}, {answer_b} in place of {answer}. "": the mode's default (rlvr.judge.PROMPTS)
    prompt: str = ""
    pairwise_prompt: str = ""
    system: str = ""  # a system message before it ("": none)
    response_prefix: str = ""  # text after the chat template's generation prompt, before the verdict token
    # yes_no: the verdict tokens (each must be one token of the judge's tokenizer)
    yes_token: str = "Yes"
    no_token: str = "No"
    chat_template: str = ""  # a Jinja chat template for a judge whose tokenizer has none
    batch_seqs: int = 16  # prompts per forward pass
    max_tokens: int = 2048  # a longer prompt is not judged (a failed verdict, a dropped pair)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@dataclass
class AIFeedbackConfig:
    """RLAIF preference pairs (rlvr.ai_feedback): two policy samples of each prompt, compared by the judge in both
    orders; the pairs it prefers clearly enough are written for ``stage: dpo`` / ``reward_model``."""

    prompts: int = 0  # training prompts used, in dataset order (0: all)
    chunk_prompts: int = 64  # prompts per chunk file: a stopped run resumes after its last complete chunk
    # keep a pair when the judge's |P(a > b) - P(b > a)| reaches this; closer ones are ties and are dropped
    margin: float = 0.1
    # pairwise: the judge sees both answers, in both orders (judge.pairwise_prompt); pointwise: it scores each alone
    # (judge.prompt) and P(a > b) = (s_a + 1 - s_b) / 2, for a judge that cannot compare (SmolLM2-135M-Instruct
    # agrees with 25 of 30 clear pairs scoring them alone, 9 of 30 comparing them: tests/test_judge.py)
    judge_by: Literal["pairwise", "pointwise"] = "pairwise"


@dataclass
class CritiqueReviseConfig:
    """Constitutional AI's supervised phase (rlvr.critique_revise): sample an answer, critique it against a principle
    drawn from the constitution, revise it; then fine-tune (the SFT loss) on the revisions."""

    constitution: list[str] = field(default_factory=list)  # principles, inline ([]: constitution_file, else default)
    constitution_file: str = ""  # or a file: a YAML/JSON list, or text with principles separated by blank lines
    # Templates (user messages): critique {question} {answer} {principle}; revision adds {critique}.
    # "": rlvr.critique_revise.CRITIQUE_PROMPT / REVISION_PROMPT
    critique_prompt: str = ""
    revision_prompt: str = ""
    revisions: int = 1  # critique-revise rounds per answer, each with a newly drawn principle
    prompts: int = 0  # training prompts used, in dataset order (0: all)
    chunk_prompts: int = 64  # prompts per chunk file: a stopped run resumes after its last complete chunk
    steps: int = 100  # SFT optimizer steps on the revisions
    seqs_per_step: int = 32
    micro_batch_seqs: int = 8
    lr: float = 1e-5
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    packing: bool = False  # pack revisions into rows of data.max_seq_tokens


@dataclass
class DistillConfig:
    """On-policy distillation (``stage: distill``, rlvr.rl): the RL stage's loop and ``rl`` section (batch sizes,
    optimiser, policy loss) with a frozen teacher that scores every token the student sampled. Each token's advantage
    is -kl_coef x (student - teacher log-prob), the reverse KL's one-sample estimate (rlvr.algos.distill_advantages),
    plus reward_coef x the advantage ``rl.advantage`` makes of the recipe's rewards."""

    teacher: str = ""  # a local HF directory or hub id: a causal LM with the student's tokenizer (required)
    teacher_dtype: Literal["", "float32", "bfloat16", "float16"] = ""  # "": model.dtype
    kl_coef: float = 1.0
    # > 0: the verifiers' advantages join the teacher's (0: the rewards are measured and logged, not learnt from)
    reward_coef: float = 0.0


@dataclass
class AsyncConfig:
    """Asynchronous RL (rlvr.async_sampler): the sampler generates and verifies in process(es) of its own, ahead of
    the learner, which pushes its weights after every step."""

    enabled: bool = False
    # A sample is at most this many policy versions (learner steps) older than the learner that trains on it;
    # 0: on-policy, the synchronous run's exact metrics and weights (the sampler waits for every step's weights)
    max_off_policy_steps: int = 1
    # Under torchrun: the last N ranks sample, the others learn. 0 (a single process, no launcher): one sampler
    # process is started on this host
    sampler_ranks: int = 0
    sampler_threads: int = 0  # torch CPU threads of each sampler process (0: cpu_threads)
    # One host, CPU: the cores the sampler processes run on (the learners then run on the others); []: anywhere
    sampler_cores: list[int] = field(default_factory=list)
    # Where the sampler started on this host (sampler_ranks 0) generates: "" is the CPU, or with CUDA the last GPU
    sampler_device: str = ""
    timeout_s: float = 1800.0  # how long a weight push or a batch may take before the run stops with an error


@dataclass
class DeepSpeedConfig:
    """The distributed learner (rlvr.learner, rlvr.dist): launch with torchrun or deepspeed for N ranks."""

    zero_stage: int = 0  # 0: plain torch (any number of ranks); 2: shard grads + Adam state; 3: weights too
    offload_optimizer: bool = False  # ZeRO: Adam state and step in CPU memory
    # Free-form DeepSpeed JSON merged over rlvr's (rlvr.learner.deepspeed_json), e.g.
    # {zero_optimization: {stage3_param_persistence_threshold: 0}}
    config: dict = field(default_factory=dict)


@dataclass
class WandbConfig:
    project: str = ""  # set to log to Weights & Biases too (pip install -e '.[wandb]'); rank 0 only
    name: str = ""  # the run's name; "": output_dir's last part
    entity: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    mode: Literal["online", "offline", "disabled"] = "online"  # offline: kept under output_dir, `wandb sync` later


@dataclass
class LogConfig:
    """Where metrics go besides ``output_dir/metrics.jsonl`` (always written)."""

    tensorboard: bool = True  # output_dir/tensorboard
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Config:
    stage: Literal[
        "rl", "distill", "sft", "dpo", "reward_model", "rejection_sampling", "ai_feedback", "critique_revise"
    ] = "rl"
    output_dir: str = "runs/default"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("math", 1.0)])
    rl: RLConfig = field(default_factory=RLConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    async_rl: AsyncConfig = field(default_factory=AsyncConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rejection_sampling: RejectionSamplingConfig = field(default_factory=RejectionSamplingConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    ai_feedback: AIFeedbackConfig = field(default_factory=AIFeedbackConfig)
    critique_revise: CritiqueReviseConfig = field(default_factory=CritiqueReviseConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    log: LogConfig = field(default_factory=LogConfig)
    cpu_threads: int = 0  # torch intra-op threads (0: torch's default); tiny models run fastest on 1
    checkpoint_every: int = 0  # save an HF checkpoint every N steps (and always at the end)
    # Resume: "" starts fresh, "auto" continues from the newest valid checkpoint in output_dir (fresh if
    # none), a path continues from that checkpoint (or from the newest valid one in that run dir).
    resume: str = ""
    keep_last: int = 3  # resumable checkpoints kept (0: all), plus the best by keep_best_metric
    keep_best_metric: str = ""  # a metrics.jsonl key, e.g. "reward/total"; "" keeps only the last ones
    keep_best_mode: Literal["max", "min"] = "max"
    max_bad_steps: int = 3  # steps in a row with a non-finite loss or gradient before the run stops


# ---------------------------------------------------------------------------------------------
# Loading


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line in the YAML text, for error messages."""
    lines: dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[f"{prefix[:-1]}[{i}]"] = item.start_mark.line + 1
                walk(item, f"{prefix[:-1]}[{i}].")

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return lines


def _where(source: str, key: str, lines: dict[str, int]) -> str:
    return f"{source}, line {lines[key]}" if key in lines else source


def _coerce(value: Any, tp: Any, key: str, source: str, lines: dict[str, int], root=None) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    where = _where(source, key, lines)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key + ".", source, lines, root)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source, lines, root)
    if origin is Literal:
        if value not in args:
            near = [RENAMED[value]] if value in RENAMED else difflib.get_close_matches(str(value), map(str, args), n=1)
            hint = (
                f" (did you mean '{near[0]}'?{f' {value!r} is now {near[0]!r}' if value in RENAMED else ''})"
                if near
                else ""
            )
            raise ConfigError(f"{where}: '{key}' is {value!r}; choose one of {', '.join(map(str, args))}{hint}")
        return value
    if origin is list:
        if isinstance(value, str):  # YAML on the command line, or a comma list: --eval.k=1,4,16
            value = yaml.safe_load(value) if value.lstrip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", source, lines, root) for i, v in enumerate(value)]
    if tp is dict or origin is dict:  # free-form mappings (deepspeed.config): YAML on the command line
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if tp is int else float(value)
            except (ValueError, yaml.YAMLError):
                pass
        ok = (
            isinstance(value, int) and not isinstance(value, bool)
            if tp is int
            else (isinstance(value, (int, float)) and not isinstance(value, bool))
        )
        if not ok:
            raise ConfigError(f"{where}: '{key}' must be {'an integer' if tp is int else 'a number'}, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def _build(cls, values: dict, prefix: str, source: str, lines: dict[str, int], root=None):
    root = root or cls
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(
                f"{_where(source, key, lines)}: unknown key '{key}'{_suggest(str(k), prefix, names, root)}"
            )
        kwargs[k] = _coerce(v, hints[k], key, source, lines, root)
    return cls(**kwargs)


# Names users bring from TRL (RLConfig, TrainingArguments) and verl, and rlvr's key for the same setting;
# a leading "." is the stage's own section (rl.lr, sft.lr, ...).
FOREIGN_KEYS = {
    "learning_rate": ".lr",
    "lr_scheduler_type": ".lr_schedule",
    "max_steps": ".steps",
    "total_training_steps": ".steps",
    "num_train_epochs": ".steps (rlvr counts steps, not epochs)",
    "warmup_ratio": ".warmup_steps (a number of steps)",
    "num_warmup_steps": ".warmup_steps",
    "num_generations": "rl.samples_per_prompt",
    "rollout.n": "rl.samples_per_prompt",
    "per_device_train_batch_size": "rl.micro_batch_seqs (sequences per forward/backward; sft.micro_batch_seqs, "
    "dpo.micro_batch_pairs)",
    "ppo_micro_batch_size_per_gpu": "rl.micro_batch_seqs",
    "train_batch_size": "rl.prompts_per_step",
    "ppo_mini_batch_size": "rl.optimizer_steps_per_pass (= prompts_per_step / ppo_mini_batch_size)",
    "gradient_accumulation_steps": "rl.micro_batch_seqs (an optimizer step is prompts_per_step x samples_per_prompt "
    "/ optimizer_steps_per_pass sequences, in micro-batches of micro_batch_seqs)",
    "max_completion_length": "sampler.max_new_tokens",
    "response_length": "sampler.max_new_tokens",
    "max_prompt_length": "data.max_prompt_tokens",
    "prompt_length": "data.max_prompt_tokens",
    "max_length": "data.max_seq_tokens",
    "max_seq_length": "data.max_seq_tokens",
    "temperature": "sampler.temperature",
    "top_p": "sampler.top_p",
    "epsilon": "rl.clip_low",
    "epsilon_low": "rl.clip_low",
    "epsilon_high": "rl.clip_high",
    "clip_ratio_low": "rl.clip_low",
    "clip_ratio_high": "rl.clip_high",
    "clip_ratio": "rl.clip_low",
    "kl_coef": "rl.beta",
    "kl_loss_coef": "rl.beta",
    "kl_loss_type": "rl.kl_estimator",
    "num_iterations": "rl.passes_per_step",
    "ppo_epochs": "rl.passes_per_step",
    "loss_type": "rl.loss_agg",
    "loss_agg_mode": "rl.loss_agg",
    "scale_rewards": "rl.advantage (grpo divides by the group's std, drgrpo does not)",
    "mask_truncated_completions": "rl.overlong (mask)",
    "entropy_coeff": "rl.entropy_coef",
    "use_vllm": "sampler.backend (vllm)",
    "vllm_gpu_memory_utilization": "sampler.gpu_memory_utilization",
    "gpu_memory_utilization": "sampler.gpu_memory_utilization",
    "vllm_importance_sampling_cap": "rl.tis_cap",
    "save_steps": "checkpoint_every",
    "save_freq": "checkpoint_every",
    "save_total_limit": "keep_last",
    "eval_steps": "eval.every_steps",
    "test_freq": "eval.every_steps",
    "model_name_or_path": "model.path",
    "dataset_name": "data.train",
    "torch_dtype": "model.dtype",
    "bf16": "model.dtype (bfloat16)",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "enable_gradient_checkpointing": "model.gradient_checkpointing",
    "report_to": "log.wandb.project, log.tensorboard",
    "packing": "sft.packing",
    "teacher_model_name_or_path": "distill.teacher",
    "teacher_model": "distill.teacher",
    "opd_kl_coef": "distill.kl_coef",
}


def _suggest(key: str, prefix: str, names: list[str], root) -> str:
    """The hint after 'unknown key': a renamed section's new name, a TRL/verl name's rlvr equivalent, else the
    nearest key of the same section, else the same name in another section, else the section's keys."""
    section = prefix.rstrip(".")
    if not section and key in RENAMED:
        return f"; the section '{key}' is now '{RENAMED[key]}' (rename it in the recipe and in --{key}.* flags)"
    foreign = FOREIGN_KEYS.get(key) or FOREIGN_KEYS.get(f"{section.rsplit('.', 1)[-1]}.{key}")
    near_foreign = difflib.get_close_matches(key, list(FOREIGN_KEYS), n=1, cutoff=0.85)
    if foreign is None and near_foreign and not difflib.get_close_matches(key, names, n=1, cutoff=0.85):
        key, foreign = near_foreign[0], FOREIGN_KEYS[near_foreign[0]]
    if foreign is not None:
        target, _, note = foreign.partition(" (")
        if target.startswith("."):  # the stage's own section; at the top level, any stage's
            target = f"{section}{target}" if section else "' / '".join(f"{st}{target}" for st in STAGES)
        return f"; did you mean '{target}'{' (' + note if note else ''}? ('{key}' is the TRL / verl name)"
    near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if near:
        return f"; did you mean '{prefix}{near[0]}'?"
    elsewhere = [k for k in _all_keys(root) if k.rsplit(".", 1)[-1] == key]
    elsewhere = elsewhere or difflib.get_close_matches(key, _all_keys(root), n=1, cutoff=0.75)
    if elsewhere:
        return f"; did you mean '{elsewhere[0]}'?"
    near = difflib.get_close_matches(key, names, n=1, cutoff=0.4)
    return f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys here: {', '.join(names)}"


def _all_keys(cls, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config dataclass."""
    out = []
    for f, tp in zip(dataclasses.fields(cls), typing.get_type_hints(cls).values()):
        out += _all_keys(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else [f"{prefix}{f.name}"]
    return out


def _nest(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for dotted, v in flat.items():
        *parents, last = str(dotted).split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}': '{p}' is not a section")
        node[last] = v
    return out


def merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``, mappings recursively."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None, cls=Config):
    """Recipe YAML (may be None: all defaults) plus dotted overrides -> validated config."""
    values, lines, source = {}, {}, "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist; recipes live in recipes/, e.g. recipes/tiny_zero.yaml")
        text = path.read_text()
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of keys to values")
        lines, source = _key_lines(text), str(path)
    if overrides:
        _build(cls, _nest(overrides), "", "command-line override", {})  # blame the override, not the file
        values = merge(values, _nest(overrides))
        source = f"{source} + command-line overrides"
    cfg = _build(cls, values, "", source, lines)
    if isinstance(cfg, Config):  # a value an override set is not on the file's line any more
        validate(cfg, source, {k: n for k, n in lines.items() if k not in (overrides or {})})
    return cfg


def validate(cfg: Config, source: str = "config", lines: dict[str, int] | None = None) -> None:
    """Cross-field checks: batch-size divisibility, settings that contradict each other, local paths."""
    _validate_stages(cfg, source)
    _validate_lora(cfg, source)
    _validate_feedback(cfg, source)
    _check_paths(cfg, source, lines or {})
    if cfg.log.wandb.project and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            f"{source}: log.wandb.project is set but wandb is not installed: pip install -e '.[wandb]' "
            f"(or pip install wandb)"
        )
    g = cfg.rl
    for world, what in _validate_async(cfg, source):
        if cfg.stage in RL_LOOP_STAGES and g.prompts_per_step % world:
            raise ConfigError(
                f"{source}: rl.prompts_per_step={g.prompts_per_step} does not split over {world} "
                f"{what}; make it a multiple of the number of processes"
            )
    seqs = g.prompts_per_step * g.samples_per_prompt
    per_opt = seqs // max(g.optimizer_steps_per_pass, 1)
    for name, v in [
        ("rl.prompts_per_step", g.prompts_per_step),
        ("rl.samples_per_prompt", g.samples_per_prompt),
        ("rl.micro_batch_seqs", g.micro_batch_seqs),
        ("rl.optimizer_steps_per_pass", g.optimizer_steps_per_pass),
        ("rl.passes_per_step", g.passes_per_step),
        ("rl.steps", g.steps),
    ]:
        if v < 1:
            raise ConfigError(f"{source}: {name} must be at least 1, got {v}")
    no_groups = cfg.stage == "distill" and not cfg.distill.reward_coef  # the teacher judges each sample alone
    if g.samples_per_prompt < 2 and g.advantage not in ("reinforce_pp", "gae") and not no_groups:
        raise ConfigError(
            f"{source}: rl.samples_per_prompt must be >= 2: rl.advantage={g.advantage} compares each "
            f"sample with its group (reinforce_pp and gae need no group)"
        )
    _validate_algorithm(g, source)
    if cfg.stage == "distill":
        _validate_distill(cfg, source)
    if seqs % g.optimizer_steps_per_pass:
        raise ConfigError(
            f"{source}: prompts_per_step x samples_per_prompt = {seqs} sequences per step do not split into "
            f"rl.optimizer_steps_per_pass={g.optimizer_steps_per_pass} equal optimizer steps; pick a divisor of "
            f"{seqs}"
        )
    if per_opt % g.micro_batch_seqs:
        raise ConfigError(
            f"{source}: each optimizer step has {per_opt} sequences, not a multiple of rl.micro_batch_seqs="
            f"{g.micro_batch_seqs}; pick a divisor of {per_opt}"
        )
    if not 0 <= g.clip_low < (float("inf") if g.policy_loss == "cispo" else 1) or g.clip_high < 0:
        raise ConfigError(
            f"{source}: rl.clip_low must be in [0, 1) (cispo: >= 1 leaves its weight unbounded below) "
            f"and rl.clip_high >= 0"
        )
    if g.sync_max_gap is not None and g.sync_max_gap < 0:
        raise ConfigError(f"{source}: rl.sync_max_gap must be >= 0 (0: no weight-sync guard), or null for the default")
    if g.tis_cap and g.tis_cap < 1:
        raise ConfigError(
            f"{source}: rl.tis_cap={g.tis_cap} would scale every token down; use 0 (off) or a cap >= 1 (2 is usual)"
        )
    if not cfg.rewards:
        raise ConfigError(f"{source}: rewards is empty; list at least one verifier, e.g. [{{verifier: math}}]")
    if cfg.sampler.temperature <= 0:
        raise ConfigError(f"{source}: sampler.temperature must be > 0 for RL sampling (greedy is used for eval)")
    e = cfg.env
    if e.max_turns < 1 or e.max_turn_tokens < 0 or e.workers < 0:
        raise ConfigError(
            f"{source}: env.max_turns must be >= 1, env.max_turn_tokens and env.workers >= 0 (0: their defaults)"
        )


def _validate_async(cfg, source: str) -> list[tuple[int, str]]:
    """async_rl against the launch (torchrun's WORLD_SIZE, set before the config loads) -> the process counts
    that split rl.prompts_per_step: the learners', and the samplers'."""
    a, world = cfg.async_rl, int(os.environ.get("WORLD_SIZE", "1"))
    if not a.enabled:
        if a.sampler_ranks:
            raise ConfigError(f"{source}: async_rl.sampler_ranks is set but async_rl.enabled is false")
        return [(world, "processes")]
    if cfg.stage not in RL_LOOP_STAGES:
        raise ConfigError(f"{source}: async_rl applies to stages rl and distill, not {cfg.stage!r}")
    if a.max_off_policy_steps < 0 or a.sampler_ranks < 0 or a.sampler_threads < 0 or a.timeout_s <= 0:
        raise ConfigError(
            f"{source}: async_rl.max_off_policy_steps, sampler_ranks and sampler_threads must be >= 0 and "
            f"async_rl.timeout_s > 0"
        )
    if a.sampler_ranks == 0 and world > 1:
        raise ConfigError(
            f"{source}: under torchrun ({world} processes) async_rl.sampler_ranks names how many of them sample "
            f"(the last ones); e.g. --async_rl.sampler_ranks=1"
        )
    if a.sampler_ranks and a.sampler_ranks >= world:
        raise ConfigError(
            f"{source}: async_rl.sampler_ranks={a.sampler_ranks} leaves no learner among the {world} processes "
            f"torchrun started; launch more (--nproc_per_node, --nnodes) or sample on fewer"
        )
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()  # Linux only
    if a.sampler_cores and (not set(a.sampler_cores) < cores):
        raise ConfigError(
            f"{source}: async_rl.sampler_cores={a.sampler_cores} must name some of this machine's cores "
            f"{sorted(cores)} and leave at least one to the learner"
        )
    samplers = a.sampler_ranks or 1
    return [(world - a.sampler_ranks, "learner processes"), (samplers, "sampler processes")]


def _check_template(template: str, key: str, allowed: set[str], needed: set[str], source: str) -> None:
    """A prompt template's {placeholders}: only ``allowed`` ones, every ``needed`` one."""
    import string

    try:
        names = {n for _, n, _, _ in string.Formatter().parse(template) if n is not None}
    except ValueError as e:
        raise ConfigError(f"{source}: {key} is not a valid template ({e}); write literal braces as {{{{ }}}}") from None
    if not template:
        return
    if names - allowed or needed - names:

        def braces(ns):
            return ", ".join("{" + n + "}" for n in sorted(ns)) or "none"

        raise ConfigError(
            f"{source}: {key} may use {braces(allowed)} and must use {braces(needed)}; it has {braces(names)}"
        )


def _validate_feedback(cfg, source: str) -> None:
    """The judge, ai_feedback and critique_revise sections, where the stage or the rewards use them."""
    j = cfg.judge
    if cfg.stage == "ai_feedback" or (cfg.stage in SAMPLING_STAGES and any(r.verifier == "judge" for r in cfg.rewards)):
        if not j.model:
            raise ConfigError(f"{source}: judge.model is empty; give a chat model (a local directory or a hub id)")
        if j.rubric and j.rubric_file:
            raise ConfigError(f"{source}: judge.rubric and judge.rubric_file are both set; keep one")
        if j.batch_seqs < 1 or j.max_tokens < 1:
            raise ConfigError(f"{source}: judge.batch_seqs and judge.max_tokens must be at least 1")
        base = {"rubric", "question", "top"}
        _check_template(j.prompt, "judge.prompt", base | {"answer"}, {"answer"}, source)
        _check_template(
            j.pairwise_prompt,
            "judge.pairwise_prompt",
            base | {"answer_a", "answer_b"},
            {"answer_a", "answer_b"},
            source,
        )
    a, c = cfg.ai_feedback, cfg.critique_revise
    if cfg.stage == "ai_feedback" and (a.prompts < 0 or a.chunk_prompts < 1 or not 0 <= a.margin < 1):
        raise ConfigError(f"{source}: ai_feedback needs prompts >= 0 (0: all), chunk_prompts >= 1 and margin in [0, 1)")
    if cfg.stage == "critique_revise":
        for name in ("revisions", "chunk_prompts", "steps", "seqs_per_step", "micro_batch_seqs"):
            if getattr(c, name) < 1:
                raise ConfigError(f"{source}: critique_revise.{name} must be at least 1, got {getattr(c, name)}")
        if c.seqs_per_step % c.micro_batch_seqs or c.prompts < 0:
            raise ConfigError(
                f"{source}: critique_revise.seqs_per_step={c.seqs_per_step} must be a multiple of micro_batch_seqs="
                f"{c.micro_batch_seqs}, and critique_revise.prompts >= 0 (0: all)"
            )
        if c.constitution and c.constitution_file:
            raise ConfigError(f"{source}: critique_revise.constitution and constitution_file are both set; keep one")
        qa = {"question", "answer", "principle"}
        _check_template(c.critique_prompt, "critique_revise.critique_prompt", qa, {"answer", "principle"}, source)
        _check_template(
            c.revision_prompt, "critique_revise.revision_prompt", qa | {"critique"}, {"answer", "critique"}, source
        )
    for key, path in (("judge.rubric_file", j.rubric_file), ("critique_revise.constitution_file", c.constitution_file)):
        if path and not Path(path).expanduser().is_file():
            raise ConfigError(f"{source}: {key} {path!r} is not a file (relative paths are from {Path.cwd()})")
    if cfg.stage in ("ai_feedback", "critique_revise") and cfg.env.name != "none":
        raise ConfigError(f"{source}: stage {cfg.stage} samples single-turn answers; set env.name: none")


def _validate_lora(cfg, source: str) -> None:
    """model.lora's values, and the stage that cannot take it."""
    lo = cfg.model.lora
    if lo.r < 0 or lo.alpha <= 0 or not 0 <= lo.dropout < 1:
        raise ConfigError(
            f"{source}: model.lora needs r >= 0 (0: no LoRA), alpha > 0 and dropout in [0, 1); got r={lo.r}, "
            f"alpha={lo.alpha}, dropout={lo.dropout}"
        )
    if lo.adapter and not lo.r:
        raise ConfigError(f"{source}: model.lora.adapter is set but model.lora.r=0 (LoRA off); set model.lora.r")
    if lo.adapter and not (Path(lo.adapter).expanduser() / "adapter_config.json").is_file():
        raise ConfigError(
            f"{source}: model.lora.adapter {lo.adapter!r} has no adapter_config.json: give a directory a peft "
            f"adapter was saved to (a LoRA run's checkpoint, or its final/adapter)"
        )
    if lo.r and cfg.stage == "reward_model":
        raise ConfigError(
            f"{source}: model.lora applies to the policy only; the reward model trains in full: "
            f"set model.lora.r=0 for stage reward_model"
        )


def _validate_algorithm(g: RLConfig, source: str) -> None:
    """Estimator, loss, aggregation and KL placement that do not go together."""
    allowed = algos.POLICY_LOSS_AGGREGATIONS[g.policy_loss]
    if g.loss_agg not in allowed:
        raise ConfigError(
            f"{source}: rl.policy_loss={g.policy_loss} is sound only with rl.loss_agg in "
            f"({', '.join(allowed)}), not {g.loss_agg}; set rl.loss_agg: {allowed[0]}"
        )
    if g.kl_penalty == "reward" and g.advantage not in algos.TOKEN_LEVEL_ADVANTAGES:
        raise ConfigError(
            f"{source}: rl.kl_penalty=reward puts -beta x KL into every token's reward, which only the "
            f"token-level estimators use ({', '.join(sorted(algos.TOKEN_LEVEL_ADVANTAGES))}); with "
            f"rl.advantage={g.advantage} use rl.kl_penalty: loss"
        )
    if g.kl_penalty == "reward" and g.beta <= 0:
        raise ConfigError(f"{source}: rl.kl_penalty=reward with rl.beta={g.beta} penalises nothing; set rl.beta > 0")
    if g.ptx_coef < 0 or g.ptx_seqs_per_step < 1:
        raise ConfigError(f"{source}: rl.ptx_coef must be >= 0 and rl.ptx_seqs_per_step >= 1")
    if not 0 < g.gamma <= 1 or not 0 <= g.lam <= 1 or g.critic.value_clip < 0:
        raise ConfigError(f"{source}: rl.gamma must be in (0, 1], rl.lam in [0, 1] and rl.critic.value_clip >= 0")


def _validate_distill(cfg, source: str) -> None:
    """The distill section, and the rl settings it cannot run with."""
    d, g = cfg.distill, cfg.rl
    if not d.teacher:
        raise ConfigError(
            f"{source}: stage distill needs distill.teacher: a local HF model directory or hub id of a causal LM with "
            f"the student's tokenizer (e.g. rlvr/tiny/zero_model for the tiny model)"
        )
    if d.kl_coef < 0 or d.reward_coef < 0 or not (d.kl_coef or d.reward_coef):
        raise ConfigError(
            f"{source}: distill.kl_coef and distill.reward_coef must be >= 0 and not both 0 (got {d.kl_coef}, "
            f"{d.reward_coef}); kl_coef > 0 learns from the teacher"
        )
    if g.advantage in algos.ADVANTAGES_WITH_CRITIC:
        raise ConfigError(
            f"{source}: stage distill with rl.advantage={g.advantage}: the teacher gives every token its advantage, a "
            f"critic has nothing to learn; for distill.reward_coef pick grpo, drgrpo, rloo or reinforce_pp(_baseline)"
        )
    if g.kl_penalty == "reward" and not d.reward_coef:
        raise ConfigError(
            f"{source}: rl.kl_penalty=reward shapes the verifiers' advantages, which distill.reward_coef=0 leaves "
            f"out: use rl.kl_penalty: loss, or set distill.reward_coef > 0"
        )


def _validate_stages(cfg, source: str) -> None:
    """Batch sizes of the SFT, DPO and reward-model sections: positive, and micro-batches divide steps."""
    for sec, per_step, micro in (
        ("sft", "seqs_per_step", "micro_batch_seqs"),
        ("dpo", "pairs_per_step", "micro_batch_pairs"),
        ("reward_model", "pairs_per_step", "micro_batch_pairs"),
    ):
        s = getattr(cfg, sec, None)
        if s is None:
            continue
        for name in ("steps", per_step, micro):
            if getattr(s, name) < 1:
                raise ConfigError(f"{source}: {sec}.{name} must be at least 1, got {getattr(s, name)}")
        if getattr(s, per_step) % getattr(s, micro):
            raise ConfigError(
                f"{source}: {sec}.{per_step}={getattr(s, per_step)} is not a multiple of {sec}.{micro}="
                f"{getattr(s, micro)}; pick a divisor of {getattr(s, per_step)}"
            )
    ds = getattr(cfg, "deepspeed", None)
    if ds is not None and ds.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"{source}: deepspeed.zero_stage must be 0 (plain torch), 1, 2 or 3, got {ds.zero_stage}")
    if ds is not None and ds.zero_stage == 3 and cfg.stage in RL_LOOP_STAGES and cfg.sampler.backend == "hf":
        raise ConfigError(
            f"{source}: deepspeed.zero_stage=3 shards the weights the hf sampler generates with; "
            f"use sampler.backend=vllm, or deepspeed.zero_stage=2"
        )
    if ds is not None and ds.zero_stage == 3 and cfg.stage == "sft" and cfg.data.test:
        raise ConfigError(
            f"{source}: deepspeed.zero_stage=3 shards the weights that sft's held-out evaluation generates "
            f"greedy replies with; use deepspeed.zero_stage=2, or data.test='' to train without it"
        )
    if getattr(cfg, "rejection_sampling", None) is not None and cfg.stage == "rejection_sampling":
        _validate_rejection_sampling(cfg, source)
    if getattr(cfg, "dpo", None) is not None and cfg.dpo.beta <= 0:
        raise ConfigError(f"{source}: dpo.beta must be > 0, got {cfg.dpo.beta}")
    uses_rm = any(r.verifier == "reward_model" for r in getattr(cfg, "rewards", []))
    if uses_rm and not cfg.reward_model.scorer:
        raise ConfigError(
            f"{source}: rewards lists the reward_model verifier but reward_model.scorer is empty; "
            f"set it to a checkpoint trained with stage: reward_model"
        )


def _validate_rejection_sampling(cfg, source: str) -> None:
    """The rejection-sampling section's counts, keep rule and verifier, and what it cannot run with."""
    s = cfg.rejection_sampling
    counts = ("rounds", "prompts_per_round", "samples_per_prompt", "steps_per_round", "seqs_per_step", "top_k")
    for name in (*counts, "micro_batch_seqs"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{source}: rejection_sampling.{name} must be at least 1, got {getattr(s, name)}")
    if s.seqs_per_step % s.micro_batch_seqs:
        raise ConfigError(
            f"{source}: rejection_sampling.seqs_per_step={s.seqs_per_step} is not a multiple of "
            f"rejection_sampling.micro_batch_seqs={s.micro_batch_seqs}; pick a divisor of {s.seqs_per_step}"
        )
    if s.keep == "top_k" and s.top_k > s.samples_per_prompt:
        raise ConfigError(
            f"{source}: rejection_sampling.top_k={s.top_k} keeps more than the samples_per_prompt="
            f"{s.samples_per_prompt} there are; lower top_k or raise samples_per_prompt"
        )
    names = [r.verifier for r in cfg.rewards]
    if s.require_correct and s.require_correct not in names:
        raise ConfigError(
            f"{source}: rejection_sampling.require_correct={s.require_correct!r} is not one of the rewards' "
            f"verifiers ({', '.join(names)}); name one of them as spelt there, or '' to keep by reward alone"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if s.prompts_per_round % world:
        raise ConfigError(
            f"{source}: rejection_sampling.prompts_per_round={s.prompts_per_round} does not split over {world} "
            f"processes; make it a multiple of the number of processes"
        )
    if cfg.env.name != "none":
        raise ConfigError(
            f"{source}: env.name={cfg.env.name!r}: rejection sampling samples single-turn completions (its kept "
            f"samples are prompt/response rows); set env.name: none"
        )
    if cfg.deepspeed.zero_stage == 3 and cfg.sampler.backend == "hf":
        raise ConfigError(
            f"{source}: deepspeed.zero_stage=3 shards the weights the hf sampler generates with; "
            f"use sampler.backend=vllm, or deepspeed.zero_stage=2"
        )


def _check_paths(cfg: Config, source: str, lines: dict[str, int]) -> None:
    """Local model and dataset paths must exist, so a typo fails now and not after minutes of model loading.
    A hub id (``owner/name``, no file suffix) is left to the hub."""
    paths = [
        ("model.path", cfg.model.path, _model_is_local),
        ("data.train", cfg.data.train, _data_is_local),
        ("data.test", cfg.data.test, _data_is_local),
    ]
    if cfg.stage in SAMPLING_STAGES and any(r.verifier == "reward_model" for r in cfg.rewards):
        paths.append(("reward_model.scorer", cfg.reward_model.scorer, _model_is_local))
    if cfg.stage in RL_LOOP_STAGES and cfg.rl.ptx_coef:
        if not cfg.data.ptx:
            raise ConfigError(f"{source}: rl.ptx_coef={cfg.rl.ptx_coef} needs SFT rows to learn from: set data.ptx")
        paths.append(("data.ptx", cfg.data.ptx, _data_is_local))
    if cfg.stage == "ai_feedback" or (cfg.stage in SAMPLING_STAGES and any(r.verifier == "judge" for r in cfg.rewards)):
        paths.append(("judge.model", cfg.judge.model, _model_is_local))
    if cfg.stage in RL_LOOP_STAGES and cfg.rl.advantage in algos.ADVANTAGES_WITH_CRITIC:
        paths.append(("rl.critic.path", cfg.rl.critic.path, _model_is_local))
    if cfg.stage == "distill":
        paths.append(("distill.teacher", cfg.distill.teacher, _model_is_local))
    for key, value, is_local in paths:
        if value and is_local(value) and not Path(value).expanduser().exists():
            raise ConfigError(
                f"{_where(source, key, lines)}: {key} {value!r} does not exist (relative paths are from "
                f"the directory you run in, {Path.cwd()}); give an existing path or a hub id like "
                f"{'Qwen/Qwen2.5-0.5B' if key != 'data.train' and key != 'data.test' else 'openai/gsm8k'}"
            )


def _model_is_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or path.count("/") != 1


def _data_is_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or "/" not in path or bool(Path(path).suffix)


# What each stage reads besides the shared sections (model, data, deepspeed, log and the top-level keys):
# the printed and saved config holds only those.
STAGE_SECTIONS = {
    "rl": ("sampler", "rewards", "rl", "env", "eval"),
    "distill": ("sampler", "rewards", "rl", "env", "eval", "distill"),
    "sft": ("sampler", "sft"),
    "dpo": ("dpo",),
    "reward_model": ("reward_model",),
    "rejection_sampling": ("sampler", "rewards", "rejection_sampling", "eval"),
    "ai_feedback": ("sampler", "judge", "ai_feedback"),
    "critique_revise": ("sampler", "critique_revise"),
}
SAMPLING_STAGES = ("rl", "distill", "rejection_sampling")  # the stages that score samples with the recipe's rewards
RL_LOOP_STAGES = ("rl", "distill")  # the stages rlvr.rl runs: they read the rl section


def to_dict(cfg) -> dict:
    """The config as plain data; for a training config, the shared sections and the running stage's own."""
    out = dataclasses.asdict(cfg)
    if isinstance(cfg, Config):
        own = set(STAGE_SECTIONS[cfg.stage])
        if cfg.stage in SAMPLING_STAGES and any(r.verifier == "reward_model" for r in cfg.rewards):
            own.add("reward_model")  # its scorer
        if cfg.stage in SAMPLING_STAGES and any(r.verifier == "judge" for r in cfg.rewards):
            own.add("judge")
        for other in {sec for secs in STAGE_SECTIONS.values() for sec in secs} - own:
            out.pop(other)
    return out


def set_where(path: str | Path | None, overrides: dict | None, key: str) -> str:
    """Where a loaded config's ``key`` was set, for a check that needs more than this module (the environment
    class of ``env.name``): 'FILE, line N', 'command-line override' or 'defaults'."""
    if any(k == key or str(k).startswith(f"{key}.") for k in overrides or {}):
        return "command-line override"
    if path is None:
        return "defaults"
    return _where(str(path), key, _key_lines(Path(path).read_text()))


def dump(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def parse_cli(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Command-line words -> (positional words, {dotted key: value}). Flags are ``--key=value``, ``--key value``
    or a bare ``--key`` (true); values stay strings until the config's types read them."""
    positional, overrides, i = [], {}, 0
    while i < len(argv):
        word = argv[i]
        if not word.startswith("--"):
            positional.append(word)
        elif "=" in word:
            key, _, value = word[2:].partition("=")
            overrides[key] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            overrides[word[2:]] = argv[i + 1]
            i += 1
        else:
            overrides[word[2:]] = "true"
        i += 1
    return positional, overrides
