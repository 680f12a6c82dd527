"""Trainer stage: user simulator, explanation-quality score and PPO maths (DESIGN.md §4.2-4.3).

The PPO training loop, its checkpoints and the `run_recrl_cli.py` entry point are not built yet (issue 6).
"""
