"""sidecar.engine.heartbeat: when to ping a quiet client and when to give up on it."""

from __future__ import annotations

from sidecar.engine.heartbeat import Heartbeat, HeartbeatAction
from sidecar.protocol.pusher import CloseCode

T0 = 1000.0


def heartbeat(activity: float = 120, pong: float = 30, idle: float = 0) -> Heartbeat:
    return Heartbeat(T0, activity_timeout=activity, pong_timeout=pong, idle_timeout=idle)


def test_nothing_to_do_before_activity_timeout() -> None:
    hb = heartbeat()
    assert hb.poll(T0) is None
    assert hb.poll(T0 + 119.9) is None


def test_ping_after_activity_timeout() -> None:
    hb = heartbeat()
    assert hb.poll(T0 + 120) is HeartbeatAction.SEND_PING


def test_ping_is_sent_only_once_while_waiting_for_the_pong() -> None:
    hb = heartbeat()
    assert hb.poll(T0 + 120) is HeartbeatAction.SEND_PING
    assert hb.poll(T0 + 121) is None
    assert hb.poll(T0 + 149.9) is None


def test_4201_after_pong_timeout_with_no_activity() -> None:
    hb = heartbeat()
    hb.poll(T0 + 120)
    result = hb.poll(T0 + 150)
    assert result == CloseCode.PONG_NOT_RECEIVED == 4201


def test_pong_timeout_is_counted_from_the_ping_not_from_the_last_activity() -> None:
    hb = heartbeat()
    hb.poll(T0 + 200)  # the sweep came late: the ping goes out at T0 + 200
    assert hb.poll(T0 + 229) is None
    assert hb.poll(T0 + 230) == CloseCode.PONG_NOT_RECEIVED


def test_activity_after_the_ping_cancels_the_close() -> None:
    hb = heartbeat()
    hb.poll(T0 + 120)
    hb.on_activity(T0 + 125)  # the pong (or any frame) arrives
    assert hb.poll(T0 + 150) is None
    assert hb.poll(T0 + 244) is None
    assert hb.poll(T0 + 245) is HeartbeatAction.SEND_PING  # 120 s after the activity


def test_activity_before_the_timeout_postpones_the_ping() -> None:
    hb = heartbeat()
    hb.on_activity(T0 + 100)
    assert hb.poll(T0 + 120) is None
    assert hb.poll(T0 + 219) is None
    assert hb.poll(T0 + 220) is HeartbeatAction.SEND_PING


def test_idle_timeout_closes_a_connection_with_no_subscription() -> None:
    hb = heartbeat(activity=1000, idle=60)
    assert hb.poll(T0 + 59) is None
    result = hb.poll(T0 + 60)
    assert result == CloseCode.CLOSED_FOR_INACTIVITY == 4202


def test_idle_timeout_ignores_a_connection_with_subscriptions() -> None:
    hb = heartbeat(activity=1000, idle=60)
    hb.on_subscriptions_changed(T0 + 10, 1)
    assert hb.poll(T0 + 500) is None


def test_idle_time_counts_from_the_last_unsubscribe() -> None:
    hb = heartbeat(activity=1000, idle=60)
    hb.on_subscriptions_changed(T0 + 10, 2)
    hb.on_subscriptions_changed(T0 + 100, 0)
    assert hb.poll(T0 + 159) is None
    assert hb.poll(T0 + 160) == CloseCode.CLOSED_FOR_INACTIVITY


def test_a_second_zero_count_does_not_restart_the_idle_clock() -> None:
    hb = heartbeat(activity=1000, idle=60)
    hb.on_subscriptions_changed(T0 + 30, 0)
    assert hb.poll(T0 + 60) == CloseCode.CLOSED_FOR_INACTIVITY


def test_activity_does_not_reset_the_idle_clock() -> None:
    hb = heartbeat(activity=1000, idle=60)
    hb.on_activity(T0 + 50)  # pings alone do not keep an unsubscribed socket
    assert hb.poll(T0 + 60) == CloseCode.CLOSED_FOR_INACTIVITY


def test_idle_timeout_zero_disables_the_idle_close() -> None:
    hb = heartbeat(activity=10**9, idle=0)
    assert hb.poll(T0 + 10**6) is None


def test_unanswered_ping_wins_over_idle() -> None:
    hb = heartbeat(activity=10, pong=5, idle=12)
    assert hb.poll(T0 + 10) is HeartbeatAction.SEND_PING
    assert hb.poll(T0 + 15) == CloseCode.PONG_NOT_RECEIVED
