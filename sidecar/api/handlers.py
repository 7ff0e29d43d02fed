"""The Pusher HTTP API handlers, shared by the Unix socket (trusted) and the TLS port (signed)."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from aiohttp import ClientConnectionError, web

from sidecar.api import queries
from sidecar.api.events import parse_batch, parse_events
from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig
from sidecar.engine.broker.base import Broker, BrokerUnavailable, Publication
from sidecar.engine.broker.changes import TerminateUser
from sidecar.engine.client_messages import USER_ID_RE
from sidecar.engine.presence import PresenceStore
from sidecar.http_glue import ApiError
from sidecar.protocol.signatures import SignatureError, verify_body, verify_signature

log = logging.getLogger("sidecar.api")

EMPTY_OK = b"{}"


class PublishApi:
    """The Pusher HTTP API: events, batches, channel queries, terminating a user's connections.

    Queries are answered from `state`, this process's copy of the cluster-wide channel state.
    """

    def __init__(
        self, apps: AppRegistry, broker: Broker, *, signed: bool, state: PresenceStore
    ) -> None:
        self.apps = apps
        self.broker = broker
        self.state = state
        self.signed = signed
        self.max_body = client_max_size(apps)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/apps/{app_id}/events", self.events)
        app.router.add_post("/apps/{app_id}/batch_events", self.batch_events)
        app.router.add_get("/apps/{app_id}/channels", self.channels)
        app.router.add_get("/apps/{app_id}/channels/{channel}", self.channel)
        app.router.add_get("/apps/{app_id}/channels/{channel}/users", self.users)
        app.router.add_post(
            "/apps/{app_id}/users/{user_id}/terminate_connections", self.terminate_connections
        )
        # The Python `pusher` library (3.3) leaves /apps/{id} out of this one path; the app is
        # then the one whose key signed the request (or the only app).
        app.router.add_post("/users/{user_id}/terminate_connections", self.terminate_connections)

    def _app(self, request: web.Request) -> AppConfig:
        return self.app_by_id(request.match_info["app_id"])

    def app_by_id(self, app_id: str) -> AppConfig:
        app = self.apps.by_id(app_id)
        if app is None:
            raise ApiError(404, f"no app with id {app_id[:32]!r}")
        return app

    def _app_without_id(self, request: web.Request) -> AppConfig:
        key = request.query.get("auth_key")
        if key is not None:
            app = self.apps.by_key(key)
            if app is None:
                raise ApiError(401, "auth_key is not the key of an app here")
            return app
        apps = list(self.apps)
        if len(apps) != 1:
            raise ApiError(404, "several apps here: use /apps/{id}/users/{user_id}/...")
        return apps[0]

    async def _body(self, request: web.Request, app: AppConfig) -> bytes:
        """The request body, signature checked when signed.

        Read here rather than with request.read(), which keeps the body on the request until
        the reply is sent: the caller passes it straight to the parser, which drops it once
        decoded, so a large event is not held three times over.
        """
        params = dict(request.query)
        if self.signed:
            try:
                verify_signature(
                    method=request.method,
                    path=request.path,
                    params=params,
                    key=app.key,
                    secret=app.secret,
                    now=time.time(),
                )
            except SignatureError as exc:
                raise ApiError(401, str(exc)) from None
        limit = self.max_body
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        chunks: list[bytes] = []
        size = 0
        try:
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
                chunks.append(chunk)
        except (ConnectionError, ClientConnectionError):
            raise ApiError(400, "the client went away while sending the body") from None
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        del chunks
        if self.signed:
            try:
                verify_body(params, body)
            except SignatureError as exc:
                raise ApiError(401, str(exc)) from None
        return body

    async def events(self, request: web.Request) -> web.Response:
        app = self._app(request)
        # The body is passed as a temporary: the parser frees a large one once decoded.
        await self._publish([parse_events(await self._body(request, app), app)])
        return web.Response(body=EMPTY_OK, content_type="application/json")

    async def batch_events(self, request: web.Request) -> web.Response:
        app = self._app(request)
        # all valid, or none published
        await self._publish(parse_batch(await self._body(request, app), app))
        return web.Response(body=EMPTY_OK, content_type="application/json")

    async def _publish(self, publications: list[Publication]) -> None:
        """Each handed over at once (in order), then answered once the broker took them all:
        with Redis that is its answer, and a 503 when it does not come (never a 200 for an
        event that went nowhere)."""
        try:
            if len(publications) == 1:  # no task for the usual case
                await self.broker.publish_confirmed(publications[0])
            else:
                await asyncio.gather(*(self.broker.publish_confirmed(p) for p in publications))
        except BrokerUnavailable as exc:
            raise ApiError(503, f"the broker cannot take events now: {exc}") from None

    async def channels(self, request: web.Request) -> web.Response:
        app = self._app(request)
        await self._body(request, app)
        return _json(queries.channels(self.state, app.id, request.query))

    async def channel(self, request: web.Request) -> web.Response:
        app = self._app(request)
        await self._body(request, app)
        name = request.match_info["channel"]
        return _json(queries.channel(self.state, app.id, name, request.query))

    async def users(self, request: web.Request) -> web.Response:
        app = self._app(request)
        await self._body(request, app)
        return _json(queries.users(self.state, app.id, request.match_info["channel"]))

    async def terminate_connections(self, request: web.Request) -> web.Response:
        if "app_id" in request.match_info:
            app = self._app(request)
        else:
            app = self._app_without_id(request)
        await self._body(request, app)
        user_id = request.match_info["user_id"]
        if USER_ID_RE.fullmatch(user_id) is None or len(user_id) > 200:
            raise ApiError(400, "user_id: at most 200 characters of A-Z a-z 0-9 _ - = @ , . ;")
        # To every worker, in order: each closes that user's connections it holds.
        self.broker.announce([TerminateUser(app.id, user_id)])
        return web.Response(body=EMPTY_OK, content_type="application/json")


def _json(payload: object) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


# A byte of data is at most this many bytes of JSON: a control character is escaped as \u0001
# (6), and the pusher libraries escape every non-ASCII character (ensure_ascii): 2-byte and
# 3-byte UTF-8 as one \uXXXX (6), a 4-byte emoji as a surrogate pair (12).
MAX_ESCAPED_PER_BYTE = 6
# The rest of an event's JSON (name, channels, socket_id) and a batch's.
ENVELOPE_BYTES = 64 * 1024


def client_max_size(apps: AppRegistry) -> int:
    """Body limit: room for the largest payload limit however it is escaped, and the envelope.

    The exact limit is checked on the decoded `data` (413 naming the field), where it is
    decoded anyway; this bound only stops a body that could never pass that check from being
    read into memory (on the TLS port, only once its signature is checked).
    """
    return max(app.max_payload_bytes for app in apps) * MAX_ESCAPED_PER_BYTE + ENVELOPE_BYTES
