"""POST /api/jobs against a real backend and `tp-dashboard`: what its body may hold and how it is read.

A retried create with the same `request_id` gives the same job; an unknown field is refused by name with the
closest valid one; a body nested too deeply is a 400 saying so (never a 500); a body over 1 MiB is refused by its
Content-Length before it is read, and a streamed one as soon as it passes the limit.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.backend import BackendProcess, free_port
from support.dashboard import DashboardProcess, own_stack

_BASE = {"framework": "timm", "model": "resnet10t", "dataset": {"name": "digits"}, "epochs": 1}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackendProcess, DashboardProcess]]:
    """A backend whose timm trainer cannot be reached (a job is stored all the same) and a dashboard."""
    unreachable = {"TP_TRAINERS": f"timm=127.0.0.1:{free_port()}"}
    with own_stack(tmp_path_factory.mktemp("create-body"), backend_env=unreachable) as pair:
        yield pair


@pytest.fixture
def client(stack: tuple[BackendProcess, DashboardProcess]) -> Iterator[httpx.Client]:
    """A logged-in client whose every request carries the CSRF token."""
    dashboard = stack[1]
    with httpx.Client(base_url=dashboard.url, timeout=30) as logged_in:
        assert logged_in.get(dashboard.login_url, follow_redirects=False).status_code == 303
        logged_in.headers["X-CSRF-Token"] = logged_in.get("/api/session").json()["csrf_token"]
        yield logged_in


def _post_raw(client: httpx.Client, raw: str) -> httpx.Response:
    return client.post("/api/jobs", content=raw, headers={"Content-Type": "application/json"})


def test_a_create_retried_with_its_request_id_gives_the_same_job(client: httpx.Client) -> None:
    first = client.post("/api/jobs", json={**_BASE, "request_id": "form-1"})
    assert first.status_code == 201, first.text
    again = client.post("/api/jobs", json={**_BASE, "request_id": "form-1"})
    assert again.status_code == 201, again.text
    assert again.json()["job"]["job_id"] == first.json()["job"]["job_id"]
    other = client.post("/api/jobs", json={**_BASE, "request_id": "form-2"})
    assert other.status_code == 201, other.text
    assert other.json()["job"]["job_id"] != first.json()["job"]["job_id"]
    # Without a request_id every create is a new job.
    ids = {client.post("/api/jobs", json=_BASE).json()["job"]["job_id"] for _ in range(2)}
    assert len(ids) == 2
    refused = client.post("/api/jobs", json={**_BASE, "request_id": 7})
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "request_id", refused.text


@pytest.mark.parametrize(
    ("body", "field", "closest"),
    [
        ({**_BASE, "batchsize": 8}, "batchsize", "batch_size"),
        ({**_BASE, "epoch": 2}, "epoch", "epochs"),
        ({**_BASE, "advanced": {}}, "advanced", "advanced_config"),
        ({**_BASE, "dataset": {"nmae": "digits"}}, "dataset.nmae", "name"),
        ({**_BASE, "zzz": 1}, "zzz", None),
        ({**_BASE, "q" * 100_000: 1}, "q" * 80, None),
    ],
)
def test_an_unknown_field_is_refused_by_name_with_the_closest_valid_one(
    client: httpx.Client, body: dict, field: str, closest: str | None
) -> None:
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["field"] == field, error
    assert repr(field.rpartition(".")[2]) in error["message"], error
    assert len(error["message"]) < 400, error
    if closest is not None:
        assert f"did you mean {closest!r}" in error["message"], error
    else:
        assert "did you mean" not in error["message"] and "valid fields are" in error["message"], error


def test_a_body_nested_too_deeply_is_a_400_saying_so(
    client: httpx.Client, stack: tuple[BackendProcess, DashboardProcess]
) -> None:
    dashboard = stack[1]
    log_before = len(dashboard.log_text())
    ok_depth = 20
    fine = '{"extra":' + '{"a":' * ok_depth + "1" + "}" * ok_depth + "}"
    response = _post_raw(
        client, f'{{"framework":"timm","model":"resnet10t","dataset":"digits","epochs":1,"advanced_config":{fine}}}'
    )
    assert response.status_code == 201, response.text
    for depth in (40, 60, 300):
        extra = '{"extra":' + '{"a":' * depth + "1" + "}" * depth + "}"
        raw = f'{{"framework":"timm","model":"resnet10t","dataset":"digits","epochs":1,"advanced_config":{extra}}}'
        response = _post_raw(client, raw)
        assert response.status_code == 400, (depth, response.text)
        error = response.json()["error"]
        assert error["code"] == "INVALID_ARGUMENT" and error["field"] == "advanced_config.extra", error
        assert "nested too deeply" in error["message"] and "24" in error["message"], error
    response = _post_raw(client, '{"a":' + "[" * 5000 + "]" * 5000 + "}")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "nested too deeply" in error["message"] and "24" in error["message"], error
    assert "Traceback" not in dashboard.log_text()[log_before:]


_JSON_HEAD = '{"framework":"timm","model":"resnet10t","dataset":"digits","epochs":1'
"""A valid body's JSON without its closing brace."""
_SURROGATE_CASES = [
    ('{"framework":"\\ud800","model":"resnet10t","dataset":"digits","epochs":1}', "framework"),
    ('{"framework":"timm","model":"res\\udc00net","dataset":"digits","epochs":1}', "model"),
    ('{"framework":"timm","model":"resnet10t","dataset":"\\ud800","epochs":1}', "dataset"),
    ('{"framework":"timm","model":"resnet10t","dataset":{"path":"/d/\\ud800"},"epochs":1}', "dataset.path"),
    (_JSON_HEAD + ',"display_name":"a\\ud800"}', "display_name"),
    (_JSON_HEAD + ',"request_id":"\\udfff"}', "request_id"),
    (_JSON_HEAD + ',"\\ud800":1}', None),
    (_JSON_HEAD + ',"advanced_config":{"extra":{"\\ud800":1}}}', "advanced_config.extra"),
    (_JSON_HEAD + ',"advanced_config":{"extra":{"tags":["ok","\\ud800"]}}}', "advanced_config.extra.tags[1]"),
    # advanced_config as a JSON text, as the form sends it: the surrogate is in the inner JSON.
    (_JSON_HEAD + ',"advanced_config":"{\\"extra\\": {\\"a\\": \\"\\\\ud800\\"}}"}', "advanced_config.extra.a"),
]


