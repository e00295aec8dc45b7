"""The retention report as one self-contained HTML page: no scripts, no network, charts in SVG.

``reverie report --format html`` writes it; ``GET /v1/reports/retention?format=html`` serves it
for the token's tenant. It shows what the Markdown report shows (versions with their gate scores
and the reasons of rejected ones, every experience with each version's answers to its probe
questions) plus two charts (forgetting curves per cycle cohort; gate scores per version against
their thresholds) and the buffer: every experience of the tenant with its status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from reverie.consolidator.report import cohort_curves

__all__ = ["to_html"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")
_W, _H, _PAD = 640, 260, 44

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.current td{font-weight:600}tr.rejected td{color:#999}
.ok{color:#1a7f37}.bad{color:#c62828}.note{color:#555;max-width:60rem}
svg{background:#fff;border:1px solid #ddd;margin:.5rem 0}
"""


def to_html(
    report: Mapping[str, Any],
    *,
    thresholds: Mapping[str, float] | None = None,
    experiences: Sequence[Mapping[str, Any]] = (),
    counts: Mapping[str, Any] | None = None,
) -> str:
    """The page. ``thresholds`` are the gate's (``min_efficacy``...), ``experiences`` the
    buffer's rows (``id``, ``text``, ``status``, ``created_at``, ``version``), ``counts`` the
    tenant's status counts."""
    tenant = escape(str(report["tenant"]))
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Retention report: {tenant}</title><style>{_CSS}</style></head><body>",
        f"<h1>Retention report: tenant <code>{tenant}</code></h1>",
        f"<p>Live version: <b>{escape(str(report.get('current') or 'none (base model)'))}</b>",
    ]
    if counts:
        parts.append(
            " &middot; "
            + ", ".join(
                f"{escape(str(k))} {escape(str(v))}" for k, v in counts.items() if k != "adapter"
            )
        )
    parts.append("</p>")
    parts += _versions(report, thresholds or {})
    parts += _charts(report, thresholds or {})
    parts += _facts(report)
    parts += _buffer(experiences)
    parts.append("</body></html>")
    return "\n".join(parts)


def _num(value: Any) -> str:
    return "&ndash;" if value is None else f"{float(value):.2f}"


