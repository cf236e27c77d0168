"""`tp metrics --plot` draws every metric key as it is written, and names each in its panel's legend.

A key (or a job name) holding `$...$` failed the plot with an empty `error: ` (matplotlib read it as math and its
ValueError starts with a line break); a key starting with "_" was left out of the legend (matplotlib's mark of a
hidden label)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from trainingplatform_sdk.cli.output import families_figure, plot_families, plot_series, series_figure

SERIES = {
    "train/loss": [(0.0, 1.0), (1.0, 0.5)],
    "_hidden/loss": [(0.0, 0.3), (1.0, 0.3)],
    "$\\foo$/acc": [(0.0, 0.1), (1.0, 0.2)],
}
TITLE = "price $x$: timm resnet10t on digits"


def test_the_panels_of_families_name_every_key_in_their_legends_as_written() -> None:
    figure, panels = families_figure(SERIES, TITLE)
    try:
        legends = {
            axis.get_title(): [text.get_text() for text in axis.get_legend().get_texts()]
            for axis in figure.axes
            if axis.get_visible()
        }
        assert panels == ["loss", "accuracy / mAP"]
        assert legends == {"loss": ["_hidden/loss", "train/loss"], "accuracy / mAP": ["$\\foo$/acc"]}
    finally:
        plt.close(figure)


def test_the_panel_of_chosen_keys_names_every_key_in_its_legend() -> None:
    figure = series_figure({TITLE: SERIES}, ["train/loss", "_hidden/loss", "$\\foo$/acc"])
    try:
        (axis,) = figure.axes
        assert [text.get_text() for text in axis.get_legend().get_texts()] == [
            "train/loss",
            "_hidden/loss",
            "$\\foo$/acc",
        ]
    finally:
        plt.close(figure)


@pytest.mark.parametrize("by_key", [False, True], ids=["families", "keys"])
def test_a_key_and_a_title_with_dollars_are_drawn_as_text_not_math(tmp_path: Path, by_key: bool) -> None:
    path = tmp_path / "plot.png"
    if by_key:
        plot_series({TITLE: SERIES}, path, list(SERIES))
    else:
        plot_families(SERIES, path, TITLE)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