@pytest.mark.parametrize(("raw", "field"), _SURROGATE_CASES, ids=[str(f) for _, f in _SURROGATE_CASES])
def test_a_lone_surrogate_in_a_string_is_a_400_naming_the_field(
    client: httpx.Client, stack: tuple[BackendProcess, DashboardProcess], raw: str, field: str | None
) -> None:
    """A lone UTF-16 surrogate (`"\\ud800"`) is valid JSON but no text protobuf or the backend can hold: a 400
    naming where it is, with the security headers of every answer, never a 500 and a traceback."""
    dashboard = stack[1]
    log_before = len(dashboard.log_text())
    response = _post_raw(client, raw)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error.get("field") == field, error
    assert "surrogate" in error["message"], error
    assert "content-security-policy" in response.headers and response.headers["x-content-type-options"] == "nosniff"
    assert "Traceback" not in dashboard.log_text()[log_before:]


def _raw_request(url: str, head: str, body: bytes = b"", timeout: float = 10) -> tuple[bytes, float]:
    """Sends `head` (and `body`) on a plain socket: the answer (headers and body) and how long it took."""
    host, _, port = url.removeprefix("http://").partition(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while True:
            part = sock.recv(65536)
            answer += part
            headers, _, content = answer.partition(b"\r\n\r\n")
            length = re.search(rb"content-length: *(\d+)", headers, re.I)
            if not part or (length is not None and len(content) >= int(length.group(1))):
                break
    return answer, time.monotonic() - started


def _head(client: httpx.Client, length_header: str) -> str:
    cookies = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    return (
        "POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-CSRF-Token: {client.headers['X-CSRF-Token']}\r\nCookie: {cookies}\r\n{length_header}\r\n\r\n"
    )


def test_a_body_over_the_limit_is_refused_before_it_is_read(client: httpx.Client) -> None:
    # 300 MB announced, nothing sent: refused at once by its Content-Length.
    answer, took = _raw_request(str(client.base_url), _head(client, "Content-Length: 300000000"))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"RESOURCE_EXHAUSTED" in answer and b"1048576" in answer, answer[-300:]
    assert took < 5
    # Chunked, 1 MiB and one chunk more sent and no end: refused without waiting for the rest. (Every byte sent is
    # read: bytes left unread at the server's close would reset the connection and could lose the answer.)
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(17))
    answer, took = _raw_request(str(client.base_url), _head(client, "Transfer-Encoding: chunked"), body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"RESOURCE_EXHAUSTED" in answer, answer[-300:]
    # Under the limit, the body is read as before.
    response = client.post("/api/jobs", json={**_BASE, "display_name": "x" * 1000})
    assert response.status_code in (201, 400), response.text


def test_the_new_job_form_sends_only_fields_the_api_takes() -> None:
    """Every field new.js puts in its body is one POST /api/jobs accepts (an unknown one is refused)."""
    from trainingplatform_dashboard import app

    source = (Path(app.__file__).parent / "static" / "js" / "new.js").read_text()
    literal = re.search(r"const payload = \{(.*?)\};", source, re.S)
    assert literal is not None, "new.js builds its body as `const payload = {...}`"
    sent = set(re.findall(r"^\s*(\w+):", literal.group(1), re.M)) | set(re.findall(r"payload\.(\w+) =", source))
    assert {"framework", "model", "dataset", "epochs", "advanced_config", "request_id"} <= sent, sent
    assert sent <= app.CREATE_FIELDS, sent - app.CREATE_FIELDS
