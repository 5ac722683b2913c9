"""Config loading: strict keys with the nearest valid key, types, divisibility, overrides, every recipe."""

import dataclasses
import re

import pytest
import yaml
from conftest import REPO, TINY_DATA, TINY_MODEL

from rlvr import episodes, train as train_cli
from rlvr.config import Config, ConfigError, _key_lines, dump, load_config, parse_cli

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(recipe):
    # A recipe that continues another's output (runs/...) is loaded with the shipped model in its place.
    raw = yaml.safe_load(recipe.read_text())
    keys = ("model.path", "reward_model.scorer", "rl.critic.path", "judge.model")
    chained = {k: str(TINY_MODEL) for k in keys if str(_get(raw, k)).startswith("runs/")}
    cfg = load_config(recipe, chained)
    assert cfg.output_dir == f"runs/{recipe.stem}", "a recipe writes to runs/<its name>"
    episodes.from_config(cfg.env)  # its environment's class and options, as rlvr.train checks them


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part, {}) if isinstance(tree, dict) else {}
    return tree or ""


def test_recipes_named_in_the_docs_exist():
    docs = [REPO / "README.md", *RECIPES, *(REPO / "rlvr").glob("*.py")]
    named = {m for p in docs for m in re.findall(r"recipes/(\w+\.yaml)", p.read_text())}
    assert {"tiny_zero.yaml", "r1_zero.yaml"} <= named
    assert named <= {p.name for p in RECIPES}, named - {p.name for p in RECIPES}


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and f"{prefix}{k}" != "deepspeed.config":
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipes_list_only_what_differs(recipe):
    """A recipe sets a key to its default only on a line whose comment says why it is spelt out."""
    text = recipe.read_text()
    lines, defaults = text.splitlines(), dict(_flat(dataclasses.asdict(Config())))
    where = _key_lines(text)
    spelt = [
        f"line {where[k]}: {k}: {v!r}"
        for k, v in _flat(yaml.safe_load(text))
        if k in defaults and _same(v, defaults[k]) and "#" not in lines[where[k] - 1]
    ]
    assert not spelt, f"{recipe.name} repeats defaults without saying why: {spelt}"


def _same(value, default) -> bool:
    if isinstance(value, list) and value and isinstance(value[0], dict):  # rewards: weight defaults to 1.0
        return [{"weight": 1.0, **v} for v in value] == default
    return value == default


