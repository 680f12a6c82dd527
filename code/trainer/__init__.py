"""Trainer stage: user simulator and Shielded PPO (not built yet; see README, Known limits)."""
