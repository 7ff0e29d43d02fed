"""Three real nodes on one real redis-server (issue 11, items 2 and 3): a publish made on any
node reaches every node's subscribers in its publisher's order; counts, presence, cache, sign-in
users and terminate_connections are the cluster's; cluster webhooks are sent once.

Node 1 runs two workers; pusher-js clients are placed on the nodes each test names, and the
queries are asked of every node, on its Unix socket and on its signed API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.redis_cluster import RedisCluster, cluster

pytestmark = [pytest.mark.e2e, pytest.mark.node]
__all__ = ["cluster"]  # the fixture each test takes


async def on_both_workers(cluster: RedisCluster, prefix: str, node: int = 1) -> list[str]:
    """pusher-js clients on `node` until its two workers hold one each (socket_id prefixes)."""
    seen: dict[str, str] = {}
    for n in range(30):
        name = f"{prefix}{n}"
        socket_id = await cluster.clients.connect(name, node)
        worker = socket_id.split(".")[0]
        if worker in seen:
            cluster.clients.disconnect(name)
            continue
        seen[worker] = name
        if len(seen) == 2:
            return list(seen.values())
    raise AssertionError("node 1's connections never reached both of its workers")


async def test_a_publish_on_any_node_reaches_every_node_in_the_publishers_order(
    cluster: RedisCluster,
) -> None:
    clients = cluster.clients
    channel = "private-orders"
    names = ["on0", *await on_both_workers(cluster, "on1-"), "on2"]
    await clients.connect("on0", 0)
    await clients.connect("on2", 2)
    for name in names:
        await clients.subscribe(name, channel)
    count = 30

    def by_socket() -> None:
        with cluster.nodes[0].local() as local:
            for i in range(count):
                local.trigger(channel, "from-socket", {"i": i})

    def by_signed_api() -> None:
        api = cluster.nodes[1].signed()
        for i in range(count):
            api.trigger(channel, "from-api", {"i": i})

    async def by_client() -> None:
        for i in range(count):
            clients.send("on2", "trigger", channel=channel, event="client-seq", data={"i": i})
            await asyncio.sleep(0.02)  # under client_events_per_second

    await asyncio.gather(
        asyncio.to_thread(by_socket), asyncio.to_thread(by_signed_api), by_client()
    )
    for name in names:
        expected = 3 * count if name != "on2" else 2 * count  # no echo of one's own client event
        await clients.expect(name, "event", count=expected, channel=channel)
        received = clients.reports(name, "event", channel=channel)
        for event in ("from-socket", "from-api", "client-seq"):
            order = [r["data"]["i"] for r in received if r["event"] == event]
            if event == "client-seq" and name == "on2":
                assert order == [], "a client event came back to its sender"
            else:
                assert order == list(range(count)), (name, event, order)


async def test_an_event_published_right_after_subscription_succeeded_reaches_another_node(
    cluster: RedisCluster,
) -> None:
    """The node answers subscription_succeeded only once its Redis subscription is confirmed:
    an event published on another node the moment the client has it is never missed."""
    with cluster.nodes[0].local() as local:
        for node in (1, 2):
            sock = await cluster.socket(node)
            for k in range(8):
                for kind in ("fresh", "private-fresh", "presence-fresh"):
                    channel = f"{kind}-{node}-{k}"
                    if kind.startswith("presence-"):
                        await sock.join(channel, f"user-{k}")
                    else:
                        await sock.subscribe(channel)
                    local.trigger(channel, "first", {"k": k})
                    try:
                        frame = await sock.next_event("first", timeout=5)
                    except TimeoutError:
                        missed = f"{channel} on node {node} missed its first event"
                        raise AssertionError(missed) from None
                    assert frame["channel"] == channel


async def test_a_node_subscribes_in_redis_only_while_it_has_subscribers(
    cluster: RedisCluster,
) -> None:
    sock = await cluster.socket(1)
    await sock.subscribe("only-on-one")
    await cluster.eventually(lambda: redis_subscribers(cluster, "only-on-one") == [1])
    await sock.send("pusher:unsubscribe", {"channel": "only-on-one"})
    await cluster.eventually(lambda: redis_subscribers(cluster, "only-on-one") == [])


def redis_subscribers(cluster: RedisCluster, channel: str) -> list[int]:
    """Subscriber counts of the Redis pub/sub channels whose name holds `channel`."""
    names = resp_list(cluster.redis.command("PUBSUB", "CHANNELS", f"*{channel}*"))
    if not names:
        return []
    counts = resp_list(cluster.redis.command("PUBSUB", "NUMSUB", *names))
    return [int(n) for n in counts[1::2]]


def resp_list(raw: bytes) -> list[str]:
    """The flat items of a RESP array of bulk strings and integers (enough for PUBSUB)."""
    lines = raw.decode().split("\r\n")
    assert lines[0].startswith("*"), raw
    return [line.lstrip(":") for line in lines[1:] if line and not line.startswith("$")]


async def test_queries_on_every_node_answer_for_the_cluster(cluster: RedisCluster) -> None:
    clients = cluster.clients
    placed = [("ann0", 0, "ann"), ("bob", 1, "bob"), ("carl", 2, "carl"), ("ann2", 2, "ann")]
    for name, node, user in placed:
        await clients.connect(name, node, user)
        await clients.subscribe(name, "presence-q")
    for name in ("ann0", "bob", "carl"):
        await clients.subscribe(name, "news-q")

    def every_node_says(users: list[str], subscriptions: int, news: int) -> bool:
        for node in cluster.nodes:
            with node.local() as local:
                channels = local.channels(info=["subscription_count"])["channels"]
                presence = local.channel("presence-q", info=["user_count", "subscription_count"])
                listed = sorted(local.users("presence-q"))
            api = node.signed()
            signed_users = sorted(u["id"] for u in api.users_info("presence-q")["users"])
            signed_counts = api.channels_info("presence-", ["user_count"])["channels"]
            signed_news = api.channel_info("news-q", ["subscription_count"])
            if (channels, presence, listed, signed_users, signed_counts, signed_news) != (
                {
                    "presence-q": {"subscription_count": subscriptions},
                    "news-q": {"subscription_count": news},
                },
                {"occupied": True, "user_count": len(users), "subscription_count": subscriptions},
                users,
                users,
                {"presence-q": {"user_count": len(users)}},
                {"occupied": True, "subscription_count": news},
            ):
                return False
        return True

    await cluster.eventually(lambda: every_node_says(["ann", "bob", "carl"], 4, 3), timeout=10)
    clients.disconnect("carl")
    await cluster.eventually(lambda: every_node_says(["ann", "bob"], 3, 2), timeout=10)


async def test_a_cache_channels_last_event_is_the_clusters(cluster: RedisCluster) -> None:
    clients = cluster.clients
    cluster.nodes[0].signed().trigger("cache-prices", "price", {"v": 3})
    with cluster.nodes[1].local() as local:
        local.trigger("cache-prices", "price", {"v": 4})
    for node in (0, 1, 2):
        name = f"late{node}"
        await clients.connect(name, node)
        await clients.subscribe(name, "cache-prices")
        (cached,) = await clients.expect(name, "event", channel="cache-prices")
        assert (cached["event"], cached["data"]) == ("price", {"v": 4})


async def test_presence_is_one_member_per_user_across_nodes_with_a_cluster_wide_limit(
    cluster: RedisCluster,
) -> None:
    """limits.max_presence_members is 3 on every node: the fourth user anywhere is refused."""
    clients, channel, hooks = cluster.clients, "presence-room", cluster.hooks
    await clients.connect("ann0", 0, "ann")
    first = await clients.subscribe("ann0", channel)
    assert first["members"]["ids"] == ["ann"]
    await clients.connect("bob1", 1, "bob")
    joined = await clients.subscribe("bob1", channel)
    assert joined["members"]["ids"] == ["ann", "bob"]
    (added,) = await clients.expect("ann0", "member_added", channel=channel)
    assert (added["user_id"], added["info"]) == ("bob", {"name": "Bob"})

    # ann again, on another node: the same member, no member_added for anyone.
    await clients.connect("ann2", 2, "ann")
    again = await clients.subscribe("ann2", channel)
    assert (again["members"]["ids"], again["members"]["count"]) == (["ann", "bob"], 2)
    await clients.connect("carl2", 2, "carl")
    await clients.subscribe("carl2", channel)
    for name in ("ann0", "bob1", "ann2"):
        await clients.expect(name, "member_added", channel=channel, user_id="carl")
    await asyncio.sleep(0.5)
    assert [r["user_id"] for r in clients.reports("bob1", "member_added")] == ["carl"]

    # The limit is the cluster's: a fourth user is refused on every node.
    for node in (0, 1):
        name = f"dora{node}"
        await clients.connect(name, node, "dora")
        refused = await clients.subscribe(name, channel, "subscription_error")
        assert refused["status"]["type"] == "LimitReached", refused

    # One of ann's two sockets leaves: ann is still there. The other leaves: ann is gone.
    clients.disconnect("ann0")
    await asyncio.sleep(1.0)
    assert clients.reports("bob1", "member_removed") == []
    clients.disconnect("ann2")
    for name in ("bob1", "carl2"):
        await clients.expect(name, "member_removed", channel=channel, user_id="ann")
    with cluster.nodes[1].local() as local:
        await cluster.eventually(lambda: sorted(local.users(channel)) == ["bob", "carl"])
    await clients.connect("dora2", 2, "dora")
    joined = await clients.subscribe("dora2", channel)  # room again
    assert joined["members"]["ids"] == ["bob", "carl", "dora"]

    # The app heard of each member once, whatever the number of nodes and sockets.
    await hooks.wait_for("member_removed", channel, count=1)
    await asyncio.sleep(1.5)  # past vacate_delay: a second webhook would be here by now
    assert sorted(e["user_id"] for e in hooks.named("member_added", channel)) == [
        "ann",
        "bob",
        "carl",
        "dora",
    ]
    assert [e["user_id"] for e in hooks.named("member_removed", channel)] == ["ann"]


async def test_terminate_connections_and_events_to_a_user_reach_every_node(
    cluster: RedisCluster,
) -> None:
    clients = cluster.clients
    for node in (0, 1, 2):
        await clients.connect(f"zed{node}", node, "zed")
        clients.send(f"zed{node}", "signin")
        await clients.expect(f"zed{node}", "signin_success")
    await clients.connect("bob", 1, "bob")
    clients.send("bob", "signin")
    await clients.expect("bob", "signin_success")

    # An event to the user, sent on node 0, reaches zed's sockets on every node (pusher-js
    # subscribes to the user's channel a moment after sign-in: try until it is there).
    api = cluster.nodes[0].signed()
    for _ in range(50):
        api.send_to_user("zed", "notice", {"text": "hi"})
        await asyncio.sleep(0.1)
        if all(clients.reports(f"zed{n}", "user_event") for n in (0, 1, 2)):
            break
    for node in (0, 1, 2):
        (notice, *_) = clients.reports(f"zed{node}", "user_event")
        assert (notice["event"], notice["data"]) == ("notice", {"text": "hi"})

    with cluster.nodes[2].local() as local:
        assert local.terminate_user_connections("zed") == {}
    for node in (0, 1, 2):
        await clients.expect(f"zed{node}", "error", code=4009)
    await asyncio.sleep(0.5)
    assert clients.reports("bob", "error") == []
    assert clients.reconnects() == {f"zed{n}": 1 for n in (0, 1, 2)}  # closed, not back


async def test_cluster_webhooks_are_sent_once(cluster: RedisCluster) -> None:
    clients, hooks = cluster.clients, cluster.hooks
    names = [(f"c{node}", node) for node in (0, 1, 2)]
    for name, node in names:
        await clients.connect(name, node)
    # Three first subscribes on three nodes at once: one channel_occupied.
    for name, _ in names:
        clients.send(name, "subscribe", channel="private-room")
    for name, _ in names:
        await clients.expect(name, "subscribed", channel="private-room")
    assert len(await hooks.wait_for("channel_occupied", "private-room")) == 1

    clients.send("c1", "trigger", channel="private-room", event="client-hi", data={"n": 1})
    [client_event] = await hooks.wait_for("client_event", "private-room")
    assert client_event["event"] == "client-hi"
    await clients.subscribe("c1", "cache-empty")
    assert len(await hooks.wait_for("cache_miss", "cache-empty")) == 1

    for name, _ in names:
        clients.disconnect(name)
    assert len(await hooks.wait_for("channel_vacated", "private-room")) == 1
    await asyncio.sleep(2.0)  # past vacate_delay and a batch: nothing more comes
    counted: dict[str, Any] = {
        kind: len(hooks.named(kind, channel))
        for kind, channel in (
            ("channel_occupied", "private-room"),
            ("channel_vacated", "private-room"),
            ("client_event", "private-room"),
            ("cache_miss", "cache-empty"),
        )
    }
    assert counted == {
        "channel_occupied": 1,
        "channel_vacated": 1,
        "client_event": 1,
        "cache_miss": 1,
    }
    assert hooks.refused_signatures == 0
