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
