"""Audit stage: toxicity, bias and privacy audits of generated explanations against docs/policy_thresholds.yaml
(docs/audit.md)."""
