"""`sidecar status`: the admin listener's /status, printed as a short table.

`format_status` is a pure function of the JSON, so the table is tested without a server.
"""

from __future__ import annotations

import datetime
import http.client
import json
from typing import Any

TIMEOUT = 5.0


class StatusError(Exception):
    """The admin listener could not be asked, or refused: the message says why."""


def fetch_status(host: str, port: int, token: str | None) -> dict[str, Any]:
    # http.client, not urllib: a proxy from the environment must never see this request.
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", "/status", headers=headers)
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        address = where(host, port)
        raise StatusError(f"cannot reach the admin listener at {address}: {exc}") from None
    finally:
        conn.close()
    if response.status == 401:
        raise StatusError("the admin listener wants a token: --token or admin.token in --config")
    if response.status != 200:
        raise StatusError(f"the admin listener answered {response.status}: {body[:200]!r}")
    try:
        return json.loads(body)
    except ValueError:
        raise StatusError("the admin listener's answer is not JSON") from None


def where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def count(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


def rate(n: float | None) -> str:
    return "-" if n is None else f"{n:,.1f}/s"


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


def lasting(seconds: float) -> str:
    days = seconds / 86400
    if abs(days) >= 2:
        return f"{days:,.0f} days"
    hours = seconds / 3600
    return f"{hours:,.1f} hours"


def format_status(data: dict[str, Any], address: str) -> str:
    ready = data.get("ready")
    head = f"sidecar at {address}: " + ("ready" if ready else "NOT READY")
    if not ready:
        failing = [name for name, check in data.get("checks", {}).items() if not check.get("ok")]
        head += f" ({', '.join(failing)})"
    workers = data.get("workers", {})
    totals = data.get("totals", {})
    channels: dict[str, int] = data.get("channels", {})
    subscriptions: dict[str, int] = data.get("subscriptions", {})
    kinds = ", ".join(f"{k} {count(n)}" for k, n in channels.items() if n)
    latency = data.get("latency_ms", {})
    rates = data.get("rates", {})
    rows = [
        ("workers", f"{workers.get('alive', '-')}/{workers.get('configured', '-')} alive"),
        (
            "connections",
            f"{count(data.get('connections'))} (opened {count(totals.get('connections_opened'))}"
            f", closed {count(totals.get('connections_closed'))})",
        ),
        ("channels", f"{count(sum(channels.values()))}" + (f": {kinds}" if kinds else "")),
        ("subscriptions", count(sum(subscriptions.values()))),
        (
            "messages in",
            f"{rate(rates.get('published_per_s'))} (published {count(totals.get('published'))})",
        ),
        (
            "messages out",
            f"{rate(rates.get('delivered_per_s'))} (delivered {count(totals.get('delivered'))})",
        ),
        ("latency", latency_text(latency)),
        (
            "send queues",
            f"{size(data.get('send_queue_bytes', 0))} "
            f"(slow clients closed {count(totals.get('slow_client_closes'))})",
        ),
        ("certificate", certificate_text(data.get("certificate"))),
        *cluster_rows(data.get("cluster")),
    ]
    width = max(len(name) for name, _ in rows) + 2
    return "\n".join([head, *(f"  {name:<{width}}{value}" for name, value in rows)])


def cluster_rows(cluster: dict[str, Any] | None) -> list[tuple[str, str]]:
    """With broker kind redis: this node and the live ones, one line each."""
    if not cluster:
        return []
    nodes: list[dict[str, Any]] = cluster.get("nodes") or []
    rows = [
        ("node", f"{cluster.get('node_id') or '-'} (number {cluster.get('node_num', '-')})"),
        ("cluster", f"{len(nodes)} live node{'' if len(nodes) == 1 else 's'}"),
    ]
    for node in nodes:
        me = " (this one)" if node.get("node_num") == cluster.get("node_num") else ""
        rows.append(
            (
                "",
                f"{node.get('node_id')} on {node.get('host')}, pid {node.get('pid')}, "
                f"{node.get('workers')} workers{me}",
            )
        )
    return rows


def latency_text(latency: dict[str, float | None]) -> str:
    if latency.get("p50") is None:
        return "- (no delivery timed in the last second)"
    return f"p50 {latency['p50']:.2f} ms, p99 {latency.get('p99') or 0:.2f} ms"


def certificate_text(cert: dict[str, Any] | None) -> str:
    if cert is None:
        return "none (tls off)"
    if cert.get("not_after") is None:
        return f"UNREADABLE {cert.get('path')}: {cert.get('error', '')}"
    expires = datetime.datetime.fromisoformat(cert["not_after"]).date().isoformat()
    left = cert.get("expires_in_s") or 0
    state = "valid" if cert.get("valid") else "EXPIRED"
    return f"{state}, expires {expires} ({lasting(left)}), {cert.get('path')}"
