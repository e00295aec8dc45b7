"""Retention reports: per fact per version, per version, and a forgetting-curve plot.

Everything is read from the registry (each version's manifest and ``results.jsonl``), so a
report can be produced at any time, by any process, without a model. Building the report is pure
(:func:`build_report` over already-loaded versions); rendering to Markdown or a PNG is separate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reverie.memory.adapters import AdapterRegistry, VersionInfo
from reverie.memory.files import read_jsonl

__all__ = ["build_report", "cohort_curves", "load_report", "plot_forgetting", "to_markdown"]


def load_report(registry: AdapterRegistry, tenant: str) -> dict[str, Any]:
    versions = registry.versions(tenant)
    current = registry.current(tenant)
    return build_report(
        tenant,
        versions,
        {v.version: read_jsonl(v.path / "results.jsonl") for v in versions},
        current.version if current else None,
    )


def build_report(
    tenant: str,
    versions: Sequence[VersionInfo],
    results: dict[str, list[dict[str, Any]]],
    current: str | None,
) -> dict[str, Any]:
    """The report document: ``versions`` (one row each) and ``facts`` (one per experience, with
    its recall at every version that probed it)."""
    rows = []
    facts: dict[str, dict[str, Any]] = {}
    for info in versions:
        m = info.manifest
        probes = m.get("probes", {})
        eff, ret, loc = (
            probes.get("efficacy") or {},
            probes.get("retention"),
            probes.get("locality") or {},
        )
        rows.append(
            {
                "version": info.version,
                "parent": m.get("parent"),
                "outcome": m.get("outcome"),
                "current": info.version == current,
                "created_at": m.get("created_at"),
                "method": m.get("method"),
                "experiences": len(m.get("experiences", [])),
                "efficacy": eff.get("accuracy"),
                "ceiling": eff.get("ceiling"),
                "efficacy_ratio": eff.get("ratio"),
                "no_context_before": (probes.get("before") or {}).get("accuracy"),
                "retention": ret.get("ratio") if ret else None,
                "locality": loc.get("ratio"),
                # as served: the router keeps the adapter off unrelated questions
                "served_locality": (probes.get("served") or {}).get("locality", {}).get("ratio"),
                "locality_unchanged": loc.get("unchanged"),
                "locality_kl": loc.get("mean_kl"),
                # the blend of start and trained weights kept (consolidator.blend; 1: as trained)
                "blend": (probes.get("blend") or {}).get("alpha"),
                "reasons": m.get("reasons", []),
                "seconds": round(sum((m.get("timings") or {}).values()), 1),
            }
        )
        by_fact: dict[str, list[dict[str, Any]]] = {}
        for r in results.get(info.version, []):
            by_fact.setdefault(r["experience_id"], []).append(r)
        for e in m.get("experiences", []):  # every experience, probed or not
            fact = facts.setdefault(e["id"], _new_fact(e["id"]))
            if fact["trained_in"] is None and m.get("outcome") == "promoted":
                fact["trained_in"] = info.version
        for eid, rs in by_fact.items():
            fact = facts.setdefault(eid, _new_fact(eid))
            for r in rs:
                answers = fact["questions"].setdefault(
                    r["question"], {"gold": r.get("answers"), "by_version": {}}
                )
                answers["by_version"][info.version] = {
                    "answer": r.get("prediction"),
                    "correct": r.get("correct"),
                }
            if rs[0]["role"] == "efficacy":  # trained in this version (kept if promoted)
                if m.get("outcome") == "promoted":
                    fact["trained_in"] = info.version
                ceil = [r["ceiling_correct"] for r in rs if r.get("ceiling_correct") is not None]
                fact["ceiling"] = round(sum(ceil) / len(ceil), 4) if ceil else None
            fact["by_version"][info.version] = {
                "recalled": round(sum(r["correct"] for r in rs) / len(rs), 4),
                "score": round(sum(r["f1"] for r in rs) / len(rs), 4),
                "probes": len(rs),
                "outcome": info.manifest.get("outcome"),
            }
    return {
        "tenant": tenant,
        "current": current,
        "versions": rows,
        "facts": sorted(facts.values(), key=lambda f: (f["trained_in"] or "", f["experience_id"])),
    }


def _new_fact(eid: str) -> dict[str, Any]:
    return {
        "experience_id": eid,
        "trained_in": None,
        "ceiling": None,
        "by_version": {},
        "questions": {},
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Retention report: tenant `{report['tenant']}`",
        "",
        f"Current version: {report['current'] or 'none'}",
        "",
        "## Versions",
        "",
        "| version | outcome | experiences | no-context before | efficacy | ceiling | "
        "efficacy/ceiling | retention | locality (raw) | locality (served) | unchanged | KL | "
        "blend | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in report["versions"]:
        name = f"**{v['version']}**" if v["current"] else v["version"]
        lines.append(
            "| "
            + " | ".join(
                _fmt(x)
                for x in (
                    name,
                    v["outcome"],
                    v["experiences"],
                    v["no_context_before"],
                    v["efficacy"],
                    v["ceiling"],
                    v["efficacy_ratio"],
                    v["retention"],
                    v["locality"],
                    v["served_locality"],
                    v["locality_unchanged"],
                    v["locality_kl"],
                    v["blend"],
                    v["seconds"],
                )
            )
            + " |"
        )
    rejected = [v for v in report["versions"] if v["reasons"]]
    if rejected:
        lines += [
            "",
            "Rejections: "
            + "; ".join(f"{v['version']}: {', '.join(v['reasons'])}" for v in rejected),
        ]
    lines += [
        "",
        "Locality is control-question accuracy relative to the base model: raw with the adapter "
        "answering every control question, served as the agent answers them (the version's "
        "router sends only questions about the tenant's memory to the adapter).",
    ]
    names = [v["version"] for v in report["versions"]]
    lines += [
        "",
        "## Facts (share of probes recalled without context, per version)",
        "",
        "| experience | trained in | ceiling | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for f in report["facts"]:
        cells = [_fmt(f["by_version"].get(n, {}).get("recalled")) for n in names]
        lines.append(
            f"| {f['experience_id']} | {_fmt(f['trained_in'])} | "
            f"{_fmt(f['ceiling'])} | " + " | ".join(cells) + " |"
        )
    unprobed = [f["experience_id"] for f in report["facts"] if not f["questions"]]
    if unprobed:
        lines += ["", "Experiences without probes (no question could be asked about them): "
                  + ", ".join(unprobed)]  # fmt: skip
    lines += ["", "## Answers (per probe question, per version; ✓ right, ✗ wrong)", ""]
    for f in report["facts"]:
        for question, q in f["questions"].items():
            gold = ", ".join(q["gold"] or [])
            lines.append(f"- {f['experience_id']}: *{_md(question)}* (expected: {_md(gold)})")
            for version, a in q["by_version"].items():
                mark = "✓" if a["correct"] else "✗"
                lines.append(f"  - {version} {mark} {_md(str(a['answer'] or ''))}")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """One line of Markdown-safe text."""
    return " ".join(text.split()).replace("|", "\\|").replace("*", "\\*")


def cohort_curves(report: dict[str, Any]) -> dict[str, dict[int, float]]:
    """Forgetting curves: for each promoted version's cohort (the facts first trained in it),
    the share of their probe questions answered right at each version from it on, keyed by the
    version's index in ``report["versions"]``. Averaged over probes, as the efficacy column is."""
    versions = [v["version"] for v in report["versions"]]
    curves: dict[str, dict[int, float]] = {}
    for row in report["versions"]:
        if row["outcome"] != "promoted":
            continue
        cohort = [f for f in report["facts"] if f["trained_in"] == row["version"]]
        points = {}
        for i in range(versions.index(row["version"]), len(versions)):
            here = versions[i]
            scored = [f["by_version"][here] for f in cohort if here in f["by_version"]]
            probes = sum(s["probes"] for s in scored)
            if probes:
                points[i] = round(sum(s["recalled"] * s["probes"] for s in scored) / probes, 4)
        if points:
            curves[row["version"]] = points
    return curves


