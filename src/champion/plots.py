"""Plots champion writes as PNG files: one drawing of each kind, for the model card and `champion evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from champion.files import replacing


def confusion_matrix_png(classes: Sequence[str], matrix: Sequence[Sequence[int]], title: str, path: Path) -> None:
    """Rows true, columns predicted, with the count on every cell."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    labels = [str(c) for c in classes]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(labels) + 2),) * 2)
    image = ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title=title)  # fmt: skip
    # Counts on the cells: colour alone hides small but important confusions.
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    fig.colorbar(image, ax=ax)
    save(fig, path)


def save(fig: Any, path: Path) -> None:
    """Write `fig` as a PNG under its final name only once it is whole, and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with replacing(path) as tmp:  # a full disk must not leave half a plot under its name
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)  # pyplot keeps every open figure alive; plots are drawn in long-lived processes
