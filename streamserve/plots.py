"""Plots of one run (``simulate --plots``): latency CDFs, speculation depth over time per
decode lane, and each lane's utilisation and KV usage over time.

Everything comes from the ``RunResult``: request timestamps, the k trace (one entry per
change of k), and the usage samples each simulated lane keeps (a few thousand per lane
however long the run), so plotting a million-request run costs seconds, not a rerun.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from streamserve.metrics import RunResult
from streamserve.request import State


def _cdf(ax, values_ms: np.ndarray, label: str) -> None:
    if len(values_ms) == 0:
        ax.text(0.5, 0.5, "no finished requests", ha="center", transform=ax.transAxes)
        return
    x = np.sort(values_ms)
    ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=label)
    ax.set_xscale("log")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)


def write_plots(result: RunResult, out_dir: Path, title: str = "") -> list[Path]:
    """Write latency_cdf.png, spec_k.png and lanes.png into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out_dir.mkdir(parents=True, exist_ok=True)
    done = [r for r in result.requests if r.state is State.FINISHED]
    paths: list[Path] = []

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (name, values) in zip(axes, (
            ("TTFT", [r.ttft for r in done]),
            ("TPOT", [r.tpot for r in done if r.generated > 1]),
            ("E2E latency", [r.e2e for r in done]))):
        _cdf(ax, np.asarray(values, dtype=np.float64) * 1e3, name)
        ax.set_xlabel(f"{name} (ms)")
        ax.set_ylabel("fraction of requests")
    fig.suptitle(f"{title}: {len(done)} of {len(result.requests)} requests finished")
    fig.tight_layout()
    paths.append(out_dir / "latency_cdf.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3.5))
    lanes = sorted({lane for _, lane, _ in result.k_trace})
    for lane in lanes:
        pts = [(t, k) for t, ln, k in result.k_trace if ln == lane]
        t = [p[0] for p in pts] + [result.duration]
        k = [p[1] for p in pts] + [pts[-1][1]]
        ax.step(t, k, where="post", label=f"lane {lane}")
    if not lanes:
        ax.text(0.5, 0.5, "no speculative decode steps", ha="center", transform=ax.transAxes)
    else:
        ax.legend(loc="upper right")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("speculation depth k")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(f"{title}: k over time per decode lane")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "spec_k.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, (ax_u, ax_kv) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for usage in result.lanes:
        s = np.asarray(usage.samples, dtype=np.float64).reshape(-1, 3)
        if len(s) < 2:
            continue
        dt = np.diff(s[:, 0])
        util = np.divide(np.diff(s[:, 1]), dt, out=np.zeros_like(dt), where=dt > 0)
        label = f"lane {usage.lane_id} ({usage.role})"
        ax_u.step(s[1:, 0], np.clip(util, 0, 1), where="pre", label=label)
        ax_kv.plot(s[:, 0], s[:, 2], label=label)
    ax_u.set_ylabel("utilisation")
    ax_kv.set_ylabel("KV usage")
    ax_kv.set_xlabel("simulated time (s)")
    for ax in (ax_u, ax_kv):
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    ax_u.legend(loc="upper right", fontsize="small")
    ax_u.set_title(f"{title}: lanes over time")
    fig.tight_layout()
    paths.append(out_dir / "lanes.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
