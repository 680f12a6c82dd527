"""Evaluation and aggregation (not built yet; see README, Known limits)."""
