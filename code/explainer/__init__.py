"""Explainer stage: chat LLM + LoRA + ranker bridge, warm-started on reference explanations.

loading.py (base model: alias / hub id / folder / GGUF, LoRA), prompts.py, bridge.py (# METHOD),
policy.py (the Explainer object), generation.py (rollouts, log-probs), sft.py (warm start loop),
checkpoint.py (checkpoints/lora_init_<D>/), init_lora.py (the stage's command).
"""
