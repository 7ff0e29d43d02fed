"""sidecar.engine.channel_registry: which connections are subscribed to which channel."""

from __future__ import annotations

from typing import Any

from sidecar.engine.channel_registry import ChannelRegistry


class Conn:
    """Any hashable object stands for a connection here."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Conn({self.name})"


def conns(*names: str) -> list[Any]:
    return [Conn(n) for n in names]


def test_empty_registry() -> None:
    registry = ChannelRegistry()
    assert len(registry) == 0
    assert list(registry) == []
    assert registry.count("news") == 0
    assert registry.subscribers("news") is None


def test_first_subscriber_occupies_the_channel_and_later_ones_do_not() -> None:
    registry = ChannelRegistry()
    a, b = conns("a", "b")
    assert registry.subscribe("news", a) is True
    assert registry.subscribe("news", b) is False
    assert registry.count("news") == 2
    assert list(registry.subscribers("news") or {}) == [a, b]  # insertion order


def test_double_subscribe_is_one_subscription() -> None:
    registry = ChannelRegistry()
    (a,) = conns("a")
    assert registry.subscribe("news", a) is True
    assert registry.subscribe("news", a) is False
    assert registry.count("news") == 1
    # One unsubscribe is enough to leave.
    assert registry.unsubscribe("news", a) is True
    assert registry.count("news") == 0


def test_last_subscriber_leaving_vacates_the_channel() -> None:
    registry = ChannelRegistry()
    a, b = conns("a", "b")
    registry.subscribe("news", a)
    registry.subscribe("news", b)
    assert registry.unsubscribe("news", a) is False
    assert registry.count("news") == 1
    assert registry.unsubscribe("news", b) is True
    assert registry.count("news") == 0
    assert registry.subscribers("news") is None
    assert "news" not in list(registry)
    assert len(registry) == 0


def test_unsubscribe_of_a_non_member_changes_nothing() -> None:
    registry = ChannelRegistry()
    a, stranger = conns("a", "stranger")
    registry.subscribe("news", a)
    assert registry.unsubscribe("news", stranger) is False
    assert registry.count("news") == 1
    assert list(registry.subscribers("news") or {}) == [a]


def test_unsubscribe_from_an_unknown_channel_is_not_a_vacate() -> None:
    registry = ChannelRegistry()
    (a,) = conns("a")
    assert registry.unsubscribe("nowhere", a) is False
    assert len(registry) == 0


def test_a_vacated_channel_is_occupied_again_by_the_next_subscriber() -> None:
    registry = ChannelRegistry()
    a, b = conns("a", "b")
    registry.subscribe("news", a)
    registry.unsubscribe("news", a)
    assert registry.subscribe("news", b) is True


def test_channels_are_independent_and_iterated_in_order_of_occupation() -> None:
    registry = ChannelRegistry()
    a, b = conns("a", "b")
    registry.subscribe("sports", a)
    registry.subscribe("news", a)
    registry.subscribe("news", b)
    registry.subscribe("weather", b)
    assert list(registry) == ["sports", "news", "weather"]
    assert len(registry) == 3
    counts = {name: registry.count(name) for name in ("sports", "news", "weather")}
    assert counts == {"sports": 1, "news": 2, "weather": 1}
    registry.unsubscribe("sports", a)
    assert list(registry) == ["news", "weather"]
    assert registry.count("news") == 2
