"""Webhooks to the app: Pusher's channel_occupied, channel_vacated, member_added, member_removed,
client_event and cache_miss, batched, signed, delayed where a reconnect would cancel them, and
retried with back-off.

`queue.py` (with `holds.py`, `backoff.py`, `payload.py`) is the sans-IO core; `sender.py` is the
asyncio/aiohttp side that posts what the core hands out.
"""

from sidecar.webhooks.queue import WebhookCounters, WebhookQueue
from sidecar.webhooks.sender import Webhooks

__all__ = ["WebhookCounters", "WebhookQueue", "Webhooks"]
