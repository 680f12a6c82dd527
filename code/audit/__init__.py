"""Audit stage: toxicity, bias and privacy audits (not built yet; see README, Known limits)."""
