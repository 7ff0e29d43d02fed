"""The control line between the supervisor and one worker: what the broker's pipe does not carry.

The supervisor makes one socketpair per worker as it starts it (sidecar/server/supervisor.py),
beside the broker's pipe (sidecar/engine/broker/pipe.py), and the worker inherits its end
(`sidecar _worker --control-fd N`, sidecar/server/worker.py). A message is a frame of the
pipe's own format (sidecar/engine/broker/frames.py: kind CONTROL, the meta a JSON object whose
"kind" says what it is, no data), split by the pipe's own reader:
- reload (supervisor to worker): "config" is the text of the configuration file the supervisor
  validated (then certificates), or null (certificates only). By a socket, not a signal: a
  signal sent while a worker is still starting would be lost (or end it); a message waits in
  the socket until the worker reads it, which it does once it serves.
- console (supervisor to worker): "on" is true while a debug console is open in the supervisor,
  false once none is (sidecar/observe/console.py): the worker's taps go on or off.
- console_items (worker to supervisor, only while on): "items", what its taps made. They are
  the console's, not the broker's: nothing orders them with publications, and a broker (the
  pipe, Redis next) should not have to carry an observer's concern.
- finished (worker to supervisor, at shutdown): "publications" is how many publications the
  worker has written to its pipe. Nothing after them is a publication the worker answered 200
  for. The line does not share the pipe's order, so the hub counts what it reads from that
  worker's pipe and takes the worker as finished once it has read that many
  (HubBroker.finished).

The peer is a process of the same sidecar; a message that does not parse is a bug, logged and
skipped, never an end of either process.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import orjson

from sidecar.engine.broker.frames import PublicationStream, meta_frame, meta_of

log = logging.getLogger("sidecar.cluster")

# The one kind of frame on a control line.
CONTROL = 0

Message = dict[str, Any]


class ControlLine(PublicationStream):
    """One end of a control line: whole messages in, messages out."""

    def __init__(self, on_message: Callable[[Message], None]) -> None:
        super().__init__(self._frame)
        self._on_message = on_message

    @classmethod
    async def open(cls, sock: socket.socket, on_message: Callable[[Message], None]) -> ControlLine:
        loop = asyncio.get_running_loop()
        _, line = await loop.create_unix_connection(lambda: cls(on_message), sock=sock)
        return line

    def _frame(self, kind: int, head: bytes, data: bytes) -> None:
        self._dispatch(meta_of(head))

    def _dispatch(self, body: bytes) -> None:
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            log.error("unreadable control message; skipped", extra={"bytes": len(body)})
            return
        if not isinstance(message, dict):
            log.error("control message is not an object; skipped")
            return
        try:
            self._on_message(message)
        except (KeyError, TypeError, ValueError):
            log.error("malformed control message; skipped", extra={"kind": message.get("kind")})

    def send(self, message: Message) -> None:
        """Written if the line is still there: a worker that is stopping may still report."""
        self.write(meta_frame(CONTROL, orjson.dumps(message)))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _skip(kind: object, who: str) -> None:
    log.error("unknown control message; skipped", extra={"kind": str(kind), "from": who})


class SupervisorControl:
    """The supervisor's end of one worker's line. What is sent before `open` is kept and
    written as it opens: the supervisor may address a worker from the moment it is made."""

    def __init__(
        self,
        worker_id: int,
        sock: socket.socket,
        on_finished: Callable[[int, int], None],  # (worker_id, publications written)
        on_console_items: Callable[[int, list[Any]], None],  # (worker_id, items)
    ) -> None:
        self.worker_id = worker_id
        self._sock = sock
        self._on_finished = on_finished
        self._on_console_items = on_console_items
        self._line: ControlLine | None = None
        self._early: list[Message] = []

    async def open(self) -> None:
        self._line = await ControlLine.open(self._sock, self._received)
        early, self._early = self._early, []
        for message in early:
            self._line.send(message)

    def _received(self, message: Message) -> None:
        kind = message.get("kind")
        if kind == "finished":
            self._on_finished(self.worker_id, int(message["publications"]))
        elif kind == "console_items":
            self._on_console_items(self.worker_id, list(message["items"]))
        else:
            _skip(kind, f"worker {self.worker_id}")

    def reload(self, config_text: str | None) -> None:
        """Reload: the configuration (the text the supervisor validated) and certificates, or
        with None certificates only."""
        self._send({"kind": "reload", "config": config_text})

    def console(self, on: bool) -> None:
        self._send({"kind": "console", "on": on})

    def _send(self, message: Message) -> None:
        if self._line is not None:
            self._line.send(message)
        else:
            self._early.append(message)

    def close(self) -> None:
        if self._line is not None:
            self._line.close()
        else:
            self._sock.close()


class WorkerControl:
    """A worker's end of its line, open once it `listen`s (it does once it serves): what it
    would send before that is dropped (a worker stopped while it starts says no `finished`;
    the hub waits for it until the shutdown deadline at the latest)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._on_reload: Callable[[str | None], None] = lambda text: None
        self._on_console: Callable[[bool], None] | None = None
        self._line: ControlLine | None = None

    async def listen(
        self,
        on_reload: Callable[[str | None], None],
        on_console: Callable[[bool], None] | None = None,  # None: no console (no admin)
    ) -> None:
        """From here on messages reach `on_reload` and `on_console`, those the supervisor sent
        meanwhile (a reload while this worker started) first."""
        self._on_reload, self._on_console = on_reload, on_console
        self._line = await ControlLine.open(self._sock, self._received)

    def _received(self, message: Message) -> None:
        kind = message.get("kind")
        if kind == "reload":
            config = message.get("config")
            self._on_reload(config if isinstance(config, str) else None)
        elif kind == "console":
            if self._on_console is not None:
                self._on_console(bool(message["on"]))
        else:
            _skip(kind, "supervisor")

    def finished(self, publications: int) -> None:
        """No more publications answered 200 after the `publications` written to the pipe."""
        self._send({"kind": "finished", "publications": publications})

    def console_items(self, items: list[Any]) -> None:
        """Items for the supervisor's debug console."""
        self._send({"kind": "console_items", "items": items})

    def _send(self, message: Message) -> None:
        if self._line is not None:
            self._line.send(message)

    def close(self) -> None:
        if self._line is not None:
            self._line.close()
        else:
            self._sock.close()
