"""PNG plots of an ablation report: TTFT-TBT Pareto frontier, expert bytes per mode, TTFT and SLO vs rate."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _runs(report, **match):
    return [r for r in report["runs"] if all(r[k] == v for k, v in match.items())]


def _label(report):
    return f"{report['model']}, CPU, synthetic workloads (commit {report['commit']})"


def make_plots(report: dict, out_dir: str) -> list:
    one_rate = all(len(rates) == 1 for rates in report["plan"]["rates"].values())
    if "matched_tail" in report and one_rate:  # a frontier plan: one routing, one rate per workload
        paths = [frontier(report, out_dir), expert_bytes(report, out_dir)]
    else:
        paths = [pareto(report, out_dir), expert_bytes(report, out_dir), rates(report, out_dir)]
    return [p for p in paths if p]


def _gap_vs_ttft(report, out_dir, name, title, draw):
    """One panel per workload, TTFT p50 against token-gap p99; `draw(ax, workload)` adds the points."""
    wls = list(report["plan"]["rates"])
    fig, axes = plt.subplots(1, len(wls), figsize=(6 * len(wls), 4.5), squeeze=False)
    for ax, w in zip(axes[0], wls):
        draw(ax, w)
        ax.set_xlabel("token gap p99 (ms)")
        ax.set_ylabel("TTFT p50 (s)")
        ax.set_title(f"{w}: {title} (lower-left is better)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(_label(report), fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frontier(report, out_dir):
    """TTFT p50 against token-gap p99: each family's settings joined by size, stock SGLang as single points."""
    def draw(ax, w):
        runs = [r for r in report["runs"] if r["workload"] == w and r["latency"]["tbt_p99_s"] is not None]
        for family, members in report["families"].items():
            pts = [(r["latency"]["tbt_p99_s"], r["latency"]["ttft_p50_s"], r["mode"].rsplit("-", 1)[1])
                   for m in members for r in runs if r["mode"] == m]
            if pts:
                line, = ax.plot([p[0] * 1e3 for p in pts], [p[1] for p in pts], marker="o", label=family)
                for x, y, size in pts:
                    ax.annotate(size, (x * 1e3, y), fontsize=6, color=line.get_color())
        for r in runs:
            if r["mode"].startswith("sglang"):
                ax.plot([r["latency"]["tbt_p99_s"] * 1e3], [r["latency"]["ttft_p50_s"]], marker="x", ls="",
                        label=r["mode"])
    return _gap_vs_ttft(report, out_dir, "frontier.png", "frontier per family", draw)


def pareto(report, out_dir):
    """TTFT p50 against token-gap p99 per mode, one point per request rate."""
    def draw(ax, w):
        for mode in report["plan"]["routings"]["model"]:
            pts = sorted(((r["latency"]["tbt_p99_s"], r["latency"]["ttft_p50_s"], r["rate"])
                          for r in _runs(report, routing="model", workload=w, mode=mode)
                          if r["latency"]["tbt_p99_s"] is not None), key=lambda p: p[2])
            if pts:
                ax.plot([p[0] * 1e3 for p in pts], [p[1] for p in pts], marker="o", label=mode)
    return _gap_vs_ttft(report, out_dir, "pareto.png", "TTFT vs TBT", draw)


def expert_bytes(report, out_dir):
    groups = [(w, rt) for rt in report["plan"]["routings"] for w in report["plan"]["rates"]]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.5), squeeze=False)
    for ax, (w, rt) in zip(axes[0], groups):
        modes, vals = [], []
        for mode in report["plan"]["routings"][rt]:
            runs = _runs(report, routing=rt, workload=w, mode=mode)
            tok = sum(r["experts"]["prefill_tokens"] for r in runs)
            if not tok:
                continue
            modes.append(mode)
            vals.append(sum(r["experts"]["prefill_bytes"] for r in runs) / tok / 1e6)
        xs = range(len(modes))
        ax.bar(xs, vals, color=["#c44" if m.startswith("layered") else "#48c" for m in modes])
        ax.set_xticks(list(xs))
        ax.set_xticklabels(modes, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel("expert MB per prefill token")
        ax.set_title(f"{w}, {rt} routing", fontsize=9)
    fig.suptitle(_label(report), fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "expert_bytes.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rates(report, out_dir):
    """Per workload, against the offered request rate: TTFT p50, token-gap p99 and SLO attainment (the dashed line is
    the 90% goal; the highest rate a mode keeps above it is its goodput in DistServe's sense)."""
    wls = list(report["plan"]["rates"])
    fig, axes = plt.subplots(3, len(wls), figsize=(6 * len(wls), 10), squeeze=False)
    panels = [("TTFT p50 (s)", lambda r: r["latency"]["ttft_p50_s"]),
              ("token gap p99 (ms)", lambda r: 1e3 * (r["latency"]["tbt_p99_s"] or 0)),
              ("SLO attainment (%)", lambda r: 100 * (r["latency"]["slo_attainment"] or 0))]
    for col, w in enumerate(wls):
        for mode in report["plan"]["routings"]["model"]:
            runs = sorted(_runs(report, routing="model", workload=w, mode=mode), key=lambda r: r["rate"])
            if len(runs) < 1:
                continue
            xs = [r["rate"] for r in runs]
            for row, (_, get) in enumerate(panels):
                axes[row][col].plot(xs, [get(r) for r in runs], marker="o", label=mode)
        axes[2][col].axhline(90, color="gray", ls="--", lw=0.8, label="SLO goal")
        axes[0][col].set_title(f"{w}: against the request rate")
        for row, (label, _) in enumerate(panels):
            axes[row][col].set_ylabel(label)
            axes[row][col].set_xlabel("request rate (req/s)")
            axes[row][col].grid(alpha=0.3)
            axes[row][col].legend(fontsize=7)
    fig.suptitle(_label(report), fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "rates.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
