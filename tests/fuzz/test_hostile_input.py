"""Hostile input against a real frontend + mocker, over raw sockets where HTTP clients would refuse
to send it: every case gets a clear 4xx in the OpenAI error shape, or a closed connection, within a
bound, and the server keeps serving others meanwhile and afterwards.

- request heads over ``--http-max-header-size`` (one huge header, many headers, a header that never
  ends) -> 431 and the connection closed;
- bodies over ``--max-body-size`` (declared, chunked, or lying about their length) -> 413;
- one-byte-per-second clients (head or body) -> 408 and closed after ``--http-header-timeout`` /
  ``--http-body-timeout``, while a normal request on another connection is answered at once;
- an idle connection -> closed; a client that leaves mid-body -> nothing logged as an error;
- malformed HTTP, malformed JSON, invalid UTF-8, deep nesting -> 400;
- absurd numbers in every numeric field the document describes (huge, negative, 2**63, 2**64,
  1e309, NaN, Infinity) -> 400 naming the field, or an answer when the value is acceptable.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from tests.fuzz.conftest import BODY_TIMEOUT, CHAT, HEAD_TIMEOUT, MAX_BODY, MAX_HEADER, MODEL, Served

pytestmark = [pytest.mark.timeout(120)]
ERROR_KEYS = {"message", "type", "param", "code"}
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


# --- raw HTTP ------------------------------------------------------------------------------------


def connect(served: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=HEAD_TIMEOUT + BODY_TIMEOUT + 10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket times out)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def send_all(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; False if the server closed the connection first (it refused early)."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_error(raw: bytes, status: int) -> dict[str, Any]:
    """``raw`` is one response with ``status`` and the OpenAI error body; its error object."""
    assert raw, "the server closed the connection without answering"
    got, headers, body = parse_response(raw)
    assert got == status, raw[:500]
    assert headers["content-type"].startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert set(error) == ERROR_KEYS and error["message"], error
    return error


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post_raw(
    served: Served, path: str, body: bytes, content_type: str = "application/json"
) -> httpx.Response:
    return httpx.post(f"{served.url}{path}", content=body, headers={"content-type": content_type}, timeout=30)


def assert_json_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == ERROR_KEYS and error["message"], error
    if param is not None:
        assert error["param"] == param, error
    return error


class Background:
    """A normal chat request answered on another connection while a hostile client holds its own."""

    def __init__(self, served: Served, max_latency: float = 2.0) -> None:
        self.served = served
        self.max_latency = max_latency
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 2}
        with httpx.Client(timeout=10) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    r = http.post(f"{self.served.url}{CHAT_PATH}", json=body)
                    if r.status_code != 200:
                        self.errors.append(r.text)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                self.latencies.append(time.monotonic() - started)
                self._stop.wait(0.2)

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        assert not self.errors, self.errors[:3]
        assert len(self.latencies) >= 3, self.latencies
        assert max(self.latencies) < self.max_latency, self.latencies


# --- oversized --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        request_head("GET", "/live", {"X-Big": "a" * (MAX_HEADER * 4)}),
        request_head("GET", "/live", {f"X-H{i}": "v" * 100 for i in range(MAX_HEADER // 50)}),
        request_head("GET", "/live?" + "q" * (MAX_HEADER * 2), {}),
    ],
    ids=["one-huge-header", "many-headers", "huge-url"],
)
def test_oversized_request_head_is_431_and_closed(served: Served, head: bytes):
    with connect(served) as sock:
        send_all(sock, head)
        error = assert_error(read_all(sock), 431)
    assert error["code"] == "headers_too_large"


def test_a_header_that_never_ends_is_refused_before_it_is_buffered(served: Served):
    with connect(served) as sock:
        assert send_all(sock, b"GET /live HTTP/1.1\r\nHost: fuzz\r\nX-Endless: ")
        sent = 0
        # a few KiB at a time, until the server answers (it must before far more than its limit came)
        while sent < MAX_HEADER * 64 and not select.select([sock], [], [], 0.01)[0]:
            if not send_all(sock, b"x" * 4096):
                break
            sent += 4096
        assert sent < MAX_HEADER * 4, f"the server read {sent} bytes of one header before refusing it"
        assert_error(read_all(sock), 431)
    served.healthy()


def test_oversized_body_is_413(served: Served):
    big = json.dumps({"model": MODEL, "prompt": "x" * (MAX_BODY + 10)}).encode()
    assert_json_error(post_raw(served, COMPLETIONS_PATH, big), 413)
    # chunked (no Content-Length): counted while it is read
    r = httpx.post(
        f"{served.url}{COMPLETIONS_PATH}",
        content=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert_json_error(r, 413)
    # a declared length over the limit is refused before any of the body is read
    with connect(served) as sock:
        head = request_head(
            "POST", COMPLETIONS_PATH, {"Content-Type": "application/json", "Content-Length": str(10**12)}
        )
        send_all(sock, head)
        sock.settimeout(BODY_TIMEOUT + 5)
        raw = read_all(sock)  # the answer may come in several segments; the server then closes
        assert_error(raw, 413)
    served.healthy()


def test_body_shorter_than_its_content_length_times_out_with_408(served: Served):
    with connect(served) as sock:
        head = request_head("POST", CHAT_PATH, {"Content-Type": "application/json", "Content-Length": "1000"})
        send_all(sock, head + b'{"model": ')
        started = time.monotonic()
        error = assert_error(read_all(sock), 408)
        assert BODY_TIMEOUT - 0.5 < time.monotonic() - started < BODY_TIMEOUT + 3
    assert error["code"] == "request_timeout"


# --- slow and idle clients --------------------------------------------------------------------


def _trickle(sock: socket.socket, data: bytes, interval: float, deadline: float) -> bool:
    """Send ``data`` one byte per ``interval`` until done, refused, or ``deadline``; False if refused."""
    for i in range(len(data)):
        if time.monotonic() > deadline or not send_all(sock, data[i : i + 1]):
            return False
        time.sleep(interval)
    return True


def test_one_byte_per_second_head_is_cut_at_the_header_timeout(served: Served):
    body = json.dumps({"model": MODEL, "messages": CHAT, "max_tokens": 2}).encode()
    head = request_head(
        "POST", CHAT_PATH, {"Content-Type": "application/json", "Content-Length": str(len(body))}
    )
    with Background(served), connect(served) as sock:
        started = time.monotonic()
        finished = _trickle(sock, head, 1.0, started + HEAD_TIMEOUT + 5)
        assert not finished
        raw = read_all(sock)
        assert time.monotonic() - started < HEAD_TIMEOUT + 3
    assert_error(raw, 408)


def test_one_byte_per_second_body_is_cut_at_the_body_timeout(served: Served):
    body = json.dumps({"model": MODEL, "messages": CHAT, "max_tokens": 2}).encode()
    head = request_head(
        "POST", CHAT_PATH, {"Content-Type": "application/json", "Content-Length": str(len(body))}
    )
    with Background(served), connect(served) as sock:
        send_all(sock, head)
        started = time.monotonic()
        finished = _trickle(sock, body, 1.0, started + BODY_TIMEOUT + 5)
        assert not finished
        raw = read_all(sock)
        assert time.monotonic() - started < BODY_TIMEOUT + 3
    assert_error(raw, 408)
    served.healthy()


def test_idle_connections_are_closed(served: Served):
    socks = [connect(served) for _ in range(20)]
    try:
        started = time.monotonic()
        for sock in socks:
            assert read_all(sock) == b""
        assert time.monotonic() - started < HEAD_TIMEOUT + 3
    finally:
        for sock in socks:
            sock.close()
    # after a response, a keep-alive connection that starts a second request and stalls is cut too
    with connect(served) as sock:
        send_all(sock, request_head("GET", "/live", {}))
        time.sleep(0.3)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        send_all(sock, b"GET /li")
        assert_error(read_all(sock), 408)


def test_client_leaving_mid_body_is_not_an_error(served: Served):
    for _ in range(5):
        with connect(served) as sock:
            head = request_head(
                "POST", CHAT_PATH, {"Content-Type": "application/json", "Content-Length": "500"}
            )
            send_all(sock, head + b'{"model": "' + MODEL.encode())
    time.sleep(0.5)
    served.healthy()


# --- malformed --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\x00\xff\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /live HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ],
    ids=["garbage", "non-ascii-path", "negative-length", "two-lengths", "bad-chunk", "bad-header-line"],
)
def test_malformed_http_is_400_and_closed(served: Served, raw: bytes):
    with connect(served) as sock:
        send_all(sock, raw)
        assert_error(read_all(sock), 400)


@pytest.mark.parametrize("path", [CHAT_PATH, COMPLETIONS_PATH, "/v1/embeddings", "/v1/responses"])
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b'{"model": "' + MODEL.encode() + b'", "messages": [',
        b"null",
        b"[]",
        b'"a string"',
        b"\xff\xfe\xfd",
        b'{"model": "\xff\xfe", "messages": [], "prompt": "x"}',
        b'{"model": "x", "prompt": "\\ud800", "messages": [{"role": "user", "content": "\\udfff"}]}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"model": "x", "a": ' + b"{" * 10_000 + b"}" * 10_000 + b"}",
        b'{"model": "x", "model": "y"}' + b" " * 10,
        b"\x00" * 64,
    ],
    ids=[
        "empty",
        "not-json",
        "truncated",
        "null",
        "array",
        "string",
        "invalid-utf8",
        "invalid-utf8-in-string",
        "lone-surrogates",
        "deep-arrays",
        "deep-objects",
        "duplicate-keys",
        "nul-bytes",
    ],
)
def test_malformed_json_is_400(served: Served, path: str, body: bytes):
    r = post_raw(served, path, body)
    assert_json_error(r, 400)


def _deep_schema(depth: int) -> str:
    return '{"anyOf":[' * depth + '{"type":"string"}' + "]}" * depth


def _deep_list(depth: int) -> str:
    return "[" * depth + '"x"' + "]" * depth


MESSAGES = json.dumps(CHAT)
DEEP_FIELDS = {
    "response_format": lambda d: (
        f'"messages":{MESSAGES},"response_format":{{"type":"json_schema",'
        f'"json_schema":{{"name":"x","schema":{_deep_schema(d)}}}}}'
    ),
    "structured_outputs": lambda d: (
        f'"messages":{MESSAGES},"structured_outputs":{{"json":{_deep_schema(d)}}}'
    ),
    "tool-parameters": lambda d: (
        f'"messages":{MESSAGES},"tools":[{{"type":"function","function":'
        f'{{"name":"f","parameters":{_deep_schema(d)}}}}}],"tool_choice":"required"'
    ),
    "chat_template_kwargs": lambda d: (
        f'"messages":{MESSAGES},"chat_template_kwargs":{{"a":{_deep_list(2 * d)}}}'
    ),
    "message-extra-key": lambda d: f'"messages":[{{"role":"user","content":"hi","x":{_deep_list(2 * d)}}}]',
}


@pytest.mark.parametrize("field", list(DEEP_FIELDS))
def test_deeply_nested_json_in_object_fields_is_refused_or_served(served: Served, field: str):
    """Nesting as deep as the JSON parser takes (a schema checker that recursed per level once
    answered 500 with a RecursionError), and deeper (refused by the parser)."""
    with httpx.Client(timeout=30) as http:
        for depth in (40, 80, 90, 95, 99, 150):
            body = '{"model":"' + MODEL + '","max_tokens":2,' + DEEP_FIELDS[field](depth) + "}"
            r = http.post(
                f"{served.url}{CHAT_PATH}", content=body, headers={"content-type": "application/json"}
            )
            assert r.status_code in (200, 400), (depth, r.status_code, r.text[:300])
            if r.status_code == 400:
                assert set(r.json()["error"]) == ERROR_KEYS
    served.healthy()


# --- absurd numbers ---------------------------------------------------------------------------

ABSURD = [
    b"-1",
    b"0",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"1" + b"0" * 400,
    b"1e309",
    b"-1e309",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e-400",
    b"0.5",
]


def numeric_fields(served: Served, path: str) -> list[tuple[str, ...]]:
    """Paths (``("nvext", "top_k")``) of every integer or number field of ``path``'s request body,
    from the published document."""
    doc = httpx.get(f"{served.url}/openapi.json", timeout=10).json()
    schemas = doc["components"]["schemas"]
    ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]

    def types(schema: dict[str, Any]) -> set[str]:
        if "$ref" in schema:
            return types(schemas[schema["$ref"].rsplit("/", 1)[-1]])
        found = {schema["type"]} if isinstance(schema.get("type"), str) else set()
        for key in ("anyOf", "oneOf"):
            for sub in schema.get(key, []):
                found |= types(sub)
        return found

    def objects(schema: dict[str, Any]) -> list[dict[str, Any]]:
        if "$ref" in schema:
            return [schemas[schema["$ref"].rsplit("/", 1)[-1]]]
        return [o for key in ("anyOf", "oneOf") for sub in schema.get(key, []) for o in objects(sub)]

    found: list[tuple[str, ...]] = []

    def walk(schema: dict[str, Any], prefix: tuple[str, ...]) -> None:
        for name, prop in schema.get("properties", {}).items():
            if types(prop) & {"integer", "number"}:
                found.append((*prefix, name))
            for obj in objects(prop):
                if obj.get("type") == "object" and prefix == ():
                    walk(obj, (name,))

    walk(schemas[ref.rsplit("/", 1)[-1]], ())
    return found


def with_value(base: bytes, field: tuple[str, ...], value: bytes) -> bytes:
    """``base`` (a JSON object) with ``field`` set to the raw JSON ``value`` (``NaN`` is not JSON)."""
    marker = "__VALUE__"
    obj = json.loads(base)
    target = obj
    for key in field[:-1]:
        target = target.setdefault(key, {})
    target[field[-1]] = marker
    return json.dumps(obj).replace(json.dumps(marker), value.decode()).encode()


@pytest.mark.parametrize(
    ("path", "base"),
    [
        (CHAT_PATH, {"model": MODEL, "messages": CHAT, "max_tokens": 2}),
        (COMPLETIONS_PATH, {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2}),
        ("/v1/responses", {"model": MODEL, "input": "Hello", "max_output_tokens": 2}),
    ],
    ids=["chat", "completions", "responses"],
)
def test_absurd_numbers_in_every_numeric_field(served: Served, path: str, base: dict[str, Any]):
    fields = numeric_fields(served, path)
    assert len(fields) >= 8, fields
    answered: dict[int, int] = {}
    with httpx.Client(timeout=30) as http:
        for field in fields:
            for value in ABSURD:
                body = with_value(json.dumps(base).encode(), field, value)
                r = http.post(
                    f"{served.url}{path}", content=body, headers={"content-type": "application/json"}
                )
                answered[r.status_code] = answered.get(r.status_code, 0) + 1
                assert r.status_code in (200, 400, 503), (field, value, r.status_code, r.text[:300])
                if r.status_code == 503:  # a pinned instance (nvext.backend_instance_id) that is not there
                    assert "retry-after" in r.headers and field[-1] == "backend_instance_id", r.text
                    assert "nvext.backend_instance_id" in r.json()["error"]["message"], r.text
                if r.status_code == 400:
                    error = r.json()["error"]
                    assert set(error) == ERROR_KEYS, error
                    if value in (b"1" + b"0" * 400, b"1e309", b"NaN", b"Infinity"):
                        assert error["param"] in (".".join(field), None), (field, value, error)
    assert answered.get(400, 0) > len(fields), answered
    served.healthy()


def test_huge_n_and_max_tokens_are_refused_not_run(served: Served):
    with httpx.Client(timeout=30) as http:
        for extra, param in [
            ({"n": 10**6}, "n"),
            ({"max_tokens": 10**12}, "max_tokens"),
            ({"max_completion_tokens": 2**63}, "max_completion_tokens"),
            ({"n": 128, "max_tokens": 10**9}, "max_tokens"),
        ]:
            r = http.post(f"{served.url}{CHAT_PATH}", json={"model": MODEL, "messages": CHAT, **extra})
            assert_json_error(r, 400, param)
    served.healthy()
