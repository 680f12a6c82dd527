"""The safety report as Markdown and as PDF bytes (reportlab), both from the report dict. No file I/O."""

from __future__ import annotations

import io
from typing import Mapping


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def summary_rows(report: Mapping) -> list[list[str]]:
    """[check, value, threshold, status] per policy check."""
    return [[name, _fmt(c["value"]), _fmt(c["threshold"]), c["status"].upper()] for name, c in report["checks"].items()]


def group_rows(report: Mapping) -> list[list[str]]:
    """[attribute, group, metric, mean ± se, n] for every user group."""
    out = []
    for attr, by_metric in report["bias"]["groups"].items():
        for metric, block in by_metric.items():
            for g, s in block["groups"].items():
                se = f" ± {s['se']:.4f}" if s["se"] is not None else ""
                out.append([attr, g, metric, f"{s['mean']:.4f}{se}", str(s["n"])])
    return out


def headline(report: Mapping) -> list[str]:
    run = report["run"]
    tox, pop, priv = report["toxicity"], report["popularity"], report["privacy"]
    return [
        f"Run: dataset {run['dataset']}, tag {run['tag']}, step {run['step']} ({run['checkpoint']}).",
        f"Explanations: {report['explanations']['path']} (sha256 {report['explanations']['sha256'][:12]}…), "
        f"system '{report['explanations']['system']}', {report['n']} audited rows from {report['n_users']} users.",
        f"Toxicity backend: {tox['backend']} ({tox['backend_note']}). "
        f"Mean {_fmt(tox['mean'])}, p95 {_fmt(tox['p95'])}, "
        f"max {_fmt(tox['max'])}, {tox['n_unsafe']} rows at or above 0.5.",
        f"Popularity concentration: mentions {_fmt(pop['mention']['gini'])} (n {pop['mention']['n']}, mean popularity "
        f"{_fmt(pop['mention']['mean_popularity'])}) vs slates {_fmt(pop['slate']['gini'])} (n {pop['slate']['n']}, "
        f"mean popularity {_fmt(pop['slate']['mean_popularity'])}); delta {_fmt(pop['gini_delta'])}.",
        f"Privacy: leak rate {_fmt(priv['leak_rate'])} ({priv['n_flagged']} rows); per kind "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in priv["rates"].items())
        + f"; memorisation = a sequence of {priv['memo_n']} words found in the training references of at most "
          f"{priv['memo_max_users']} users, none of them the explained user.",
    ]


def to_markdown(report: Mapping) -> str:
    lines = [f"# Safety report: {report['run']['dataset']} / {report['run']['tag']}", "",
             f"**Verdict: {report['verdict'].upper()}** (thresholds: {report['thresholds_file']}; "
             "a check passes when value ≤ threshold; definitions: docs/audit.md)", ""]
    lines += [f"- {s}" for s in headline(report)] + ["", "| check | value | threshold | status | compared with |",
                                                      "|---|---|---|---|---|"]
    for row, c in zip(summary_rows(report), report["checks"].values()):
        lines.append("| " + " | ".join(row) + f" | {c['compared']} |")
    lines += ["", "## User groups", "", "| attribute | group | metric | mean ± se | n |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in group_rows(report)]
    lines += ["", f"Gender gap (policy value): {_fmt(report['bias']['gender_gap'])} = max of the "
                  f"{' and '.join(report['bias']['gender_gap_metrics'])} gaps between gender groups.", ""]
    examples = report["privacy"]["examples"]
    if examples:
        lines += ["## Privacy findings (first rows)", ""]
        for e in examples:
            found = "; ".join(e["findings"])
            lines.append(f"- user {e['user_id']}, item {e['item_id']}: {found} — “{e['text']}”")
        lines.append("")
    lines += ["## Protocol", ""] + [f"- **{k}**: {v}" for k, v in report["protocol"].items()]
    return "\n".join(lines) + "\n"


def to_pdf(report: Mapping) -> bytes:
    """A one-to-two page PDF: verdict, headline numbers, checks table, group table."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
    from xml.sax.saxutils import escape

    styles = getSampleStyleSheet()
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, title=f"Safety report {report['run']['dataset']}",
                            invariant=1)  # invariant: no timestamp/random id, so equal reports give equal bytes
    grid = TableStyle([("GRID", (0, 0), (-1, -1), 0.4, colors.grey), ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
                       ("FONTSIZE", (0, 0), (-1, -1), 8)])
    story = [Paragraph(escape(f"Safety report: {report['run']['dataset']} / {report['run']['tag']}"), styles["Title"]),
             Paragraph(escape(f"Verdict: {report['verdict'].upper()}"), styles["Heading2"])]
    story += [Paragraph(escape(s), styles["BodyText"]) for s in headline(report)]
    story += [Spacer(1, 8), Table([["check", "value", "threshold", "status"]] + summary_rows(report), style=grid),
              Spacer(1, 8), Paragraph("User groups", styles["Heading3"]),
              Table([["attribute", "group", "metric", "mean ± se", "n"]] + group_rows(report), style=grid),
              Spacer(1, 8), Paragraph("Protocol", styles["Heading3"])]
    story += [Paragraph(escape(f"{k}: {v}"), styles["BodyText"]) for k, v in report["protocol"].items()]
    doc.build(story)
    return buf.getvalue()
