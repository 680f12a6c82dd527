"""Projection stage: the ranking subspace Q and the shield that protects it (DESIGN.md §1)."""
