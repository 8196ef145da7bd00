"""The diff chart: per matched piece of the network, each engine's time (largest differences first)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional


def diff_chart(diff: Mapping[str, Any], path: Path, top: int = 20) -> Optional[Path]:
    """Horizontal bars of both engines' times for the ``top`` rows with the largest difference; None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib ships with the package's dependencies
        return None
    from pipeline.core.artifacts import atomic_path

    a, b = diff["labels"]
    rows = list(diff["rows"])[:top][::-1]
    names = [(r["nodes"][0] if r["nodes"] else "(reformats)")[-38:] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r[a]["ms"] for r in rows], height=0.4, label=a)
    ax.barh([i - 0.2 for i in y], [r[b]["ms"] for r in rows], height=0.4, label=b)
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("ms per run (TensorRT profiler)")
    ax.set_title(f"{b} vs {a}: pieces with the largest time difference")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)
