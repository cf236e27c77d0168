"""One setting's text (a flag or an environment variable) turned into a checked value, for every service's settings.

Each function takes the setting's name (its environment variable) and its text, and raises ValueError with a
message that names the setting, says what it must be and shows what it got: `tp-backend`, the trainers and the
dashboard print that message as one line and exit 2, instead of a traceback or a value used as it came.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

__all__ = [
    "LOG_LEVELS",
    "flag",
    "listen_address",
    "log_level",
    "number",
    "port",
    "port_error",
    "tighten_token_file",
    "whole_number",
]

#: The logging levels a service's TP_LOG_LEVEL may name (WARN is read as WARNING).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def number(name: str, text: str, *, minimum: float = 0.0, above: bool = False, maximum: float | None = None) -> float:
    """A finite number of at least `minimum` (above it, when `above`), and at most `maximum`.

    Raises:
        ValueError: naming the setting.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number, got {text!r}")
    if value < minimum or (above and value == minimum) or (maximum is not None and value > maximum):
        low = f"above {minimum:g}" if above else f"at least {minimum:g}"
        high = f" and at most {maximum:g}" if maximum is not None else ""
        raise ValueError(f"{name} must be {low}{high}, got {text!r}")
    return value


def whole_number(name: str, text: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """A whole number of at least `minimum` and at most `maximum`.

    Raises:
        ValueError: naming the setting.
    """
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {text!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        high = f" and at most {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be at least {minimum}{high}, got {value}")
    return value


def flag(name: str, text: str) -> bool:
    """On (1, true, yes, on) or off (0, false, no, off), in any case.

    Raises:
        ValueError: naming the setting.
    """
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false (1/0, yes/no, on/off), got {text!r}")


def port(name: str, text: str) -> int:
    """A TCP port, or 0 (empty text too) for off.

    Raises:
        ValueError: naming the setting.
    """
    try:
        value = int(text or "0")
    except ValueError:
        raise ValueError(f"{name} must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise ValueError(f"{name} must be a port (1 to 65535) or 0 for off, got {value}")
    return value


def listen_address(name: str, text: str, *, any_port: bool = True) -> str:
    """An address to listen on, `host:port` (an IPv6 host in brackets), with a port from 1 to 65535 (or 0, a free
    port, when `any_port`).

    Raises:
        ValueError: naming the setting.
    """
    host, sep, port_text = text.strip().rpartition(":")
    low = 0 if any_port else 1
    if not sep or not host or not port_text.isdigit() or not low <= int(port_text) <= 65535:
        raise ValueError(f"{name} must be host:port with a port from {low} to 65535, got {text!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"{name}: an IPv6 host goes in brackets, for example [::1]:{port_text}; got {text!r}")
    return text.strip()


def log_level(name: str, text: str) -> str:
    """A logging level's name, upper-cased: DEBUG, INFO, WARNING, ERROR or CRITICAL.

    Raises:
        ValueError: naming the setting.
    """
    level = text.strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ValueError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


def port_error(what: str, host: str, port: int, setting: str, error: OSError) -> OSError:
    """The one-line error of a port that cannot be bound: `cannot <what> on host:port (SETTING): why`."""
    bare = host.strip("[]") or "0.0.0.0"
    address = f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"
    if error.errno == errno.EADDRINUSE:
        why = "the port is in use"
    elif error.errno == errno.EADDRNOTAVAIL:
        why = "the address is not local"
    else:
        why = error.strerror or str(error)
    refused = OSError(f"cannot {what} on {address} ({setting}): {why}")  # str() is the message alone
    refused.errno = error.errno
    return refused


def tighten_token_file(path: Path, log: logging.Logger) -> None:
    """Before a token file is read: when group or others may read it, logs a WARNING naming the file and its mode,
    and makes it 0600 when this process owns it (a file it does not own stays as it is, with the warning)."""
    try:
        info = path.stat()
    except OSError:
        return  # missing: the caller says so
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o077:
        return
    if info.st_uid == os.geteuid():
        try:
            os.chmod(path, 0o600)
        except OSError as error:
            log.warning(
                "token file %s has mode %04o (group or others can read it); chmod 600 failed: %s", path, mode, error
            )
            return
        log.warning("token file %s had mode %04o (group or others could read it); it is now 0600", path, mode)
    else:
        log.warning(
            "token file %s has mode %04o (group or others can read it) and belongs to another user: chmod 600 it",
            path,
            mode,
        )
