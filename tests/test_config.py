"""Config loading: strict keys with the nearest valid key, types, divisibility, overrides, every recipe."""

from pathlib import Path

import pytest

from rlvr.config import Config, ConfigError, dump, load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_validates(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, Config)
    assert cfg.output_dir


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"tiny_zero.yaml", "r1_zero.yaml"} <= names


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_line_and_nearest_key(tmp_path):
    p = write(tmp_path, "output_dir: x\ngrpo:\n  steps: 3\n  promts_per_step: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "line 4" in msg and "grpo.promts_per_step" in msg and "grpo.prompts_per_step" in msg


def test_unknown_key_inside_a_list(tmp_path):
    p = write(tmp_path, "rewards:\n  - {verifier: math, wieght: 1}\n")
    with pytest.raises(ConfigError, match=r"line 2.*rewards\[0\]\.wieght.*rewards\[0\]\.weight"):
        load_config(p)


def test_bad_types_and_choices(tmp_path):
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(write(tmp_path, "grpo:\n  steps: many\n"))
    with pytest.raises(ConfigError, match="did you mean 'vllm'"):
        load_config(None, {"sampler.backend": "vlm"})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "grpo: [\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_are_typed_and_blamed(tmp_path):
    p = write(tmp_path, "grpo:\n  lr: 1.0e-6\n")
    cfg = load_config(p, {"grpo.lr": "1e-5", "output_dir": "/tmp/x", "grpo.dynamic_sampling": "true",
                          "rewards": "[{verifier: format, weight: 2}]"})
    assert cfg.grpo.lr == 1e-5 and cfg.output_dir == "/tmp/x" and cfg.grpo.dynamic_sampling is True
    assert cfg.rewards[0].verifier == "format" and cfg.rewards[0].weight == 2.0
    with pytest.raises(ConfigError, match="command-line override: unknown key 'grpo.lrr'; did you mean 'grpo.lr'"):
        load_config(p, {"grpo.lrr": 1})


@pytest.mark.parametrize("overrides, match", [
    ({"grpo.prompts_per_step": 3, "grpo.samples_per_prompt": 4, "grpo.micro_batch_seqs": 8}, "not a multiple of grpo.micro_batch_seqs"),
    ({"grpo.prompts_per_step": 4, "grpo.samples_per_prompt": 4, "grpo.optimizer_steps_per_pass": 3}, "equal optimizer steps"),
    ({"grpo.samples_per_prompt": 1}, "need a group"),
    ({"grpo.steps": 0}, "at least 1"),
    ({"rewards": "[]"}, "rewards is empty"),
])
def test_impossible_batch_sizes(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, {"grpo.lr": 3e-4})
    p = write(tmp_path, dump(cfg))
    assert load_config(p) == cfg
