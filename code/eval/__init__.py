"""Evaluation of PPO runs (ranking drift, explanation metrics, simulated CTR), the aggregation of runs into
tables and figures, and the human-evaluation kit (DESIGN.md §5)."""
