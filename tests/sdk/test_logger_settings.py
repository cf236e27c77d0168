"""LoggerSettings validation."""

from __future__ import annotations

import dataclasses

import pytest
from trainingplatform_sdk import LoggerSettings


def test_defaults_meet_the_contract() -> None:
    settings = LoggerSettings()
    assert settings.flush_interval_s <= 0.05
    assert settings.max_batch_bytes <= 8 * 1024 * 1024
    assert settings.keepalive_time_ms >= 10_000


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoggerSettings().flush_interval_s = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides",
    [
        {"flush_interval_s": 0},
        {"unwatched_flush_interval_s": 0},
        {"unwatched_flush_interval_s": float("nan")},
        {"unwatched_cursor_poll_interval_s": 0},
        {"unwatched_cursor_poll_interval_s": -1.0},
        {"max_batch_points": 0},
        {"max_batch_bytes": 8 * 1024 * 1024},
        {"max_batch_bytes": 1000},
        {"memory_buffer_points": 10, "max_batch_points": 100},
        {"spool_max_bytes": -1},
        {"reconnect_initial_backoff_s": 2.0, "reconnect_max_backoff_s": 1.0},
        {"reconnect_backoff_multiplier": 0.5},
        {"reconnect_jitter": 1.5},
        {"keepalive_time_ms": 5_000},
        {"rpc_timeout_s": 0},
    ],
)
def test_invalid_settings_are_refused(overrides: dict) -> None:
    with pytest.raises(ValueError):
        LoggerSettings(**overrides)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"flush_interval_s": "1"}, "flush_interval_s"),
        ({"flush_interval_s": float("nan")}, "flush_interval_s"),
        ({"rpc_timeout_s": float("inf")}, "rpc_timeout_s"),
        ({"close_timeout_s": float("nan")}, "close_timeout_s"),
        ({"close_timeout_s": "30"}, "close_timeout_s"),
        ({"spool_max_bytes": 1.5}, "spool_max_bytes"),
        ({"max_batch_points": True, "memory_buffer_points": True}, "max_batch_points"),
        ({"reconnect_jitter": float("nan")}, "reconnect_jitter"),
        ({"keepalive_permit_without_calls": "no"}, "keepalive_permit_without_calls"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LoggerSettings(**overrides)


def test_close_timeout_may_be_unbounded() -> None:
    assert LoggerSettings(close_timeout_s=float("inf")).close_timeout_s == float("inf")
    assert LoggerSettings(flush_interval_s=1).flush_interval_s == 1  # an int is a number of seconds too
