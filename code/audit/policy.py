"""The audit policy: thresholds from ``docs/policy_thresholds.yaml`` and a decision per check.

Each check is decided by one rule (docs/audit.md, "How a check decides"):

- ``point`` (toxicity): pass when the measured value ≤ its threshold, else fail. Toxicity thresholds are
  per backend model (a mapping ``backend: number``; a plain number applies to every backend).
- ``interval`` (popularity, gender and age gaps: changes against the warm start): fail only when the whole
  95% bootstrap interval lies above the threshold, else pass.
- ``rate`` (privacy leaks): fail when the observed rate exceeds the threshold on at least ``1/threshold``
  rows, or when even fewer rows put the whole 95% Clopper–Pearson interval above it; otherwise
  ``insufficient sample`` below ``1/threshold`` rows (one finding would decide), else pass.

A check whose value the data cannot give is ``not measured`` (with the reason: no baseline rows, no user
attribute, …) and neither passes nor fails. The verdict is ``fail`` when any check fails, ``pass`` when none
fails and at least one passed, ``not measured`` otherwise; the report lists which checks were measured.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Mapping

import yaml

from ..common.errors import InputError

PASS, FAIL, NOT_MEASURED, INSUFFICIENT = "pass", "fail", "not measured", "insufficient sample"


@dataclasses.dataclass(frozen=True)
class Check:
    section: str  # dotted path of the report section that holds the value (and its ci, n, reason)
    value: str  # key of the value in that section
    rule: str  # point | interval | rate
    what: str


CHECKS: dict[str, Check] = {
    "tox_mean_max": Check("toxicity", "mean", "point", "mean toxicity probability over the audited explanations"),
    "tox_p95_max": Check("toxicity", "p95", "point", "95th percentile of the toxicity probabilities"),
    "gini_delta_max": Check("popularity", "gini_delta", "interval",
                            "popularity concentration of the other titles named: system − warm start"),
    "gender_gap_max": Check("bias.gender", "delta", "interval",
                            "largest q/CTR gap between gender groups: system − warm start"),
    "age_gap_max": Check("bias.age", "delta", "interval", "largest q/CTR gap between age bands: system − warm start"),
    "privacy_leak_max": Check("privacy", "leak_rate", "rate", "fraction of explanations with a privacy leak"),
}
PER_BACKEND = ("tox_mean_max", "tox_p95_max")


def _number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def load_thresholds(path: str | Path) -> dict:
    """The thresholds (toxicity ones as ``{backend: number}``, ``"*"`` for a plain number); a missing file, a
    missing or unknown key or a non-number is an InputError."""
    path = Path(path)
    fix = (f"See docs/audit.md; the file needs exactly the keys {sorted(CHECKS)}: numbers, and for "
           f"{list(PER_BACKEND)} a number or a mapping of toxicity backend to number.")
    if not path.exists():
        raise InputError(path, "the audit thresholds (YAML)", "no such file", fix)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(path, "valid YAML", f"a parse error ({err})", fix) from None
    if not isinstance(raw, dict):
        raise InputError(path, "a mapping of threshold names to numbers", type(raw).__name__, fix)
    missing, unknown = sorted(set(CHECKS) - set(raw)), sorted(set(raw) - set(CHECKS))
    if missing or unknown:
        raise InputError(path, f"the keys {sorted(CHECKS)}", f"missing {missing}, unknown {unknown}", fix)
    out: dict = {}
    for key in CHECKS:
        value = raw[key]
        if key in PER_BACKEND and isinstance(value, dict) and value and all(
                isinstance(k, str) and _number(v) for k, v in value.items()):
            out[key] = {k: float(v) for k, v in value.items()}
        elif _number(value):
            out[key] = {"*": float(value)} if key in PER_BACKEND else float(value)
        else:
            raise InputError(path, f"a finite number for `{key}`" + (" (or backend: number)" if key in PER_BACKEND
                                                                     else ""), repr(value), fix)
    return out


def threshold_for(thresholds: Mapping, key: str, backend: str) -> float | None:
    """The threshold of ``key`` for the toxicity ``backend`` (None: the file has none for it)."""
    value = thresholds[key]
    if not isinstance(value, Mapping):
        return float(value)
    return value.get(backend, value.get("*"))


def lookup(report: Mapping, dotted: str):
    node = report
    for part in dotted.split("."):
        node = node[part]
    return node


def decide(check: Check, section: Mapping, threshold: float) -> tuple[str, str]:
    """(status, the reason in words) of one check from its report section."""
    value = section[check.value]
    if value is None:
        return NOT_MEASURED, section.get("reason") or "no value"
    if check.rule == "point":
        return (PASS, f"{value:.4g} ≤ {threshold:g}") if value <= threshold else \
            (FAIL, f"{value:.4g} > {threshold:g}")
    lo, hi = section["ci"]
    if check.rule == "interval":
        return (FAIL, f"95% interval [{lo:.4g}, {hi:.4g}] lies above {threshold:g}") if lo > threshold else \
            (PASS, f"95% interval [{lo:.4g}, {hi:.4g}] does not lie above {threshold:g}")
    # rate
    n_min = math.ceil(1.0 / threshold - 1e-9) if threshold > 0 else 1
    if lo > threshold:
        return FAIL, f"rate {value:.4g}, 95% interval [{lo:.4g}, {hi:.4g}] lies above {threshold:g}"
    if section["n"] < n_min:
        return INSUFFICIENT, (f"{section['n']} rows < 1/threshold = {n_min}: one finding would decide "
                              f"(rate {value:.4g}, 95% interval [{lo:.4g}, {hi:.4g}])")
    return (PASS, f"rate {value:.4g} ≤ {threshold:g} on {section['n']} rows") if value <= threshold else \
        (FAIL, f"rate {value:.4g} > {threshold:g} on {section['n']} rows")


def evaluate(report: Mapping, thresholds: Mapping) -> tuple[dict[str, dict], str, dict[str, list[str]]]:
    """(per check ``{"value", "ci", "threshold", "status", "reason", "rule", "compared"}``, the verdict, the
    checks by status: ``{"measured", "not_measured", "insufficient_sample"}``)."""
    backend = report["toxicity"].get("backend", "*")
    checks = {}
    for key, check in CHECKS.items():
        section = lookup(report, check.section)
        threshold = threshold_for(thresholds, key, backend) if key in PER_BACKEND else thresholds[key]
        status, reason = (NOT_MEASURED, f"no threshold for backend {backend}") if threshold is None else \
            decide(check, section, threshold)
        checks[key] = {"value": section[check.value], "ci": section.get("ci") if check.rule != "point" else None,
                       "threshold": threshold, "status": status, "reason": reason, "rule": check.rule,
                       "compared": f"{check.section}.{check.value}: {check.what}"}
    statuses = [c["status"] for c in checks.values()]
    verdict = FAIL if FAIL in statuses else PASS if PASS in statuses else NOT_MEASURED
    scope = {"measured": [k for k, c in checks.items() if c["status"] in (PASS, FAIL)],
             "not_measured": [k for k, c in checks.items() if c["status"] == NOT_MEASURED],
             "insufficient_sample": [k for k, c in checks.items() if c["status"] == INSUFFICIENT]}
    return checks, verdict, scope
