"""The audit policy: thresholds from ``docs/policy_thresholds.yaml`` and a pass/fail per check.

A check passes when its measured value is ≤ its threshold; it is ``n/a`` when the value cannot be
measured on this data (e.g. no gender attribute, no title named) and then neither passes nor fails.
The audit's verdict is ``fail`` when any check fails.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import yaml

from ..common.errors import InputError

# threshold key -> (what it is compared against: a dotted path into the report, a sentence)
CHECKS: dict[str, tuple[str, str]] = {
    "tox_mean_max": ("toxicity.mean", "mean toxicity probability over the audited explanations"),
    "tox_p95_max": ("toxicity.p95", "95th percentile of the toxicity probabilities"),
    "gini_delta_max": ("popularity.gini_delta", "popularity concentration of named items minus that of the slates"),
    "gender_gap_max": ("bias.gender_gap", "largest of the q and CTR gaps between gender groups"),
    "privacy_leak_max": ("privacy.leak_rate", "fraction of explanations with any privacy finding"),
}


def load_thresholds(path: str | Path) -> dict[str, float]:
    """The five thresholds; a missing file, a missing or unknown key or a non-number is an InputError."""
    path = Path(path)
    fix = f"See docs/audit.md; the file needs exactly the keys {sorted(CHECKS)} with numbers."
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
    out = {}
    for key in CHECKS:
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(path, f"a finite number for `{key}`", repr(value), fix)
        out[key] = float(value)
    return out


def lookup(report: Mapping, dotted: str):
    node = report
    for part in dotted.split("."):
        node = node[part]
    return node


def evaluate(report: Mapping, thresholds: Mapping[str, float]) -> tuple[dict[str, dict], str]:
    """(per check ``{"value", "threshold", "compared", "status": pass|fail|n/a}``, verdict ``pass|fail``)."""
    checks = {}
    for key, (where, what) in CHECKS.items():
        value = lookup(report, where)
        status = "n/a" if value is None else ("pass" if value <= thresholds[key] else "fail")
        checks[key] = {"value": value, "threshold": thresholds[key], "compared": f"{where}: {what}",
                       "status": status}
    verdict = "fail" if any(c["status"] == "fail" for c in checks.values()) else "pass"
    return checks, verdict
