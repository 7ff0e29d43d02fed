"""The debug console's page, its live stream and its form, on the admin listener.

- `GET /dashboard/console`: the page (sidecar/observe/static/console.html).
- `GET /dashboard/console/events[?channel=TEXT]`: server-sent events, a `hello` then `items`
  (JSON lists, sidecar/observe/console.py) at most every FLUSH_INTERVAL. `channel` keeps the
  items on channels whose name contains TEXT, before the page's rate cap.
- `POST /dashboard/console/publish`: `{"app_id"?, "channel", "event", "data"}` published
  through the Unix socket's API (its checks, its gate, its counters), JSON in, JSON out.

All three want `admin.token` when one is set, as the dashboard does (the middleware in
admin.py). The POST is also safe from other sites' pages: it must be `application/json` (a
cross-site form cannot send that without a preflight, which is never answered), an `Origin`,
when sent, must be this listener's own, and with a token set the token must come in the
`Authorization` header, never the URL. Nothing here is logged: an event's data goes to the
page and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from sidecar.api.events import parse_events
from sidecar.http_glue import ApiError, json_response
from sidecar.observe.console import PREVIEW_BYTES, ConsoleFeed

# Items go to a page at most this often (batched): bounded work per page however busy.
FLUSH_INTERVAL = 0.1
# A comment line this often keeps proxies and the browser from thinking the stream dead.
KEEPALIVE = 15.0
# The form's body: an event for a test, not a bulk upload.
MAX_FORM_BODY = 1024 * 1024
# Filter text longer than a channel name can be matches nothing anyway.
MAX_FILTER = 200


class ConsoleEndpoints:
    def __init__(self, observer: Any, token: str | None) -> None:
        self.observer = observer
        self.feed: ConsoleFeed = observer.console
        self.token = token

    def add_routes(self, app: web.Application) -> None:
        """Before the dashboard's `/dashboard/{name}`, which would take `console`."""
        app.router.add_get("/dashboard/console", self.page)
        app.router.add_get("/dashboard/console/events", self.events)
        app.router.add_post("/dashboard/console/publish", self.publish)

    async def page(self, request: web.Request) -> web.Response:
        body = resources.files("sidecar.observe").joinpath("static", "console.html").read_bytes()
        return web.Response(body=body, content_type="text/html")

    async def events(self, request: web.Request) -> web.StreamResponse:
        channel_filter = request.query.get("channel", "")[:MAX_FILTER]
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        viewer = self.feed.open(channel_filter)
        ready = asyncio.Event()
        viewer.wake = ready.set
        try:
            await send_event(response, "hello", self._hello(channel_filter))
            while not viewer.closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), KEEPALIVE)
                ready.clear()
                items = viewer.queue.take()
                if items:
                    await send_event(response, "items", items)
                elif not viewer.closed:
                    await response.write(b": keep-alive\n\n")
                await asyncio.sleep(FLUSH_INTERVAL)
        except ConnectionError:
            pass  # the page was closed
        finally:
            self.feed.close(viewer)
        return response

    def _hello(self, channel_filter: str) -> dict[str, object]:
        api = self.observer.publish_api
        return {
            "apps": [app.id for app in api.apps] if api is not None else [],
            "rate": self.feed.rate,
            "preview_bytes": PREVIEW_BYTES,
            "filter": channel_filter,
            "workers": self.observer.workers_configured,
        }

    async def publish(self, request: web.Request) -> web.Response:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        api = self.observer.publish_api
        if api is None:
            return json_response({"error": "no publish API in this process"}, 503)
        try:
            form = orjson.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return json_response({"error": f"body over {MAX_FORM_BODY} bytes"}, 413)
        except orjson.JSONDecodeError:
            return json_response({"error": "body is not valid JSON"}, 400)
        if not isinstance(form, dict):
            return json_response({"error": "body must be a JSON object"}, 400)
        apps = list(api.apps)
        app_id = form.get("app_id") or (apps[0].id if len(apps) == 1 else None)
        if not isinstance(app_id, str):
            return json_response({"error": "app_id: required (several apps here)"}, 400)
        # The Pusher API's own body: the same parser, limits and messages as the socket's.
        body = {"name": form.get("event"), "channel": form.get("channel")}
        if "data" in form:
            body["data"] = form["data"]
        try:
            publication = parse_events(orjson.dumps(body), api.app_by_id(app_id))
            with self.feed.labelled("console"):
                api.broker.publish(publication)
        except ApiError as exc:
            message = exc.message.replace("name:", "event:", 1)
            return json_response({"error": message}, exc.status)
        return json_response({"ok": True, "app_id": app_id, "channels": list(publication.channels)})

    def _refusal(self, request: web.Request) -> web.Response | None:
        """Another site's page must not publish through an admin's browser (module doc)."""
        if request.content_type != "application/json":
            return json_response({"error": "Content-Type must be application/json"}, 415)
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return json_response({"error": "Origin is not this admin listener"}, 403)
        if self.token and not request.headers.get("Authorization", "").startswith("Bearer "):
            return json_response({"error": "admin token required in the Authorization header"}, 401)
        return None


async def send_event(response: web.StreamResponse, name: str, data: object) -> None:
    await response.write(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")
