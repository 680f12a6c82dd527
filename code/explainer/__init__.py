"""Explainer stage: chat LLM + LoRA + ranker bridge (not built yet; see README, Known limits)."""
