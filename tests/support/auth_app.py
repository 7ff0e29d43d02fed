"""The app's side of private channels and sign-in, as a team would write it for end-to-end tests:
an aiohttp server whose auth endpoints sign with the official `pusher` library.

pusher-js POSTs `socket_id` and `channel_name` (form-encoded) to the channel authorization
endpoint and `socket_id` to the user authentication endpoint. Who the user is comes in the
X-User header the test gives each pusher-js client; X-Mode makes the endpoint misbehave in one
chosen way, to test the relay's refusals:
- forge: sign with a wrong secret;
- no-user-id: presence channel_data without a user_id;
- big-info: presence user_info over 1 KiB.
"""

from __future__ import annotations

import json
from typing import Any

import pusher
from aiohttp import web

from tests.support.process import SidecarProcess, free_port

# For encrypted channels: the library derives each channel's shared secret from it; the relay
# never sees it.
MASTER_KEY = "lCee3rL6+z0L/t9K7sOdldPXw7/JmYqaokUPLjgaDnQ="


class AuthApp:
    def __init__(self, app: dict[str, Any]) -> None:
        self.app = app
        self.signer = self._signer(app["secret"])
        self.forger = self._signer("not-the-secret-at-all")
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    def _signer(self, secret: str) -> pusher.Pusher:
        return pusher.Pusher(
            app_id=self.app["id"],
            key=self.app["key"],
            secret=secret,
            encryption_master_key_base64=MASTER_KEY,
        )

    async def start(self) -> AuthApp:
        app = web.Application()
        app.router.add_post("/pusher/auth", self.channel_auth)
        app.router.add_post("/pusher/user-auth", self.user_auth)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def channel_auth(self, request: web.Request) -> web.Response:
        form = await request.post()
        channel, socket_id = str(form["channel_name"]), str(form["socket_id"])
        user, mode = request.headers.get("X-User", "guest"), request.headers.get("X-Mode")
        signer = self.forger if mode == "forge" else self.signer
        member = None
        if channel.startswith("presence-"):
            member = {"user_id": user, "user_info": {"name": user.title()}}
            if mode == "no-user-id":
                del member["user_id"]
            elif mode == "big-info":
                member["user_info"] = {"bio": "x" * 2000}
        return web.json_response(_jsonable(signer.authenticate(channel, socket_id, member)))

    async def user_auth(self, request: web.Request) -> web.Response:
        form = await request.post()
        user, mode = request.headers.get("X-User", "guest"), request.headers.get("X-Mode")
        signer = self.forger if mode == "forge" else self.signer
        reply = signer.authenticate_user(str(form["socket_id"]), {"id": user, "name": user.title()})
        return web.json_response(reply)

    def options(self, sidecar: SidecarProcess, user: str, mode: str | None = None) -> dict:
        """pusher-js options: the sidecar's host, and this app's endpoints for that user."""
        headers = {"X-User": user, **({"X-Mode": mode} if mode else {})}
        base = f"http://127.0.0.1:{self.port}"
        return {
            **sidecar.pusher_options(),
            "channelAuthorization": {
                "endpoint": f"{base}/pusher/auth",
                "transport": "ajax",
                "headers": headers,
            },
            "userAuthentication": {
                "endpoint": f"{base}/pusher/user-auth",
                "transport": "ajax",
                "headers": headers,
            },
        }


def _jsonable(reply: dict[str, Any]) -> dict[str, Any]:
    # The library returns the encrypted channels' shared secret as bytes.
    return json.loads(json.dumps(reply, default=lambda b: b.decode()))
