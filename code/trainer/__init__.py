"""Trainer stage: Shielded PPO for the explainer against a simulated user (DESIGN.md §4.2-4.3).

``run_recrl_cli.py`` is the entry point (``checkpoints/recrl/<D>/<tag>/``, ``logs/<D>/<tag>/``; resume,
the three store modes, the drift guard); ``config.py`` its typed config; ``ppo.py`` the PPO loop with the
shield after every optimizer step; ``ppo_math.py`` the pure PPO maths (advantages, clipped losses, KL);
``simulator.py`` and ``quality.py`` the user simulator and the explanation-quality score it uses.
"""
