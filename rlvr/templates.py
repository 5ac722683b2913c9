"""Prompt templates: how a dataset question becomes the text the policy continues.

``r1_zero`` is DeepSeek-R1-Zero's template (the answer in ``<answer>`` tags after a ``<think>`` block),
``chat`` uses the tokenizer's chat template, ``plain`` is the question itself.
"""

from __future__ import annotations

R1_ZERO = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. User: {question} Assistant:"
)
TEMPLATES = ("r1_zero", "chat", "plain")


def render(question: str, template: str, tokenizer=None, system: str | None = None) -> str:
    if template == "r1_zero":
        return R1_ZERO.format(question=question)
    if template == "plain":
        return question
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat template; use r1_zero or plain")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
