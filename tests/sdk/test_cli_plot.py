"""`tp metrics --plot` names every metric key in its panel's legend.

A key starting with "_" was left out of the legend (matplotlib's mark of a hidden label)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from trainingplatform_sdk.cli.output import families_figure, series_figure

SERIES = {
    "train/loss": [(0.0, 1.0), (1.0, 0.5)],
    "_hidden/loss": [(0.0, 0.3), (1.0, 0.3)],
    "val/acc": [(0.0, 0.1), (1.0, 0.2)],
}
TITLE = "timm resnet10t on digits"


def test_the_panels_of_families_name_every_key_in_their_legends_as_written() -> None:
    figure, panels = families_figure(SERIES, TITLE)
    try:
        legends = {
            axis.get_title(): [text.get_text() for text in axis.get_legend().get_texts()]
            for axis in figure.axes
            if axis.get_visible()
        }
        assert panels == ["loss", "accuracy / mAP"]
        assert legends == {"loss": ["_hidden/loss", "train/loss"], "accuracy / mAP": ["val/acc"]}
    finally:
        plt.close(figure)


def test_the_panel_of_chosen_keys_names_every_key_in_its_legend() -> None:
    figure = series_figure({TITLE: SERIES}, ["train/loss", "_hidden/loss", "val/acc"])
    try:
        (axis,) = figure.axes
        assert [text.get_text() for text in axis.get_legend().get_texts()] == [
            "train/loss",
            "_hidden/loss",
            "val/acc",
        ]
    finally:
        plt.close(figure)
