"""Dataset stage: download raw data, preprocess into leave-one-out splits (DESIGN.md §3)."""
