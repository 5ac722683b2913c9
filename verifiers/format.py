"""The R1-Zero format reward: 1.0 when a completion is ``<think> ... </think> <answer> ... </answer>``.

The template is the one in DeepSeek-R1-Zero's prompt: one think block, then one answer block, and
nothing but white space after it. Nested or repeated tags fail, so the policy cannot collect the
reward by spraying tags around.
"""

from __future__ import annotations

import re

from verifiers import register

# The prompt may end with "<think>" already (then the completion starts inside the think block).
_FORMAT = re.compile(r"^\s*(?:<think>)?(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$", re.DOTALL)


def follows_format(completion: str) -> bool:
    m = _FORMAT.match(completion)
    if m is None:
        return False
    think, answer = m.group("think"), m.group("answer")
    inner = think + answer
    return answer.strip() != "" and not any(tag in inner for tag in ("<think>", "</think>", "<answer>", "</answer>"))


@register("format")
def format_reward(completion: str, answer: str = "", **meta) -> float:
    return 1.0 if follows_format(completion) else 0.0
