"""The PNG plots of a report (matplotlib, headless).

matplotlib is an optional dependency (``cacheproxy[bench]``): without it the
report is written without plots and says so.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COLORS = {"direct": "tab:red", "proxy": "tab:blue", "nginx": "tab:green"}


def _pyplot() -> Any:
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def available() -> bool:
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return False
    return True


def latency_cdf(latencies_ms: Mapping[str, Sequence[float]], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for target, values in latencies_ms.items():
        xs = sorted(max(v, 0.01) for v in values)
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{target} (n={len(xs)})", color=COLORS.get(target))
    ax.set_xscale("log")
    ax.set_xlabel("client latency from scheduled time (ms, log)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.0)
    for q in (0.5, 0.95, 0.99):
        ax.axhline(q, color="grey", lw=0.5, ls=":")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def upstream_over_time(
    series: Mapping[str, Sequence[Sequence[float]]], path: Path, title: str
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for target, points in series.items():
        if not points:
            continue
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            label=target,
            color=COLORS.get(target),
            marker=".",
            lw=1,
        )
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("upstream requests/s")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep(points: Sequence[dict[str, Any]], path: Path, budget: float | None) -> None:
    """Upstream req/s and client p99 against users, one line per target."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    targets = sorted({t for p in points for t in p["runs"]})
    labelled = False
    for target in targets:
        pts = [(p["users"], p["runs"][target]) for p in points if target in p["runs"]]
        users = [u for u, _ in pts]
        ax1.plot(
            users,
            [r["upstream_rps"] for _, r in pts],
            marker="o",
            label=target,
            color=COLORS.get(target),
        )
        ax2.plot(
            users,
            [max(r["latency_ms"]["p99"], 0.01) for _, r in pts],
            marker="o",
            label=f"{target} p99",
            color=COLORS.get(target),
        )
        ax2.plot(
            users,
            [max(r["latency_ms"]["p50"], 0.01) for _, r in pts],
            marker=".",
            ls="--",
            label=f"{target} p50",
            color=COLORS.get(target),
        )
        shaky = [(u, r["upstream_rps"]) for u, r in pts if r.get("saturated")]
        if shaky:
            label = None if labelled else "saturated: errors or late arrivals"
            labelled = True
            ax1.scatter(
                [u for u, _ in shaky],
                [v for _, v in shaky],
                s=160,
                facecolors="none",
                edgecolors="black",
                label=label,
            )
    if budget is not None:
        ax1.axhline(budget, color="black", ls=":", label=f"budget {budget:g}/s")
    ticker = importlib.import_module("matplotlib.ticker")
    counts = sorted({int(p["users"]) for p in points})
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")  # before the formatters: setting a scale resets them
        ax.set_xticks(counts)
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("users")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax1.set_ylabel("upstream requests/s")
    ax1.set_title("controller load against users")
    ax2.set_ylabel("client latency (ms)")
    ax2.set_title("client latency against users")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