def _versions(report: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[str]:
    out = [
        "<h2>Versions</h2>",
        "<table id='versions'><tr><th>version</th><th>outcome</th><th>experiences</th>"
        "<th>efficacy</th><th>ceiling</th><th>efficacy / ceiling</th><th>retention</th>"
        "<th>locality (raw)</th><th>locality (served)</th><th>seconds</th><th>reasons</th></tr>",
    ]
    for v in report["versions"]:
        cls = "current" if v["current"] else ("rejected" if v["reasons"] else "")
        cells = [
            f"<td>{escape(v['version'])}{' (live)' if v['current'] else ''}</td>",
            f"<td>{escape(str(v['outcome']))}</td>",
            f"<td class='num'>{v['experiences']}</td>",
            *(
                f"<td class='num'>{_num(v[k])}</td>"
                for k in (
                    "efficacy",
                    "ceiling",
                    "efficacy_ratio",
                    "retention",
                    "locality",
                    "served_locality",
                )
            ),
            f"<td class='num'>{_num(v['seconds'])}</td>",
            f"<td>{escape('; '.join(v['reasons']))}</td>",
        ]
        out.append(f"<tr class='{cls}'>{''.join(cells)}</tr>")
    out.append("</table>")
    if thresholds:
        out.append(
            "<p class='note'>Gate thresholds: "
            + ", ".join(f"{escape(k)} {v:.2f}" for k, v in thresholds.items())
            + ".</p>"
        )
    out.append(
        "<p class='note'><b>Efficacy</b>: share of held-out probe questions answered right "
        "without the experience in context; the <b>ceiling</b> is the same with it in context. "
        "<b>Retention</b>: earlier facts' accuracy now over their accuracy after their own "
        "cycle. <b>Locality</b>: control questions (general knowledge) answered as right as "
        "the base model does: raw with the adapter on every question, served through the "
        "version's router. <b>Unchanged</b> (JSON report): control answers identical to the "
        "base model's, word for word.</p>"
    )
    return out


def _charts(report: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[str]:
    versions = [v["version"] for v in report["versions"]]
    rejected = {i for i, v in enumerate(report["versions"]) if v["reasons"]}
    curves = cohort_curves(dict(report))
    out = ["<h2>Forgetting curves</h2>"]
    out.append(
        _svg(
            "forgetting",
            versions,
            {f"facts of {cohort}": points for cohort, points in curves.items()},
            {},
            rejected,
            "recalled without context (share of probes)",
        )
    )
    out.append(
        "<p class='note'>One line per cycle cohort: the share of that cycle's probe questions "
        "answered right without context at each later version (the same averaging as the "
        "efficacy column). Crossed columns are rejected versions.</p>"
    )
    gate = {
        "efficacy / ceiling": "efficacy_ratio",
        "retention": "retention",
        "locality (served)": "served_locality",
        "locality (raw)": "locality",
    }
    lines = {
        label: {i: v[key] for i, v in enumerate(report["versions"]) if v[key] is not None}
        for label, key in gate.items()
    }
    levels = {
        label: thresholds[t]
        for label, t in (
            ("efficacy / ceiling", "min_efficacy"),
            ("retention", "min_retention"),
            ("locality (served)", "min_locality"),
            ("locality (raw)", "min_raw_locality"),
        )
        if t in thresholds
    }
    out.append("<h2>Gate scores</h2>")
    out.append(_svg("gate", versions, lines, levels, rejected, "score"))
    out.append(
        "<p class='note'>Each version's gate scores; dashed lines are the thresholds it had to "
        "meet, in the colour of their score.</p>"
    )
    return out


def _svg(
    ident: str,
    xlabels: Sequence[str],
    series: Mapping[str, Mapping[int, float]],
    levels: Mapping[str, float],
    crossed: set[int],
    ylabel: str,
) -> str:
    n = max(len(xlabels), 1)
    left, right, top, bottom = _PAD + 8, _W - 150, 14, _H - _PAD

    def x(i: int) -> float:
        return left + (right - left) * (i + 0.5) / n

    def y(v: float) -> float:
        return bottom - (bottom - top) * max(0.0, min(1.0, v))

    el = [f"<svg id='{ident}' role='img' width='{_W}' height='{_H}' viewBox='0 0 {_W} {_H}'>"]
    el.append(f"<title>{escape(ylabel)} per version</title>")
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        el.append(
            f"<line x1='{left}' x2='{right}' y1='{y(tick):.1f}' y2='{y(tick):.1f}' "
            "stroke='#eee'/>"
            f"<text x='{left - 6}' y='{y(tick) + 4:.1f}' font-size='10' text-anchor='end'>"
            f"{tick:.2f}</text>"
        )
    for i, label in enumerate(xlabels):
        el.append(
            f"<text x='{x(i):.1f}' y='{bottom + 14}' font-size='10' text-anchor='middle'>"
            f"{escape(label)}</text>"
        )
        if i in crossed:
            el.append(
                f"<g class='rejected' stroke='#bbb'><line x1='{x(i) - 6:.1f}' x2='{x(i) + 6:.1f}' "
                f"y1='{top}' y2='{top + 12}'/><line x1='{x(i) + 6:.1f}' x2='{x(i) - 6:.1f}' "
                f"y1='{top}' y2='{top + 12}'/></g>"
            )
    el.append(
        f"<text x='12' y='{(top + bottom) / 2:.0f}' font-size='10' text-anchor='middle' "
        f"transform='rotate(-90 12 {(top + bottom) / 2:.0f})'>{escape(ylabel)}</text>"
    )
    for k, (label, points) in enumerate(series.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        coords = [(x(i), y(v)) for i, v in sorted(points.items())]
        if len(coords) > 1:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in coords)
            el.append(
                f"<polyline class='series' points='{path}' fill='none' stroke='{colour}' "
                "stroke-width='2'/>"
            )
        el += [
            f"<circle class='point' cx='{a:.1f}' cy='{b:.1f}' r='3.5' fill='{colour}'/>"
            for a, b in coords
        ]
        if label in levels:
            ly = y(levels[label])
            el.append(
                f"<line class='threshold' x1='{left}' x2='{right}' y1='{ly:.1f}' y2='{ly:.1f}' "
                f"stroke='{colour}' stroke-dasharray='5 4'/>"
            )
        el.append(
            f"<rect x='{right + 12}' y='{top + 16 * k}' width='10' height='10' "
            f"fill='{colour}'/><text x='{right + 26}' y='{top + 9 + 16 * k}' "
            f"font-size='11'>{escape(label)}</text>"
        )
    el.append("</svg>")
    return "".join(el)


def _facts(report: Mapping[str, Any]) -> list[str]:
    versions = [v["version"] for v in report["versions"]]
    out = [
        "<h2>Experiences and their answers</h2>",
        "<table id='facts'><tr><th>experience</th><th>trained in</th><th>ceiling</th>"
        + "".join(f"<th>{escape(v)}</th>" for v in versions)
        + "</tr>",
    ]
    for f in report["facts"]:
        cells = "".join(
            f"<td class='num'>{_num(f['by_version'].get(v, {}).get('recalled'))}</td>"
            for v in versions
        )
        out.append(
            f"<tr><td>{escape(f['experience_id'])}</td>"
            f"<td>{escape(str(f['trained_in'] or '-'))}</td>"
            f"<td class='num'>{_num(f['ceiling'])}</td>{cells}</tr>"
        )
    out.append("</table>")
    out.append("<table id='answers'><tr><th>experience</th><th>question</th><th>expected</th>")
    out[-1] += "".join(f"<th>{escape(v)}</th>" for v in versions) + "</tr>"
    for f in report["facts"]:
        if not f["questions"]:
            out.append(
                f"<tr><td>{escape(f['experience_id'])}</td>"
                f"<td colspan='{len(versions) + 2}'>no probe questions could be asked</td></tr>"
            )
        for question, q in f["questions"].items():
            answers: list[str] = []
            for v in versions:
                a = q["by_version"].get(v)
                if a is None:
                    answers.append("<td></td>")
                    continue
                mark, cls = ("✓", "ok") if a["correct"] else ("✗", "bad")
                answers.append(f"<td class='{cls}'>{mark} {escape(str(a['answer'] or ''))}</td>")
            out.append(
                f"<tr><td>{escape(f['experience_id'])}</td><td>{escape(question)}</td>"
                f"<td>{escape(', '.join(q['gold'] or []))}</td>{''.join(answers)}</tr>"
            )
    out.append("</table>")
    return out


def _buffer(experiences: Sequence[Mapping[str, Any]]) -> list[str]:
    if not experiences:
        return []
    out = [
        "<h2>Buffer</h2>",
        "<table id='buffer'><tr><th>id</th><th>status</th><th>version</th><th>logged</th>"
        "<th>text</th></tr>",
    ]
    for e in experiences:
        out.append(
            "<tr>"
            + "".join(
                f"<td>{escape(str(e.get(k) or '-'))}</td>"
                for k in ("id", "status", "version", "created_at", "text")
            )
            + "</tr>"
        )
    out.append("</table>")
    return out
