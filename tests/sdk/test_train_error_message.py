"""tp-train's job error for an exception a DataLoader worker raised: `Type: message`, without torch's wrapper."""

from __future__ import annotations

import pytest
from trainingplatform_sdk.training.train import _error_message

torch_utils = pytest.importorskip("torch._utils")


class ReaderError(Exception):
    """An exception type of a module other than builtins: its traceback line names it with its module."""


def _from_a_worker(error: Exception) -> Exception:
    """`error` as torch's DataLoader re-raises it in the training process: its worker's traceback as the message."""
    try:
        try:
            raise error
        except Exception:
            torch_utils.ExceptionWrapper(where="in DataLoader worker process 0").reraise()
    except Exception as reraised:
        return reraised
    raise AssertionError("not re-raised")


def test_a_worker_exception_is_its_type_and_whole_message() -> None:
    unreadable = OSError("cannot read image /d/a.jpg")
    assert _error_message(_from_a_worker(unreadable)) == "OSError: cannot read image /d/a.jpg"
    # The last line alone was "second line" (or the note): the type and the start of the message were lost.
    multi_line = ValueError("bad label in /d/a.txt\nline 3: 'x 0.5 0.5'")
    assert _error_message(_from_a_worker(multi_line)) == "ValueError: bad label in /d/a.txt\nline 3: 'x 0.5 0.5'"
    noted = KeyError("label")
    noted.add_note("in /d/b.txt")
    assert _error_message(_from_a_worker(noted)) == "KeyError: 'label'\nin /d/b.txt"
    # A message line that looks like an exception line is part of the message.
    tricky = RuntimeError("outer\nRuntimeError: inner")
    assert _error_message(_from_a_worker(tricky)) == "RuntimeError: outer\nRuntimeError: inner"
    assert _error_message(_from_a_worker(ReaderError("a\nb"))) == f"{ReaderError.__module__}.ReaderError: a\nb"


def test_a_chained_worker_exception_is_the_last_one() -> None:
    try:
        try:
            raise OSError("truncated")
        except OSError as cause:
            raise ValueError("cannot read image /d/a.jpg\n(truncated)") from cause
    except ValueError as error:
        chained = error
    assert _error_message(_from_a_worker(chained)) == "ValueError: cannot read image /d/a.jpg\n(truncated)"


def test_other_exceptions_are_type_and_message() -> None:
    assert _error_message(ValueError("a\nb")) == "ValueError: a\nb"
    # Wrapper text without a traceback's structure: its last line, as before.
    odd = RuntimeError("Caught X in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\nlast")
    assert _error_message(odd) == "last"
