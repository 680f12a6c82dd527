"""Shielded RecRL: explanations for a recommender without changing what it recommends."""

__version__ = "0.1.0"
