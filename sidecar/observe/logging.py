"""Logs: JSON lines for machines, readable text on a terminal. Fields come from `extra=`.

Nothing here ever formats a payload, a secret or a signature: call sites pass only counts,
codes, ids and reasons.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

# Characters that end a line for some readers (Python's str.splitlines, JavaScript, editors)
# which a JSON encoder may leave raw inside a string: a client's path or name holding one must
# not split a log line in two (or forge a second one). Escaped, the JSON decodes the same.
_JSON_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})
# On a terminal: every control character, each as its escape, so that what a client sent can
# neither start a new line nor move the cursor or change colours.
_TEXT_CONTROLS = str.maketrans(
    {c: repr(chr(c))[1:-1] for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}
)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = orjson.dumps(entry, default=str).decode()
        return line if line.isascii() else line.translate(_JSON_LINE_BREAKS)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname.lower():7} {record.getMessage()}"
        if extra:
            line += f"  {extra}"
        line = line.translate(_TEXT_CONTROLS)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str, json_lines: bool | None = None) -> None:
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would print every publish; our own lines say what matters.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
