"""SmolLM2-135M-Instruct's task for the real-model RL recipe (recipes/smollm2_word_problems.yaml): a data helper
outside the engine's layers, like rlvr.tiny."""
