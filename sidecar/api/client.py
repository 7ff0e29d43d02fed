"""Publish to a local sidecar over its Unix socket: no signature, no network, one round trip.

    from sidecar.api.client import SidecarClient
    client = SidecarClient("./sidecar.sock", app_id="1")
    client.trigger("orders", "created", {"id": 42})

Synchronous on purpose: it is called from request handlers of Puma-style or WSGI apps. The
connection is kept open between calls and reopened once if the sidecar restarted.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_TIMEOUT = 5.0


class PublishError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (also used by bench/)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _data_string(data: Any) -> str:
    return data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))


class SidecarClient:
    def __init__(
        self,
        socket_path: str = "./sidecar.sock",
        app_id: str = "1",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.socket_path = socket_path
        self.app_id = str(app_id)
        self.timeout = timeout
        self._conn: UnixHTTPConnection | None = None

    def trigger(
        self,
        channels: str | Iterable[str],
        event: str,
        data: Any,
        socket_id: str | None = None,
    ) -> dict[str, Any]:
        """Publish one event to one channel or several (up to 100)."""
        body: dict[str, Any] = {"name": event, "data": _data_string(data)}
        if isinstance(channels, str):
            body["channel"] = channels
        else:
            body["channels"] = list(channels)
        if socket_id is not None:
            body["socket_id"] = socket_id
        return self._post(f"/apps/{self.app_id}/events", body)

    def trigger_batch(self, events: Iterable[dict[str, Any]]) -> dict[str, Any]:
        """Publish several events ({channel, name, data, socket_id?}) in one request."""
        batch = [{**e, "data": _data_string(e.get("data"))} for e in events]
        return self._post(f"/apps/{self.app_id}/batch_events", {"batch": batch})

    def channels(self, prefix: str | None = None, info: Iterable[str] = ()) -> dict[str, Any]:
        """Occupied channels: {"channels": {name: {subscription_count?, user_count?}}}."""
        query: dict[str, str] = {}
        if prefix:
            query["filter_by_prefix"] = prefix
        if info:
            query["info"] = ",".join(info)
        return self._request("GET", f"/apps/{self.app_id}/channels", query=query)

    def channel(self, channel: str, info: Iterable[str] = ()) -> dict[str, Any]:
        """{"occupied", "subscription_count"?, "user_count"? (presence)}."""
        query = {"info": ",".join(info)} if info else {}
        return self._request("GET", f"/apps/{self.app_id}/channels/{quote(channel)}", query=query)

    def users(self, channel: str) -> list[str]:
        """The user ids present on a presence channel."""
        reply = self._request("GET", f"/apps/{self.app_id}/channels/{quote(channel)}/users")
        return [user["id"] for user in reply["users"]]

    def terminate_user_connections(self, user_id: str) -> dict[str, Any]:
        """Close every connection signed in as this user, on every worker."""
        path = f"/apps/{self.app_id}/users/{quote(user_id)}/terminate_connections"
        return self._post(path, {})

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, body)

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        payload = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if query:
            path = f"{path}?{urlencode(query, safe=',')}"
        while True:
            reused = self._conn is not None
            if self._conn is None:
                self._conn = UnixHTTPConnection(self.socket_path, self.timeout)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                self.close()
                # A kept-alive connection the sidecar closed (restart, idle timeout) is retried
                # once on a new one; a failure on a fresh connection is the caller's to see.
                if not reused:
                    raise
            except BaseException:
                self.close()  # a half-used connection would refuse every later request
                raise
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = None
        if response.status >= 300:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            raise PublishError(response.status, message or raw.decode(errors="replace")[:200])
        if not isinstance(decoded, dict):
            raise PublishError(response.status, "reply is not a JSON object")
        return decoded

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> SidecarClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
