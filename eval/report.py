"""The run report: one self-contained HTML page and its Markdown twin from what a run recorded.

``build_report(run)`` takes plain data (``chatalign report``, stages/evaluation.py, reads it from the
registry): the versions with their manifests' metrics and parents, the RMs' test-set evaluations, the PPO
histories, the evaluation suite's eval.json (eval/suite.py) and the real-data evaluation, and returns the
HTML, the Markdown and the PNGs. The HTML embeds every image as base64 PNG and has no external CSS, script
or font, so it opens offline; the Markdown links the same PNGs, written beside it in ``report_files/``.

Every plot is drawn only when its data exists; the report lists the absent ones and why. Metrics are shown
generically (every number of every manifest, per stage), so a new stage's metrics appear without code
changes; metrics named ``<name>_turn<N>`` or ``<name>_per_turn`` (a list) are drawn as a per-turn plot
(GAtt's adherence per turn).
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from eval.best_of_n import plot_best_of_n
from eval.rm import RATING_LABELS, plot_calibration
from eval.suite import HEADLINE_LABELS, format_value, headline

REPORT_HTML, REPORT_MD, FILES_DIR = "report.html", "report.md", "report_files"
SKIP_METRICS = ("history", "evals", "best_of_n", "oracle_examples", "whitener")  # plotted, or not one number
ANSWER_KINDS = ("helpful", "harmful", "borderline")
TURN_KEY = re.compile(r"^(?P<name>.+)_turn(?P<turn>\d+)$")


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write a file whole or not at all: a temporary file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    png: bytes


@dataclass
class Report:
    html: str
    markdown: str
    figures: list[Figure] = field(default_factory=list)
    absent: list[tuple[str, str]] = field(default_factory=list)  # (plot, why)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


# ---------------------------------------------------------------------------------------------------------
# Plots: each returns PNG bytes, or None with why it is absent

def plot_lineage(versions: Sequence[Mapping[str, Any]]) -> bytes:
    """Every version as a box in its stage's column, an arrow from each parent."""
    plt = _pyplot()
    def column_of(version: Mapping[str, Any]) -> str:  # the reward models share one column
        return "rm" if version["stage"].startswith("rm-") else version["stage"]

    stages = list(dict.fromkeys(column_of(v) for v in versions))
    place: dict[str, tuple[float, float]] = {}
    for x, stage in enumerate(stages):
        column = [v for v in versions if column_of(v) == stage]
        for y, version in enumerate(column):
            place[version["id"]] = (x, -(y - (len(column) - 1) / 2))
    height = max(2.0, 1.1 * max(sum(column_of(v) == s for v in versions) for s in stages))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.9 * len(stages)), height))
    for version in versions:
        for parent in version["parents"]:
            if parent in place:
                ax.annotate("", xy=place[version["id"]], xytext=place[parent],
                            arrowprops={"arrowstyle": "->", "color": "grey", "shrinkA": 28, "shrinkB": 28,
                                        "connectionstyle": "arc3,rad=0.15"})
    for version in versions:
        x, y = place[version["id"]]
        color = "#fde2c8" if version["stage"].startswith("rm-") else "#d6e6f5"
        ax.text(x, y, version["id"], ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round,pad=0.4", "facecolor": color, "edgecolor": "#555"})
    ys = [p[1] for p in place.values()]
    ax.set_xlim(-0.6, len(stages) - 0.4)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.axis("off")
    ax.set_title("lineage: an arrow from each parent (blue: policies, orange: reward models)", fontsize=9)
    return _png(fig)


def plot_rm_accuracy(rm_evals: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Accuracy per preference rating (Table 8's columns), one group of bars per (RM, test set)."""
    plt = _pyplot()
    rows = [(f"{rm} on {name}", m) for rm, sets in rm_evals.items() for name, m in sets.items()]
    labels = list(RATING_LABELS.values()) + ["all"]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / max(len(rows), 1)
    for i, (label, metrics) in enumerate(rows):
        values = [metrics.get("per_rating", {}).get(r, {}).get("accuracy") for r in RATING_LABELS]
        values.append(metrics.get("accuracy"))
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [float("nan") if v is None else 100 * v for v in values], width, label=label)
    ax.axhline(50, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([label.replace(" / ", "/\n") for label in labels], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    return _png(fig)


def plot_calibrations(rm_evals: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Reliability of σ(score difference), one panel per RM (eval.rm.plot_calibration)."""
    plt = _pyplot()
    panels = []
    for rm, sets in rm_evals.items():
        buffer = io.BytesIO()
        plot_calibration({k: v for k, v in sets.items() if "calibration" in v}, buffer, title=rm)
        panels.append(plt.imread(io.BytesIO(buffer.getvalue()), format="png"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, image in zip(axes[0], panels):
        ax.imshow(image)
        ax.axis("off")
    return _png(fig)


def plot_ppo(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes:
    """Mean reward and KL to the reference per PPO iteration, one line per version."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for vid, rows in histories.items():
        its = [r.get("iteration") for r in rows]
        axes[0].plot(its, [r.get("reward_mean") for r in rows], marker="o", markersize=3, label=vid)
        axes[1].plot(its, [r.get("kl") for r in rows], marker="o", markersize=3, label=vid)
    for ax, what in zip(axes, ("mean reward (R_c logit)", "KL to the reference")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def plot_score_scatter(panels: Sequence[tuple[str, Sequence[Mapping[str, Any]], Sequence[str]]],
                       threshold: float) -> bytes:
    """The paper's Fig. 14: σ(helpfulness RM) against σ(safety RM) of each answer, one panel per policy."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4.0), squeeze=False)
    for ax, (title, rows, groups) in zip(axes[0], panels):
        for group, color in (("helpful", "C0"), ("safety", "C3")):
            points = [(_sigmoid(r["safety"]), _sigmoid(r["helpful"])) for r, g in zip(rows, groups)
                      if g == group and "safety" in r]
            if points:
                ax.scatter(*zip(*points), s=14, alpha=0.7, color=color, label=f"{group} prompts")
        ax.axvline(threshold, color="grey", linestyle="--", linewidth=1, label=f"gate σ(R_s) = {threshold}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("safety RM score σ(R_s)")
        ax.set_ylabel("helpfulness RM score σ(R_h)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def per_turn_series(versions: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, float]]:
    """Metrics kept per dialogue turn: ``<name>_turn<N>`` numbers and ``<name>_per_turn`` lists, as
    {"<version>: <name>": {turn: value}}."""
    series: dict[str, dict[int, float]] = {}
    for version in versions:
        for key, value in version.get("metrics", {}).items():
            match = TURN_KEY.match(key)
            if match and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(f"{version['id']}: {match['name']}", {})[int(match["turn"])] = float(value)
            elif key.endswith("_per_turn") and isinstance(value, list):
                series[f"{version['id']}: {key[:-len('_per_turn')]}"] = {
                    t: float(v) for t, v in enumerate(value, start=1) if isinstance(v, (int, float))}
    return {k: v for k, v in series.items() if v}


def plot_per_turn(series: Mapping[str, Mapping[int, float]]) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, points in series.items():
        turns = sorted(points)
        ax.plot(turns, [points[t] for t in turns], marker="o", markersize=3, label=label)
    ax.set_xlabel("dialogue turn")
    ax.set_ylabel("share kept")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return _png(fig)


# ---------------------------------------------------------------------------------------------------------
# Tables

def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every number (and short string) of a manifest's metrics, nested keys joined by dots; lists and the
    entries in SKIP_METRICS are left out (they are plotted, or in the manifest)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if not prefix and key in SKIP_METRICS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (int, float, bool)) or value is None or (isinstance(value, str) and len(value) < 60):
            out[name] = value
    return out


def stage_table(versions: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One stage's metrics: a row per metric, a column per version (header, rows)."""
    flat = [flatten({**v.get("metrics", {}), "wall_time_s": v.get("wall_time_s")}) for v in versions]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return ["metric"] + [v["id"] for v in versions], [[k] + [format_value(k, f.get(k)) for f in flat] for k in keys]


MANIFEST_HEADLINE = {"oracle_helpful_accuracy": "oracle helpful accuracy",
                     "oracle_harmful_safe_rate": "oracle safe-answer rate",
                     "oracle_safety_violation_rate": "safety violation rate",
                     "oracle_borderline_false_refusal_rate": "false-refusal rate",
                     "heldout_win_rate": "held-out win vs previous", "heldout_reward_mean": "held-out mean reward"}


def summary_table(run: Mapping[str, Any]) -> tuple[list[str], list[list[str]], str]:
    """The headline per policy: from the evaluation suite where it ran (every policy on the same prompts),
    else from what each stage recorded in its manifest (each on its own prompts)."""
    suite = run.get("suite")
    if suite and suite.get("policies"):
        keys = list(HEADLINE_LABELS)
        rows = []
        for vid, entry in suite["policies"].items():
            flat = headline(entry)
            rows.append([vid] + [format_value(k, flat[k]) for k in keys])
        n = suite.get("settings", {}).get("prompts")
        note = (f"Every policy answered the same {n} built-in held-out prompts greedily (`chatalign eval`); "
                "rewards and win rates are judged by the run's latest RMs (win rate = wins / (wins + losses)), "
                "rates by the built-in oracle, KL along each policy's own answers.")
        return ["policy"] + [HEADLINE_LABELS[k] for k in keys], rows, note
    keys = list(MANIFEST_HEADLINE)

    def value(metrics: Mapping[str, Any], key: str) -> Any:  # PPO keeps its oracle scores under "oracle"
        nested = metrics.get("oracle") if isinstance(metrics.get("oracle"), Mapping) else {}
        return metrics.get(key, nested.get(key[len("oracle_"):]) if key.startswith("oracle_") else None)

    rows = [[v["id"]] + [format_value(k, value(v.get("metrics", {}), k)) for k in keys]
            for v in run["versions"] if not v["stage"].startswith("rm-")]
    note = ("From each stage's manifest (no `chatalign eval` results yet: run it for win rates against the SFT "
            "model and the KL to it, all policies on the same prompts).")
    return ["policy"] + list(MANIFEST_HEADLINE.values()), rows, note


def answer_examples(run: Mapping[str, Any], per_kind: int = 2) -> tuple[list[str], list[list[str]]] | None:
    """A few prompts with every policy's answer side by side: from the suite, else from the manifests'
    oracle examples where stages answered the same prompts."""
    suite = run.get("suite")
    if suite and suite.get("policies"):
        prompts = suite["prompts"]
        chosen: list[int] = []
        for kind in ANSWER_KINDS:
            chosen += [i for i, p in enumerate(prompts) if p.get("kind") == kind][:per_kind]
        chosen = chosen or list(range(min(len(prompts), 3 * per_kind)))
        policies = list(suite["policies"])
        rows = [[f"[{prompts[i].get('kind') or prompts[i]['group']}] {prompts[i]['prompt']}"]
                + [suite["policies"][p]["answers"][i]["answer"] for p in policies] for i in chosen]
        return ["prompt"] + policies, rows
    examples = {v["id"]: {e["prompt"]: e["answer"] for e in v.get("metrics", {}).get("oracle_examples", [])}
                for v in run["versions"]}
    examples = {k: v for k, v in examples.items() if v}
    if len(examples) < 1:
        return None
    common = [p for p in next(iter(examples.values())) if all(p in e for e in examples.values())][:3 * per_kind]
    if not common:
        return None
    return ["prompt"] + list(examples), [[p] + [examples[v][p] for v in examples] for p in common]


# ---------------------------------------------------------------------------------------------------------
# The page

CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.4}h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:3px 7px;
vertical-align:top}th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.a{max-width:28em;white-space:pre-wrap}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
img{max-width:100%;height:auto}.note{color:#555;font-size:.9em}"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], table_id: str = "", answers: bool = False) -> str:
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [f"<th>{html.escape(row[0])}</th>"]
        cls = "a" if answers else "n"
        cells += [f'<td class="{cls}">{html.escape(c)}</td>' for c in row[1:]]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figures_of(run: Mapping[str, Any]) -> tuple[list[Figure], list[tuple[str, str]]]:
    """Every plot whose data exists, and (plot, why) for the others."""
    figures: list[Figure] = []
    absent: list[tuple[str, str]] = []
    versions = run["versions"]
    if versions:
        figures.append(Figure("lineage", "Lineage of the checkpoints",
                              "Every version in the registry, with an arrow from each version it was made from.",
                              plot_lineage(versions)))
    rm_evals = {k: v for k, v in run.get("rm_evals", {}).items() if v}
    if rm_evals:
        figures.append(Figure("rm_accuracy", "Reward-model accuracy per rating level",
                              "Share of test pairs each RM ranks the way the label does, per preference rating "
                              "(Llama 2 Table 8's columns); the dashed line is chance.", plot_rm_accuracy(rm_evals)))
        figures.append(Figure("calibration", "Calibration of the reward models",
                              "Empirical rate at which the first answer of a pair is preferred against the RM's "
                              "σ(score₁ − score₂), on each test set; the diagonal is perfect calibration.",
                              plot_calibrations(rm_evals)))
    else:
        why = "no reward-model versions with a test-set evaluation (eval.json) in this run"
        absent += [("RM accuracy per rating level", why), ("calibration", why)]
    curves = {f"{v['id']}: {label}": curve for v in versions
              for label, curve in (v.get("metrics", {}).get("best_of_n") or {}).items()}
    # each round's manifest repeats the earlier rounds' curves: keep the latest version's copy of each label
    latest: dict[str, tuple[str, Any]] = {}
    for key, curve in curves.items():
        latest[key.split(": ", 1)[1]] = (key, curve)
    if latest:
        buffer = io.BytesIO()
        plot_best_of_n({label: curve for label, (_, curve) in latest.items()}, buffer,
                       title="best-of-N: max (solid) and median (dashed) reward among N samples")
        figures.append(Figure("best_of_n", "Best-of-N curves (rejection sampling)",
                              "Expected reward of the best and of the median answer among N samples, per round and "
                              "per temperature of the held-out sweep (Llama 2 Figs. 7-8).", buffer.getvalue()))
    else:
        absent.append(("best-of-N curves", "no rejection-sampling round recorded best_of_n in its manifest"))
    histories = {k: v for k, v in run.get("ppo_history", {}).items() if v}
    if histories:
        figures.append(Figure("ppo", "PPO: reward and KL per iteration",
                              "Mean safety-gated reward of each iteration's rollouts and their KL to the reference "
                              "policy (history.jsonl).", plot_ppo(histories)))
    else:
        absent.append(("PPO reward and KL", "no PPO version with a history.jsonl in this run"))
    scatter, why = _scatter_panels(run)
    if scatter:
        figures.append(Figure("safety_scatter", "Helpfulness vs safety RM scores, before and after safety tuning",
                              "Each held-out answer's σ(safety RM) and σ(helpfulness RM), for the SFT model and "
                              "the last policy (Llama 2 Fig. 14); answers left of the dashed line are gated as "
                              "unsafe.", plot_score_scatter(scatter, run.get("suite", {}).get("settings", {})
                                                            .get("threshold", 0.15))))
    else:
        absent.append(("helpfulness vs safety scatter", why))
    series = per_turn_series(versions)
    if series:
        figures.append(Figure("per_turn", "Adherence per turn",
                              "Metrics recorded per dialogue turn (e.g. GAtt: the share of dialogues still keeping "
                              "their first-turn instruction).", plot_per_turn(series)))
    else:
        absent.append(("adherence per turn (GAtt)", "no stage recorded a per-turn metric (named like "
                                                    "after_style_turn2); the GAtt stage records them when it runs"))
    return figures, absent


def _scatter_panels(run: Mapping[str, Any]):
    suite = run.get("suite") or {}
    policies = suite.get("policies") or {}
    if not policies:
        return None, "no evaluation suite results (eval.json): run `chatalign eval`"
    groups = [p["group"] for p in suite["prompts"]]
    scored = {k: v for k, v in policies.items() if v["answers"] and "safety" in v["answers"][0]}
    if not scored:
        return None, "the evaluation suite ran without reward models, so no answer has RM scores"
    before = next((k for k in scored if scored[k]["stage"] == "sft"), None)
    after = list(scored)[-1]
    if before is None or after == before:
        return None, "needs the SFT model and a policy trained after it in the evaluation suite"
    return [(f"before: {before}", scored[before]["answers"], groups),
            (f"after: {after}", scored[after]["answers"], groups)], ""


def build_report(run: Mapping[str, Any]) -> Report:
    """The report of one run. ``run``: recipe, generated_at, versions (id, stage, parents (ids), metrics,
    wall_time_s), rm_evals {rm id: {test set: metrics}}, ppo_history {id: rows}, suite (eval.json) and real
    (real_eval.json) where they exist."""
    figures, absent = figures_of(run)
    title = f"chatalign run report: {run['recipe']}"
    header, rows, note = summary_table(run)
    h: list[str] = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
                    f"</title><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
                    f"<p class=\"note\">{len(run['versions'])} versions; written {html.escape(run['generated_at'])}"
                    "</p>"]
    md: list[str] = [f"# {title}", "", f"{len(run['versions'])} versions; written {run['generated_at']}. "
                     f"The HTML twin ({REPORT_HTML}) holds the same content with the plots embedded.", ""]
    h += ["<h2>Summary per policy</h2>", f"<p class=\"note\">{html.escape(note)}</p>",
          _html_table(header, rows, "metrics")]
    md += ["## Summary per policy", "", note, "", _md_table(header, rows), ""]
    rm_rows = _rm_rows(run.get("rm_evals", {}))
    if rm_rows:
        rm_header = ["reward model / test set", "n", "accuracy"] + list(RATING_LABELS.values()) + [
            "ECE", "gate precision", "gate recall", "unsafe recall"]
        h += ["<h2>Reward models</h2>", _html_table(rm_header, rm_rows, "reward-models")]
        md += ["## Reward models", "", _md_table(rm_header, rm_rows), ""]
    h.append("<h2>Plots</h2>")
    md += ["## Plots", ""]
    for fig in figures:
        data = base64.b64encode(fig.png).decode()
        h.append(f"<figure id=\"fig-{fig.name}\"><h3>{html.escape(fig.title)}</h3><img alt=\"{html.escape(fig.title)}\" "
                 f"src=\"data:image/png;base64,{data}\"><figcaption>{html.escape(fig.caption)}</figcaption></figure>")
        md += [f"### {fig.title}", "", f"![{fig.title}]({FILES_DIR}/{fig.name}.png)", "", fig.caption, ""]
    if absent:
        h.append("<h3>Plots not drawn</h3><ul id=\"absent\">" + "".join(
            f"<li><b>{html.escape(name)}</b>: {html.escape(why)}</li>" for name, why in absent) + "</ul>")
        md += ["### Plots not drawn", ""] + [f"- **{name}**: {why}" for name, why in absent] + [""]
    examples = answer_examples(run)
    h.append("<h2>Answers side by side</h2>")
    md += ["## Answers side by side", ""]
    if examples:
        h.append(_html_table(*examples, table_id="answers", answers=True))
        md += [_md_table(*examples), ""]
    else:
        why = "no evaluation suite results and no stage answered the same prompts: run `chatalign eval`"
        h.append(f"<p class=\"note\">{html.escape(why)}</p>")
        md += [why, ""]
    real = run.get("real")
    if real:
        from eval.real_data import format_table

        table = format_table(real.get("results", {}))
        h += ["<h2>Data written by others</h2>", f"<pre>{html.escape(table)}</pre>"]
        md += ["## Data written by others", "", table, ""]
    h.append("<h2>Every metric per stage</h2>")
    md += ["## Every metric per stage", ""]
    for stage in dict.fromkeys(v["stage"] for v in run["versions"]):
        stage_header, stage_rows = stage_table([v for v in run["versions"] if v["stage"] == stage])
        h += [f"<h3>{html.escape(stage)}</h3>", _html_table(stage_header, stage_rows, f"stage-{stage}")]
        md += [f"### {stage}", "", _md_table(stage_header, stage_rows), ""]
    h.append("</body></html>")
    return Report("\n".join(h) + "\n", "\n".join(md) + "\n", figures, absent)


def _rm_rows(rm_evals: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for rm, sets in rm_evals.items():
        for name, m in sets.items():
            gate = m.get("gate") or {}
            rows.append([f"{rm} / {name}", str(m.get("n", "–")), format_value("accuracy", m.get("accuracy"))]
                        + [format_value("accuracy", m.get("per_rating", {}).get(r, {}).get("accuracy"))
                           for r in RATING_LABELS]
                        + [format_value("ece", (m.get("calibration") or {}).get("ece")),
                           format_value("precision_rate", gate.get("precision")),
                           format_value("recall_rate", gate.get("recall")),
                           format_value("recall_rate", m.get("unsafe_recall"))])
    return rows


def write_report(run: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Build the report and write report.html, report.md and report_files/*.png into ``out_dir``."""
    out_dir = Path(out_dir)
    report = build_report(run)
    for fig in report.figures:
        write_atomic(out_dir / FILES_DIR / f"{fig.name}.png", fig.png)
    write_atomic(out_dir / REPORT_MD, report.markdown)
    write_atomic(out_dir / REPORT_HTML, report.html)
    return out_dir / REPORT_HTML, out_dir / REPORT_MD
