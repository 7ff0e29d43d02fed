"""The Ruby client (clients/ruby) against the real sidecar: what its minitest suite checks
against a fake socket, here with the sidecar's own answers, signatures and restarts.

One long-lived Ruby process holds one Sidecar::Client and takes calls as JSON lines, so its
kept connection lives across the calls as it does in a Puma process.
"""

from __future__ import annotations

import json
import select
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.process import IN_CI, ROOT, SidecarProcess

pytestmark = pytest.mark.e2e

APP = {
    "id": "12",
    "key": "ruby-key",
    "secret": "ruby-secret-0123456789",
    "max_payload_bytes": 10_000,
}
CALLS = r"""
require "json"
require "sidecar/client"
client = Sidecar::Client.new(socket: ARGV[0], app_id: ARGV[1], key: ARGV[2], secret: ARGV[3],
                             timeout: 2)
$stdout.sync = true
$stdin.each_line do |line|
  call = JSON.parse(line)
  kwargs = call.fetch("kwargs", {}).transform_keys(&:to_sym)
  begin
    puts JSON.generate({ ok: client.public_send(call["method"], *call["args"], **kwargs) })
  rescue Sidecar::Error => e
    puts JSON.generate({ error: e.class.name, status: e.status, reason: e.reason,
                         message: e.message })
  end
end
"""


class RubyClient:
    def __init__(self, sidecar: SidecarProcess, app_id: str = APP["id"]) -> None:
        ruby = shutil.which("ruby")
        if ruby is None:
            if IN_CI:
                pytest.fail("CI=true but ruby is not installed (tests/run.sh installs it)")
            pytest.skip("SKIPPED LOUDLY: ruby is not installed: apt-get install ruby")
        lib = str(ROOT / "clients" / "ruby" / "lib")
        self.proc = subprocess.Popen(
            [ruby, "-I", lib, "-e", CALLS, sidecar.socket, app_id, APP["key"], APP["secret"]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"method": method, "args": args, "kwargs": kwargs}))
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        assert ready, f"no answer to {method} within 15 s"
        return json.loads(self.proc.stdout.readline())

    def ok(self, method: str, *args: Any, **kwargs: Any) -> Any:
        answer = self.call(method, *args, **kwargs)
        assert "ok" in answer, answer
        return answer["ok"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sidecar(start_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    return start_sidecar(apps=[APP])


@pytest.fixture
def ruby(sidecar: SidecarProcess) -> Iterator[RubyClient]:
    client = RubyClient(sidecar)
    yield client
    client.close()


async def next_frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    return json.loads(await ws.receive_str(timeout=10))


async def test_its_auth_subscribes_and_its_publishes_and_queries_are_answered(
    sidecar: SidecarProcess, ruby: RubyClient
) -> None:
    ctx = ssl.create_default_context(cafile=str(sidecar.cert))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(sidecar.ws_url(), ssl=ctx)
        socket_id = json.loads((await next_frame(ws))["data"])["socket_id"]
        member = {"user_id": "7", "user_info": {"name": "Ann"}}
        presence = ruby.ok("authenticate", "presence-room", socket_id, member)
        private = ruby.ok("authenticate", "private-room", socket_id, member)
        for channel, auth in (("presence-room", presence), ("private-room", private)):
            await ws.send_json({"event": "pusher:subscribe", "data": {"channel": channel, **auth}})
            frame = await next_frame(ws)
            assert frame["event"] == "pusher_internal:subscription_succeeded", frame

        assert ruby.ok("trigger", ["presence-room", "private-room"], "hello", {"a": 1}) == {}
        frames = [await next_frame(ws), await next_frame(ws)]
        assert {(f["channel"], f["event"], f["data"]) for f in frames} == {
            ("presence-room", "hello", '{"a":1}'),
            ("private-room", "hello", '{"a":1}'),
        }
        assert ruby.ok("channels", filter_by_prefix="presence-", info="user_count") == {
            "channels": {"presence-room": {"user_count": 1}}
        }
        assert ruby.ok("channel_info", "private-room", info="subscription_count") == {
            "occupied": True,
            "subscription_count": 1,
        }
        assert ruby.ok("channel_users", "presence-room") == {"users": [{"id": "7"}]}
        await ws.close()


async def test_refusals_carry_the_status_and_the_sidecar_s_reason(
    sidecar: SidecarProcess, ruby: RubyClient
) -> None:
    too_big = ruby.call("trigger", "news", "big", "x" * 10_001)
    assert (too_big["error"], too_big["status"]) == ("Sidecar::HTTPError", 413)
    assert too_big["reason"] == "data: 10001 bytes, over this app's limit of 10000 bytes"
    bad_name = ruby.call("trigger", "bad channel!", "e", "x")
    assert bad_name["status"] == 400 and bad_name["reason"].startswith("channel")
    not_presence = ruby.call("channel_users", "news")
    assert not_presence["reason"] == "users are only listed for presence channels"
    assert ruby.ok("trigger", "news", "fine", "x") == {}  # the connection is still good

    stranger = RubyClient(sidecar, app_id="99")
    try:
        unknown = stranger.call("trigger", "news", "e", "x")
        assert (unknown["status"], unknown["reason"]) == (404, "no app with id '99'")
    finally:
        stranger.close()


async def test_terminate_user_connections(sidecar: SidecarProcess, ruby: RubyClient) -> None:
    assert ruby.ok("terminate_user_connections", "7") == {}


async def test_a_restart_costs_nothing_and_a_stopped_sidecar_is_named(
    sidecar: SidecarProcess, ruby: RubyClient
) -> None:
    assert ruby.ok("trigger", "news", "before", "1") == {}
    sidecar.stop()
    sidecar.start()
    # The kept connection died with the old process: the client opens a new one, no error.
    assert ruby.ok("trigger", "news", "after", "2") == {}
    sidecar.stop()
    gone = ruby.call("trigger", "news", "stopped", "3")
    assert gone["error"] == "Sidecar::ConnectionError" and gone["status"] is None
    assert sidecar.socket in gone["message"]
