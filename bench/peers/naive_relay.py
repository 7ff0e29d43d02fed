"""The obvious first version of a Pusher relay, kept as a baseline for the benchmark.

Subscribers in a list per channel; a publish walks the list with `await ws.send_str(...)`,
encoding per subscriber and answering the publisher only after the last send. Plain asyncio,
no uvloop. Speaks just enough of the Pusher protocol for the benchmark client.

    python bench/peers/naive_relay.py --port 18700 --socket /tmp/naive.sock [--cert C --key K]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
from collections import defaultdict

from aiohttp import WSMsgType, web

channels: dict[str, list[web.WebSocketResponse]] = defaultdict(list)
socket_ids = iter(range(1, 10**9))


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    socket_id = f"1.{next(socket_ids)}"
    data = json.dumps({"socket_id": socket_id, "activity_timeout": 120})
    await ws.send_str(json.dumps({"event": "pusher:connection_established", "data": data}))
    mine: list[str] = []
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame.get("event") == "pusher:subscribe":
                channel = frame["data"]["channel"]
                channels[channel].append(ws)
                mine.append(channel)
                reply = {
                    "event": "pusher_internal:subscription_succeeded",
                    "channel": channel,
                    "data": "{}",
                }
                await ws.send_str(json.dumps(reply))
            elif frame.get("event") == "pusher:ping":
                await ws.send_str(json.dumps({"event": "pusher:pong", "data": "{}"}))
    finally:
        for channel in mine:
            channels[channel].remove(ws)
    return ws


async def publish(request: web.Request) -> web.Response:
    body = await request.json()
    names = body.get("channels") or [body["channel"]]
    for name in names:
        for ws in list(channels.get(name, ())):
            message = {"event": body["name"], "channel": name, "data": body["data"]}
            with contextlib.suppress(ConnectionError):
                await ws.send_str(json.dumps(message))
    return web.json_response({})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/app/{key}", websocket)
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    publish_app = web.Application(client_max_size=64 * 1024 * 1024)
    publish_app.router.add_post("/apps/{app_id}/events", publish)

    async def unix_site(_: web.Application) -> None:
        runner = web.AppRunner(publish_app)
        await runner.setup()
        await web.UnixSite(runner, args.socket).start()

    app.on_startup.append(unix_site)
    web.run_app(app, host=args.host, port=args.port, ssl_context=context, print=None)


if __name__ == "__main__":
    main()
