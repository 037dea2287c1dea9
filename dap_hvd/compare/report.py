"""The report of a compare (pure but for the plot): per entry mean ± std over seeds, the gap to full data
paired by seed, wall clock beside compute, the conclusions, and the Pareto plot."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import NamedTuple

from dap_hvd.compare.plan import BASELINES, BELOW_MEAN_SHARE, LABEL, ORDER, Tuned

# What a compare writes beside its state, in its folder (OUT/).
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
PLOT = "pareto.png"


class MeanStd(NamedTuple):
    mean: float
    std: float  # 0 for one value


def _mean_std(xs: list) -> MeanStd:
    return MeanStd(statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def build_report(state: dict) -> dict:
    """Per (policy, budget): top-1 mean ± std over seeds, compute target and measured, wall against
    full data of the same seed, and the paired gap to full data (per seed, then mean ± std)."""
    runs = state["runs"]
    full = {r["seed"]: r for r in runs if r["policy"] == "full"}
    entries = []
    groups = {}
    for r in runs:
        groups.setdefault((r["policy"], r["budget"]), []).append(r)
    for (policy, budget), rs in sorted(groups.items(), key=lambda kv: (kv[0][1] is not None, -(kv[0][1] or 0),
                                                                          ORDER.index(kv[0][0]) if kv[0][0] in ORDER
                                                                          else len(ORDER))):
        top, std = _mean_std([r["top1"] for r in rs])
        gaps = [r["top1"] - full[r["seed"]]["top1"] for r in rs if r["seed"] in full]
        walls = [r["wall"] / full[r["seed"]]["wall"] for r in rs if r["seed"] in full and full[r["seed"]]["wall"]]
        gap, gap_std = _mean_std(gaps) if gaps else (None, None)
        entries.append(dict(
            policy=policy, budget=budget, params=rs[0]["params"], seeds=len(rs),
            target=1.0 if budget is None else budget, planned=statistics.mean(r["planned"] for r in rs),
            compute=statistics.mean(r["compute"] for r in rs), top1=top, top1_std=std,
            gap=gap, gap_std=gap_std, gap_min=min(gaps) if gaps else None, gap_max=max(gaps) if gaps else None,
            wall=statistics.mean(walls) if walls else None, wall_seconds=statistics.mean(r["wall"] for r in rs),
            selection_seconds=statistics.mean(r["selection_seconds"] for r in rs)))
    return {"settings": state["settings"], "num_train": state.get("num_train"), "num_val": state.get("num_val"),
            "seconds": state.get("seconds"), "deeper": state.get("deeper", {}), "entries": entries,
            "conclusion": conclusion(entries), "against_fewer_epochs": against_fewer_epochs(runs), "runs": runs}


def conclusion(entries: list) -> dict:
    """The entries within 0.5 pt of full data (mean over seeds), the one of them that saves the most
    compute; else the closest entry."""
    pruned = [e for e in entries if e["policy"] != "full" and e["gap"] is not None]
    within = sorted((e for e in pruned if e["gap"] >= -0.005), key=lambda e: e["compute"])
    best = within[0] if within else None
    closest = max(pruned, key=lambda e: e["gap"]) if pruned else None
    return {"within": best, "all_within": within, "closest": closest,
            "pays": best is not None and best["compute"] <= 0.75 + 1e-9}


def against_fewer_epochs(runs: list) -> list:
    """Each policy against all data for fewer epochs at the same budget (the baseline a selection
    method must beat at equal compute): top-1 difference paired by seed, mean ± std."""
    short = {(r["budget"], r["seed"]): r["top1"] for r in runs if r["policy"] == "fewer_epochs"}
    by = {}
    for r in runs:
        if r["policy"] not in BASELINES and (r["budget"], r["seed"]) in short:
            by.setdefault((r["policy"], r["budget"]), []).append(r["top1"] - short[(r["budget"], r["seed"])])
    order = {p: i for i, p in enumerate(ORDER)}
    return [dict(policy=p, budget=b, diff=_mean_std(d).mean, std=_mean_std(d).std, seeds=len(d))
            for (p, b), d in sorted(by.items(), key=lambda kv: (-kv[0][1], order.get(kv[0][0], len(order))))]


def _name(e: dict) -> str:
    label = LABEL.get(e["policy"], e["policy"])
    return f"{label}: {Tuned(e['params'], 0.0).describe()}" if e["params"] else label


def render(report: dict) -> str:
    """The markdown table and the conclusions that follow the numbers."""
    s = report["settings"]
    rows = ""
    for e in report["entries"]:
        gap = "–" if e["gap"] is None or e["policy"] == "full" else \
            f"{e['gap'] * 100:+.2f} ± {e['gap_std'] * 100:.2f} [{e['gap_min'] * 100:+.2f}, {e['gap_max'] * 100:+.2f}]"
        wall = "–" if e["wall"] is None else f"{e['wall']:.3f}"
        budget = "–" if e["budget"] is None else f"{e['budget']:g}"
        rows += (f"| {_name(e)} | {budget} | {e['planned']:.3f} | {e['compute']:.3f} | {wall} | "
                 f"{e['top1'] * 100:.2f} ± {e['top1_std'] * 100:.2f} | {gap} | {e['seeds']} |\n")
    deeper = ""
    for b, chosen in report.get("deeper", {}).items():
        deeper += f" Budget {b}: the {len(chosen)} best entries at {s['budgets'][0]:g} ({', '.join(chosen)})."
        # runs kept from an earlier pass of a resumed compare, when the best entries differed (an entry added since)
        kept = sorted({e["policy"] for e in report["entries"] if e["budget"] is not None
                       and f"{e['budget']:g}" == b and e["policy"] not in chosen})
        if kept:
            deeper += f" Also at {b}, from an earlier pass when it was among the best: {', '.join(kept)}."
    text = (f"{report['num_train']:,} training and {report['num_val']:,} test images, {s['epochs']} epochs, "
            f"{s['np']} rank{'s' if s['np'] > 1 else ''} per run (`-H {s['hosts']}`), "
            f"train flags `{' '.join(s['train_args']) or '(defaults)'}`, LR ×0.1 "
            f"at {', '.join(f'{f:g}' for f in s['lr_fractions'])} of each run; {s['seeds']} seeds per entry.{deeper} "
            "Compute: samples trained over those of the full-data run (target: the budget; planned: the plan's "
            f"figure, in expectation at {BELOW_MEAN_SHARE:.0%} of the samples below the mean loss where it depends "
            "on the losses). Wall: training wall clock (scoring and selection included, the one final evaluation "
            "left out) over the full-data run of the same seed. Δ: top-1 minus full data's of the same seed, mean ± "
            "std over seeds [min, max].\n\n"
            "| entry | budget | compute planned | compute measured | wall / full | top-1 % | Δ vs full, paired (pt) "
            "| seeds |\n|---|---|---|---|---|---|---|---|\n" + rows)
    return text + "\n" + render_conclusion(report)


def render_conclusion(report: dict) -> str:
    c = report["conclusion"]
    if c["within"] is not None:
        e = c["within"]
        line = (f"- **Most compute saved within 0.5 pt of full data (mean of seeds):** {_name(e)} at budget "
                f"{e['budget']:g}: compute {e['compute']:.3f} ({1 - e['compute']:.0%} saved), wall "
                f"{'–' if e['wall'] is None else format(e['wall'], '.3f')} of full data's, "
                f"Δ {e['gap'] * 100:+.2f} ± {e['gap_std'] * 100:.2f} pt.")
        line += " That is ≥ 25% saved within 0.5 pt." if c["pays"] else " That is less than 25% saved."
        others = [e for e in c.get("all_within", [])[1:]]
        if others:
            line += " Also within 0.5 pt: " + "; ".join(
                f"{_name(e)} at budget {e['budget']:g} (compute {e['compute']:.3f}, Δ {e['gap'] * 100:+.2f} ± "
                f"{e['gap_std'] * 100:.2f} pt)" for e in others) + "."
    elif c["closest"] is not None:
        e = c["closest"]
        line = (f"- **No entry stays within 0.5 pt of full data (mean of seeds).** The closest: {_name(e)} at budget "
                f"{e['budget']:g}, compute {e['compute']:.3f}, Δ {e['gap'] * 100:+.2f} ± {e['gap_std'] * 100:.2f} "
                "pt.")
    else:
        return ""
    vs = report.get("against_fewer_epochs") or []
    if vs:
        line += ("\n- **Against all data for fewer epochs at the same budget** (top-1 difference paired by seed): "
                 + "; ".join(f"{LABEL.get(v['policy'], v['policy'])} at {v['budget']:g}: {v['diff'] * 100:+.2f} ± "
                             f"{v['std'] * 100:.2f} pt" for v in vs) + ".")
    return line + "\n"


def plot(report: dict, path: Path, title: str = "") -> None:
    """Top-1 against compute and against wall clock, one series per entry over the budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    series = {}
    for e in report["entries"]:
        series.setdefault(e["policy"], []).append(e)
    for policy, es in series.items():
        es = sorted(es, key=lambda e: e["compute"])
        for ax, key in zip(axes, ("compute", "wall")):
            pts = [e for e in es if e[key] is not None]
            if pts:
                ax.errorbar([e[key] for e in pts], [e["top1"] * 100 for e in pts],
                            yerr=[e["top1_std"] * 100 for e in pts], marker="*" if policy == "full" else "o",
                            capsize=3, label=LABEL.get(policy, policy), linestyle="-" if len(pts) > 1 else "none")
    axes[0].set_xlabel("compute (samples trained / full-data run)")
    axes[1].set_xlabel("wall clock / full-data run (same seed)")
    axes[0].set_ylabel("top-1 % (mean ± std over seeds)")
    axes[0].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    s = report["settings"]
    fig.suptitle(title or f"dap-hvd compare: {s['epochs']} epochs, {s['seeds']} seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, report: dict, plotted: bool = True) -> None:
    (out / REPORT_MD).write_text("# dap-hvd compare\n\n" + render(report))
    (out / REPORT_JSON).write_text(json.dumps(report, indent=1))
    if plotted:
        plot(report, out / PLOT)

