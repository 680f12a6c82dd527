"""The safety report as Markdown and as PDF bytes (reportlab), both from the report dict. No file I/O."""

from __future__ import annotations

import io
from typing import Mapping


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


def _ci(c) -> str:
    return f"[{c[0]:.4f}, {c[1]:.4f}]" if c else "–"


def summary_rows(report: Mapping) -> list[list[str]]:
    """[check, value, 95% interval, threshold, status, reason] per policy check."""
    return [[name, _fmt(c["value"]), _ci(c["ci"]), _fmt(c["threshold"]), c["status"].upper(), c["reason"]]
            for name, c in report["checks"].items()]


def group_rows(report: Mapping) -> list[list[str]]:
    """[attribute, group, metric, mean ± se, n] for every user group of the audited system."""
    out = []
    for attr, by_metric in report["bias"]["groups"].items():
        for metric, block in by_metric.items():
            for g, s in block["groups"].items():
                se = f" ± {s['se']:.4f}" if s["se"] is not None else ""
                out.append([attr, g, metric, f"{s['mean']:.4f}{se}", str(s["n"])])
    return out


def verdict_line(report: Mapping) -> str:
    scope = report["verdict_scope"]
    parts = [f"Verdict: {report['verdict'].upper()} on the measured checks ({', '.join(scope['measured']) or 'none'})"]
    if scope["not_measured"]:
        parts.append("not measured: " + ", ".join(scope["not_measured"]))
    if scope["insufficient_sample"]:
        parts.append("insufficient sample: " + ", ".join(scope["insufficient_sample"]))
    return "; ".join(parts) + "."


def headline(report: Mapping) -> list[str]:
    run, ex = report["run"], report["explanations"]
    tox, pop, priv, b = report["toxicity"], report["popularity"], report["privacy"], report["bias"]

    def change(block, value):
        if block[value] is None:
            return f"not measured ({block['reason']})"
        return f"{block[value]:+.4f}, 95% interval {_ci(block['ci'])}"

    return [
        f"Run: dataset {run['dataset']}, tag {run['tag']}, step {run['step']} ({run['checkpoint']}).",
        f"Explanations: {ex['path']} (sha256 {ex['sha256'][:12]}…), system '{ex['system']}', {report['n']} audited "
        f"rows from {report['n_users']} users; baseline '{ex['baseline']}': {ex['baseline_rows']} rows.",
        f"Toxicity backend: {tox['backend']} ({tox['backend_note']}). Mean {_fmt(tox['mean'])}, p95 "
        f"{_fmt(tox['p95'])}, max {_fmt(tox['max'])}, {tox['n_unsafe']} rows at or above 0.5.",
        f"Popularity (other titles named, system − {pop['baseline_system']}, {pop['n_rows']} paired rows): "
        f"{change(pop, 'gini_delta')}"
        + (f"; C(system) {_fmt(pop['system']['gini'])} over {pop['system']['n']} mentions, C(baseline) "
           f"{_fmt(pop['baseline']['gini'])} over {pop['baseline']['n']}." if "system" in pop else "."),
        f"Gap change vs {b['baseline_system']} (max over q and CTR): gender {change(b['gender'], 'delta')}; "
        f"age {change(b['age'], 'delta')}.",
        f"Privacy: leak rate {_fmt(priv['leak_rate'])} ({priv['n_flagged']} of {priv['n']} rows, 95% interval "
        f"{_ci(priv['ci'])}); per kind " + ", ".join(f"{k} {_fmt(v)}" for k, v in priv["rates"].items())
        + f" (hallucination is not a leak); cross_user = an item in at most {priv['rare_users']} users' train "
          f"histories; memorisation = {priv['memo_n']} words verbatim or a near-copy (Jaccard of "
          f"{priv['memo_shingle']}-grams ≥ {priv['memo_jaccard']}) through a phrase of at most "
          f"{priv['memo_max_users']} users' references.",
    ]


def to_markdown(report: Mapping) -> str:
    lines = [f"# Safety report: {report['run']['dataset']} / {report['run']['tag']}", "",
             f"**{verdict_line(report)}** (thresholds: {report['thresholds_file']}; decision rules and "
             "definitions: docs/audit.md)", ""]
    lines += [f"- {s}" for s in headline(report)] + [
        "", "| check | value | 95% interval | threshold | status | why | compared with |",
        "|---|---|---|---|---|---|---|"]
    for row, c in zip(summary_rows(report), report["checks"].values()):
        lines.append("| " + " | ".join(row) + f" | {c['compared']} |")
    lines += ["", "## User groups (audited system)", "", "| attribute | group | metric | mean ± se | n |",
              "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in group_rows(report)]
    lines.append("")
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
                       ("FONTSIZE", (0, 0), (-1, -1), 7), ("VALIGN", (0, 0), (-1, -1), "TOP")])
    cell = styles["BodyText"].clone("cell", fontSize=7, leading=8)
    checks = [[Paragraph(escape(x), cell) for x in row] for row in summary_rows(report)]
    story = [Paragraph(escape(f"Safety report: {report['run']['dataset']} / {report['run']['tag']}"), styles["Title"]),
             Paragraph(escape(verdict_line(report)), styles["Heading2"])]
    story += [Paragraph(escape(s), styles["BodyText"]) for s in headline(report)]
    story += [Spacer(1, 8), Table([["check", "value", "95% interval", "threshold", "status", "why"]] + checks,
                                  style=grid, colWidths=[70, 45, 75, 45, 60, 200]),
              Spacer(1, 8), Paragraph("User groups (audited system)", styles["Heading3"]),
              Table([["attribute", "group", "metric", "mean ± se", "n"]] + group_rows(report), style=grid),
              Spacer(1, 8), Paragraph("Protocol", styles["Heading3"])]
    story += [Paragraph(escape(f"{k}: {v}"), styles["BodyText"]) for k, v in report["protocol"].items()]
    doc.build(story)
    return buf.getvalue()
