"""rlvr: reinforcement learning from verifiable rewards (R1-Zero-style GRPO), small enough to read."""

__version__ = "0.1.0"
