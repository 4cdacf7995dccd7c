"""Training curves of a run (plotly): loss against steps, validation Dice against hours."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(path: Path) -> list[dict]:
    """The records of a run's ``log.jsonl``."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_curve(
    out: Path,
    title: str | None = None,
    records: list[dict] | None = None,
    stem: str = "curve",
    html: bool = True,
) -> Path:
    """``STEM.html`` and ``STEM.png`` in the folder ``out``: training loss against steps;
    validation mean Dice (and QAM weights, where logged) against steps, and against
    hours of training where the log has them. ``records``: the log (default: the run
    folder's ``log.jsonl``); ``html=False`` writes the PNG alone.

    Returns the PNG's path. Raises whatever kaleido raises when no Chromium is found
    (the HTML is written first).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if records is None:
        records = read_log(out / "log.jsonl")
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val" in r]
    timed = [r for r in val if "hours" in r]
    fig = make_subplots(
        rows=1,
        cols=3 if timed else 2,
        subplot_titles=("training loss (steps)", "validation Dice / QAM weight (steps)")
        + (("validation Dice (hours of training)",) if timed else ()),
    )
    fig.add_trace(
        go.Scatter(x=[r["step"] for r in train], y=[r["loss"] for r in train], name="loss"),
        1,
        1,
    )
    fig.add_trace(
        go.Scatter(x=[r["step"] for r in val], y=[r["val"]["mean"] for r in val], name="val mean Dice"),
        1,
        2,
    )
    for key, label in (
        ("weight_clean", "QAM weight, clean"),
        ("weight_corrupted", "QAM weight, corrupted"),
    ):
        points = [r for r in train if r.get(key) is not None]
        if points:
            fig.add_trace(
                go.Scatter(x=[r["step"] for r in points], y=[r[key] for r in points], name=label),
                1,
                2,
            )
    if timed:
        fig.add_trace(
            go.Scatter(
                x=[r["hours"] for r in timed],
                y=[r["val"]["mean"] for r in timed],
                name="val mean Dice (hours)",
                mode="lines+markers",
            ),
            1,
            3,
        )
    fig.update_layout(title=title or out.name, width=1400 if timed else 1000, height=400)
    if html:
        fig.write_html(out / f"{stem}.html", include_plotlyjs=True)
    fig.write_image(out / f"{stem}.png", width=1500, height=450)  # room for three titled panels
    return out / f"{stem}.png"
