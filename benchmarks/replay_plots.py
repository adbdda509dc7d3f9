"""The replay benchmark's PNG plots: champion AP50, what the labeler did per task, and the
rolling share of boxes that arrived as correct pre-labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plots(report: dict[str, Any], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    tasks = report["per_task"]
    index = np.arange(1, len(tasks) + 1)
    appeared = [(m["first_prelabels_at_task"], m["version"]) for m in report["models"]
                if m.get("first_prelabels_at_task")]
    written = []

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.step(index, [t["champion_val_ap50"] or 0 for t in tasks], where="post", color="#2b7a3d")
    ax.set(xlabel="human-labeled tasks", ylabel="champion AP50 (validation)", ylim=(0, 1.02),
           title="Champion quality against labeling progress")
    for at, version in appeared:
        ax.axvline(at, color="#999", lw=0.8, ls="--")
        ax.text(at, 0.03, version.rsplit("-", 1)[-1], rotation=90, fontsize=8, color="#666")
    fig.tight_layout()
    fig.savefig(folder / "replay-ap50.png", dpi=110)
    written.append(str(folder / "replay-ap50.png"))

    fig, ax = plt.subplots(figsize=(10, 4))
    bottom = np.zeros(len(tasks))
    for key, color in (("accepted", "#2b7a3d"), ("edited", "#e0a526"), ("drawn", "#8c9bab")):
        values = np.array([t[key] for t in tasks])
        ax.bar(index, values, bottom=bottom, color=color, width=1.0, label=key)
        bottom += values
    ax.bar(index, -np.array([t["deleted"] for t in tasks]), color="#c0392b", width=1.0,
           label="deleted (below 0)")
    ax.set(xlabel="task, in the order labeled", ylabel="boxes",
           title="What the labeler did with each task")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "replay-boxes.png", dpi=110)
    written.append(str(folder / "replay-boxes.png"))

    fig, ax = plt.subplots(figsize=(8, 4))
    window = 20
    accepted = np.array([t["accepted"] for t in tasks], float)
    truth = np.array([t["truth_boxes"] for t in tasks], float)
    kernel = np.ones(window)
    share = np.convolve(accepted, kernel, "valid") / np.maximum(
        np.convolve(truth, kernel, "valid"), 1)
    ax.plot(np.arange(window, len(tasks) + 1), share, color="#2b7a3d")
    for at, _ in appeared:
        ax.axvline(at, color="#999", lw=0.8, ls="--")
    ax.set(xlabel="human-labeled tasks", ylim=(0, 1.02),
           ylabel=f"boxes arriving as correct pre-labels\n(share, last {window} tasks)",
           title="Share of boxes the labeler did not have to draw or fix")
    fig.tight_layout()
    fig.savefig(folder / "replay-share.png", dpi=110)
    written.append(str(folder / "replay-share.png"))
    plt.close("all")
    return written