_GATE_LINES = (  # label, report column, threshold setting
    ("efficacy / ceiling", "efficacy_ratio", "min_efficacy"),
    ("retention", "retention", "min_retention"),
    ("locality (served)", "served_locality", "min_locality"),
    ("locality (raw)", "locality", "min_raw_locality"),
)


def plot_forgetting(
    report: dict[str, Any], path: Path, thresholds: dict[str, float] | None = None
) -> None:
    """Two panels over every version (rejected ones marked): the forgetting curve of each
    cycle cohort, and the gate's scores against their thresholds."""
    from reverie.memory.extras import require

    matplotlib = require("matplotlib", "plot", "the retention plot")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = [v["version"] for v in report["versions"]]
    rejected = [i for i, v in enumerate(report["versions"]) if v["reasons"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for cohort, points in cohort_curves(report).items():
        xs = sorted(points)
        top.plot(xs, [points[i] for i in xs], marker="o", label=f"facts of {cohort}")
    top.set_ylabel("recalled without context")
    top.set_title(f"Forgetting curves per cycle cohort, tenant {report['tenant']}")
    for k, (label, column, setting) in enumerate(_GATE_LINES):
        colour = f"C{k}"
        xs = [i for i, v in enumerate(report["versions"]) if v[column] is not None]
        if xs:
            ys = [report["versions"][i][column] for i in xs]
            bottom.plot(xs, ys, marker="o", color=colour, label=label)
        if thresholds and setting in thresholds:
            bottom.axhline(thresholds[setting], color=colour, linestyle="--", linewidth=0.8)
    bottom.set_ylabel("gate score (dashed: threshold)")
    for ax in (top, bottom):
        ax.set_ylim(-0.02, 1.05)
        for i in rejected:
            ax.axvspan(i - 0.4, i + 0.4, color="0.85", zorder=0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower left")
    bottom.set_xticks(range(len(versions)), versions, rotation=45)
    bottom.set_xlabel("version (grey: rejected)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
