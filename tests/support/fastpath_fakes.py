"""The fast publish path's fakes: a broker, a transport and aiohttp's protocol factory that record
what they are given, the harness that wires FastPublishProtocol to them, and raw HTTP requests
and responses; shared by the fast path, its fuzz tests and the gate tests (no sockets)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sidecar.api.fastpath import FastPublishProtocol
from sidecar.api.handlers import PublishApi, client_max_size
from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig
from sidecar.engine.broker.base import Publication
from sidecar.engine.channel_state import ChannelState

APP = AppConfig(id="1", key="app-key", secret="app-secret-123", max_payload_bytes=1000)
SMALL_APP = AppConfig(id="2", key="small-key", secret="small-secret-456", max_payload_bytes=50)

MAX_BODY = client_max_size(AppRegistry((APP, SMALL_APP)))
EVENT = {"name": "created", "channel": "orders", "data": '{"id":42}'}


class FakeBroker:
    def __init__(self) -> None:
        self.publications: list[Publication] = []

    def publish(self, publication: Publication) -> None:
        self.publications.append(publication)

    async def publish_confirmed(self, publication: Publication) -> None:
        self.publish(publication)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.protocols: list[asyncio.BaseProtocol] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocols.append(protocol)

    reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    @property
    def written(self) -> bytes:
        return b"".join(self.writes)


class FakeHttp(asyncio.Protocol):
    """Stands in for aiohttp's RequestHandler: records what it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append(("connection_made", transport))

    def data_received(self, data: bytes) -> None:
        self.events.append(("data_received", data))

    @property
    def received(self) -> bytes:
        return b"".join(data for kind, data in self.events if kind == "data_received")


class HttpFactory:
    def __init__(self) -> None:
        self.made: list[FakeHttp] = []

    def __call__(self) -> FakeHttp:
        protocol = FakeHttp()
        self.made.append(protocol)
        return protocol


class Harness:
    def __init__(self) -> None:
        self.broker = FakeBroker()
        self.api = PublishApi(
            AppRegistry((APP, SMALL_APP)), self.broker, signed=False, state=ChannelState()
        )  # type: ignore[arg-type]
        self.http = HttpFactory()
        self.transport = FakeTransport()
        self.protocol = FastPublishProtocol(self.api, self.http)
        self.protocol.connection_made(self.transport)

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.protocol.data_received(chunk)

    @property
    def handed(self) -> FakeHttp:
        assert len(self.http.made) == 1, "expected exactly one hand-off to aiohttp"
        return self.http.made[0]


def request(
    method: str,
    path: str,
    body: bytes = b"",
    *,
    version: str = "HTTP/1.1",
    headers: dict[str, str] | None = None,
    content_length: bool = True,
) -> bytes:
    lines = [f"{method} {path} {version}", "Host: localhost"]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def post(path: str, payload: Any = None, **kwargs: Any) -> bytes:
    body = payload if isinstance(payload, bytes) else json.dumps(payload or EVENT).encode()
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return request("POST", path, body, headers=headers, **kwargs)


def parse_responses(raw: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Split a byte stream into (status line, lower-case headers, body) by Content-Length."""
    responses = []
    while raw:
        end = raw.index(b"\r\n\r\n")
        lines = raw[:end].decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon, f"malformed header line {line!r}"
            headers[name.lower()] = value.strip()
        length = int(headers["content-length"])
        body = raw[end + 4 : end + 4 + length]
        assert len(body) == length, "truncated body"
        responses.append((lines[0], headers, body))
        raw = raw[end + 4 + length :]
    return responses
