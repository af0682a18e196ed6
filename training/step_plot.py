"""A figure of a metric against training step: the set-up and saving that training.eval and
training.compare share, so their plots look alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def step_figure(path: Path, ylabel: str, figsize: tuple[float, float]) -> Iterator[Any]:
    """Yields the axes to draw lines on; then labels them, adds grid and legend and writes the
    PNG to `path`. Raises ImportError when matplotlib is not installed."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    try:
        yield ax
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
