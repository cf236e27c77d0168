"""URIs as shown and stored: without credentials. Shared by the trainer side (its messages, the tracking URI it
reports) and the backend (which stores a reported tracking URI this way, whoever sent it)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["AUTHORITY_START", "redact_uri"]

#: `scheme://` or a scheme-relative `//`: what precedes a URI's credentials.
AUTHORITY_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|//")
#: Query parameters whose value is a secret (`?password=`, `?token=`, `?X-Amz-Signature=`, ...).
_SECRET_QUERY_KEYS = re.compile(r"pass|secret|token|key|credential|signature", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """Returns `uri` without its credentials and without secret-looking query parameters.

    Credentials are everything between the scheme's `//` (or the start, for a URI typed without a scheme:
    `user:password@host:9000`) and the last `@`, so a password typed unencoded with `/`, `?`, `#` or `@` in it
    is removed whole. A path that holds an `@` loses what precedes it: showing too little is the safe mistake.
    """
    match = AUTHORITY_START.match(uri)
    head, rest = (match.group(0), uri[match.end() :]) if match else ("", uri)
    if "@" in rest and not (head and rest.startswith("/")):  # `sqlite:///...`, `file:///...`: no authority
        rest = rest.rpartition("@")[2]
    redacted = head + rest
    if "?" not in redacted:
        return redacted
    try:
        parts = urlsplit(redacted)
    except ValueError:
        return "<unparseable URI>"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(key, value) for key, value in pairs if not _SECRET_QUERY_KEYS.search(key)]
    if len(kept) == len(pairs):
        return redacted  # unchanged: urlunsplit would turn `sqlite:////abs/path` into `sqlite://abs/path`
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment))