def test_the_sparseness_check_sees_a_repeated_default(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("rl:\n  lr: 1.0e-6\n  steps: 3\nrewards:\n  - {verifier: math}\n")
    with pytest.raises(AssertionError, match=r"line 2: rl.lr.*line 4: rewards"):
        test_recipes_list_only_what_differs(p)
    p.write_text("rl:\n  lr: 1.0e-6  # Dr. GRPO's\n  steps: 3\n")
    test_recipes_list_only_what_differs(p)


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_line_and_nearest_key(tmp_path):
    p = write(tmp_path, "output_dir: x\nrl:\n  steps: 3\n  promts_per_step: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "line 4" in msg and "rl.promts_per_step" in msg and "rl.prompts_per_step" in msg


def test_unknown_key_inside_a_list(tmp_path):
    p = write(tmp_path, "rewards:\n  - {verifier: math, wieght: 1}\n")
    with pytest.raises(ConfigError, match=r"line 2.*rewards\[0\]\.wieght.*rewards\[0\]\.weight"):
        load_config(p)


def test_bad_types_and_choices(tmp_path):
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(write(tmp_path, "rl:\n  steps: many\n"))
    with pytest.raises(ConfigError, match="did you mean 'vllm'"):
        load_config(None, {"sampler.backend": "vlm"})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "rl: [\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_are_typed_and_blamed(tmp_path):
    p = write(tmp_path, "rl:\n  lr: 1.0e-6\n")
    cfg = load_config(
        p,
        {
            "rl.lr": "1e-5",
            "output_dir": "/tmp/x",
            "rl.dynamic_sampling": "true",
            "rewards": "[{verifier: format, weight: 2}]",
        },
    )
    assert cfg.rl.lr == 1e-5 and cfg.output_dir == "/tmp/x" and cfg.rl.dynamic_sampling is True
    assert cfg.rewards[0].verifier == "format" and cfg.rewards[0].weight == 2.0
    with pytest.raises(ConfigError, match="command-line override: unknown key 'rl.lrr'; did you mean 'rl.lr'"):
        load_config(p, {"rl.lrr": 1})


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"rl.prompts_per_step": 3, "rl.samples_per_prompt": 4, "rl.micro_batch_seqs": 8},
            "not a multiple of rl.micro_batch_seqs",
        ),
        (
            {"rl.prompts_per_step": 4, "rl.samples_per_prompt": 4, "rl.optimizer_steps_per_pass": 3},
            "equal optimizer steps",
        ),
        ({"rl.samples_per_prompt": 1}, "compares each sample with its group"),
        ({"rl.steps": 0}, "at least 1"),
        ({"rewards": "[]"}, "rewards is empty"),
    ],
)
def test_impossible_batch_sizes(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, {"rl.lr": 3e-4})
    p = write(tmp_path, dump(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize(
    "key, ours",
    [
        ("rl.learning_rate", "rl.lr"),
        ("rl.lerning_rate", "rl.lr"),
        ("sft.learning_rate", "sft.lr"),
        ("rl.num_generations", "rl.samples_per_prompt"),
        ("rl.per_device_train_batch_size", "rl.micro_batch_seqs"),
        ("rl.max_completion_length", "sampler.max_new_tokens"),
        ("rl.epsilon_high", "rl.clip_high"),
        ("rl.kl_coef", "rl.beta"),
        ("rl.num_iterations", "rl.passes_per_step"),
    ],
)
def test_names_from_trl_and_verl_point_to_ours(key, ours):
    with pytest.raises(ConfigError, match=f"unknown key '{re.escape(key)}'; did you mean '?{re.escape(ours)}"):
        load_config(None, {key: 1})


@pytest.mark.parametrize(
    "key, ours",
    [
        ("sampler.max_new_tokns", "sampler.max_new_tokens"),  # a typo: the same section first
        ("rl.max_new_tokens", "sampler.max_new_tokens"),  # the right name in the wrong section
        ("rl.temprature", "sampler.temperature"),
    ],
)
def test_suggestions_rank_the_same_section_then_the_others(key, ours):
    with pytest.raises(ConfigError, match=f"did you mean '{re.escape(ours)}'"):
        load_config(None, {key: 1})


def test_local_paths_are_checked_at_load_naming_the_line(tmp_path):
    p = write(tmp_path, f"model:\n  path: {TINY_MODEL}\ndata:\n  train: {tmp_path / 'trian.jsonl'}\n")
    with pytest.raises(ConfigError, match=r"line 4: data.train .*trian.jsonl' does not exist"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"command-line override.*model.path 'rlvr/tiny/mdoel' does not exist"):
        load_config(None, {"model.path": "rlvr/tiny/mdoel", "data.train": str(TINY_DATA / "train.jsonl")})
    # hub ids are the hub's business; an existing file and dir are fine
    load_config(None, {"model.path": "Qwen/Qwen2.5-0.5B", "data.train": "openai/gsm8k"})
    load_config(None, {"model.path": str(TINY_MODEL), "data.train": str(TINY_DATA / "train.jsonl")})


def test_the_saved_config_holds_the_running_stage_and_the_shared_sections():
    rl = yaml.safe_load(dump(load_config(None, {"rl.lr": 3e-4})))
    assert {"model", "data", "sampler", "rewards", "rl", "env", "eval", "deepspeed", "log"} <= set(rl)
    assert not {"sft", "dpo", "reward_model"} & set(rl) and rl["rl"]["lr"] == 3e-4
    sft = yaml.safe_load(dump(load_config(None, {"stage": "sft"})))
    assert "sft" in sft and not {"rl", "rewards", "env", "eval", "dpo", "reward_model"} & set(sft)
    rm = load_config(None, {"rewards": "[{verifier: reward_model}]", "reward_model.scorer": str(TINY_MODEL)})
    assert yaml.safe_load(dump(rm))["reward_model"]["scorer"] == str(TINY_MODEL)  # the GRPO run reads its scorer


def test_the_env_section_is_checked_at_load_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"line 3: unknown key 'env.max_turn'; did you mean 'env.max_turns'"):
        load_config(write(tmp_path, "env:\n  name: python\n  max_turn: 3\n"))
    with pytest.raises(ConfigError, match="env.max_turns must be >= 1"):
        load_config(None, {"env.max_turns": 0})
    # The class and its options, by rlvr.train before anything loads: the key, and the line or the flag that set it
    p = write(tmp_path, "output_dir: x\nenv:\n  name: python\n  options: {timeot_s: 2}\n")
    with pytest.raises(ConfigError, match=r"r.yaml, line 4: env.options: .*timeot_s \(did you mean timeout_s\?\)"):
        train_cli.run(str(p))
    with pytest.raises(ConfigError, match=r"command-line override: env.name: .*unknown environment 'pyhton'"):
        train_cli.run(str(p), **{"env.name": "pyhton"})
    saved = yaml.safe_load(dump(load_config(p, {"env.options": "{timeout_s: 2}"})))["env"]
    assert saved == {"name": "python", "max_turns": 4, "max_turn_tokens": 0, "workers": 0, "options": {"timeout_s": 2}}
    with pytest.raises(ConfigError, match=r"r.yaml, line 3: env.name: .*missing.py' does not exist"):
        train_cli.run(str(write(tmp_path, f"env:\n  options: {{}}\n  name: {tmp_path}/missing.py:Env\n")))


def test_command_line_words():
    assert parse_cli(["r.yaml", "--rl.lr=1e-4", "--output_dir", "/tmp/x", "--grade_references", "--k", "1,4"]) == (
        ["r.yaml"],
        {"rl.lr": "1e-4", "output_dir": "/tmp/x", "grade_references": "true", "k": "1,4"},
    )
    assert parse_cli(["--n", "-1", "--flag"]) == ([], {"n": "-1", "flag": "true"})


def test_the_old_section_and_stage_name_point_to_the_new_one(tmp_path):
    with pytest.raises(ConfigError, match=r"line 1: unknown key 'grpo'; the section 'grpo' is now 'rl'"):
        load_config(write(tmp_path, "grpo:\n  lr: 1.0e-5\n"))
    with pytest.raises(ConfigError, match="unknown key 'grpo'; the section 'grpo' is now 'rl'"):
        load_config(None, {"grpo.lr": 1e-5})
    with pytest.raises(ConfigError, match="'stage' is 'grpo'.*'grpo' is now 'rl'"):
        load_config(None, {"stage": "grpo"})
