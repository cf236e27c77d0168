"""`tp`'s one-line error: a message that starts with a line break (matplotlib's parse errors do) printed `error: `
and nothing else; the first line that says something is shown."""

from __future__ import annotations

import pytest
from trainingplatform_sdk.cli.main import _error_line
from trainingplatform_sdk.errors import InvalidArgumentError


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ValueError("\n$\\foo$\n^\nParseException: Unknown symbol"), "$\\foo$"),
        (ValueError("  \n\n  the real reason  \nmore"), "the real reason"),
        (ValueError(""), "ValueError"),
        (ValueError("\n \n"), "ValueError"),
        (InvalidArgumentError("\nspec.training.epochs must be at least 1"), "spec.training.epochs must be at least 1"),
    ],
)
def test_the_error_line_is_the_first_line_that_says_something(error: BaseException, line: str) -> None:
    assert _error_line(error) == line
