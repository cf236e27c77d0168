"""`tp jobs` pads and cuts its table cells by terminal columns, not code points: a CJK character or an emoji
takes two columns, a combining mark none and stays with its base character, so the columns stay aligned."""

from __future__ import annotations

import io

import pytest
from trainingplatform_sdk.cli import output
from trainingplatform_sdk.cli.output import cell


class _Utf8(io.StringIO):
    encoding = "utf-8"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc", 3),
        ("日本語", 6),
        ("😀x", 3),
        ("e\u0301te\u0301", 3),
        ("a\u200bb", 2),
    ],
)
def test_display_width_counts_columns(text: str, expected: int) -> None:
    assert output.display_width(text) == expected


@pytest.mark.parametrize(
    ("text", "width", "expected"),
    [
        ("日本", 6, "日本  "),
        ("日本語の名前です", 8, "日本語… "),
        ("😀😀😀😀😀", 6, "😀😀… "),
        ("e\u0301" * 10, 5, "e\u0301" * 4 + "…"),
        ("ascii-name-that-is-long", 10, "ascii-nam…"),
    ],
)
def test_a_cell_is_as_wide_as_its_column_in_terminal_columns(text: str, width: int, expected: str) -> None:
    shown = cell(text, width, _Utf8())
    assert shown == expected
