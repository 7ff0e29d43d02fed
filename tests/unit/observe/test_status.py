"""sidecar.observe.status: the table `sidecar status` prints, from /status's JSON."""

from __future__ import annotations

from sidecar.observe.status import format_status

STATUS = {
    "ready": True,
    "checks": {"listening": {"ok": True}, "certificate": {"ok": True}, "broker": {"ok": True}},
    "connections": 1234,
    "subscriptions": {"public": 1500, "presence": 20, "private": 0},
    "channels": {"public": 12, "presence": 2, "private": 0},
    "send_queue_bytes": 2048,
    "totals": {
        "published": 99,
        "delivered": 123456,
        "connections_opened": 1300,
        "connections_closed": 66,
        "slow_client_closes": 1,
    },
    "rates": {"published_per_s": 12.0, "delivered_per_s": 14800.5},
    "latency_ms": {"p50": 0.42, "p90": 1.0, "p99": 2.5},
    "certificate": {
        "path": "certs/localhost.crt",
        "not_after": "2027-11-28T11:20:13+00:00",
        "expires_in_s": 40 * 86400,
        "valid": True,
    },
    "workers": {"alive": 2, "configured": 2},
}


def test_the_table() -> None:
    text = format_status(STATUS, "127.0.0.1:9601")
    lines = text.splitlines()
    assert lines[0] == "sidecar at 127.0.0.1:9601: ready"
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "2/2 alive" in rows["workers"]
    assert "1,234 (opened 1,300, closed 66)" in rows["connections"]
    assert "14: public 12, presence 2" in rows["channels"]
    assert "1,520" in rows["subscriptions"]
    assert "12.0/s (published 99)" in text
    assert "14,800.5/s (delivered 123,456)" in text
    assert "p50 0.42 ms, p99 2.50 ms" in rows["latency"]
    assert "2.0 KiB" in rows["send"]
    assert "valid, expires 2027-11-28 (40 days), certs/localhost.crt" in rows["certificate"]


def test_not_ready_names_the_failing_checks_and_tls_off() -> None:
    status = {
        **STATUS,
        "ready": False,
        "checks": {
            "listening": {"ok": False},
            "certificate": {"ok": True},
            "broker": {"ok": False},
        },
        "certificate": None,
        "latency_ms": {"p50": None, "p99": None},
    }
    text = format_status(status, "[::1]:9601")
    assert text.splitlines()[0] == "sidecar at [::1]:9601: NOT READY (listening, broker)"
    assert "none (tls off)" in text
    assert "no delivery timed" in text


def test_an_expired_certificate_says_so() -> None:
    cert = {**STATUS["certificate"], "valid": False, "expires_in_s": -3 * 86400}  # type: ignore[dict-item]
    text = format_status({**STATUS, "certificate": cert}, "x")
    assert "EXPIRED" in text and "-3 days" in text


def test_a_cluster_node_lists_itself_and_the_live_nodes() -> None:
    cluster = {
        "node_id": "web1-100-ab",
        "node_num": 7,
        "nodes": [
            {"node_num": 7, "node_id": "web1-100-ab", "host": "web1", "pid": 100, "workers": 2},
            {"node_num": 9, "node_id": "web2-200-cd", "host": "web2", "pid": 200, "workers": 1},
        ],
    }
    lines = format_status({**STATUS, "cluster": cluster}, "x").splitlines()
    assert "web1-100-ab (number 7)" in next(line for line in lines if "node " in line)
    assert any("2 live nodes" in line for line in lines)
    assert any("web1-100-ab on web1, pid 100, 2 workers (this one)" in line for line in lines)
    assert any("web2-200-cd on web2, pid 200, 1 workers" in line for line in lines)
    assert not any("node" in line for line in format_status(STATUS, "x").splitlines())
