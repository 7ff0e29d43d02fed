"""sidecar.observe.logging: JSON lines or text, fields from `extra=`."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from sidecar.observe.logging import JsonFormatter, TextFormatter, setup


def record(
    msg: str = "connection closed",
    level: int = logging.INFO,
    extra: dict | None = None,
    exc_info: bool = False,
) -> logging.LogRecord:
    logger = logging.getLogger("sidecar.test")
    info = None
    if exc_info:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logger.makeRecord(logger.name, level, "file.py", 1, msg, (), info, extra=extra)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    access = logging.getLogger("aiohttp.access")
    saved = (root.handlers[:], root.level, access.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    access.setLevel(saved[2])


# JsonFormatter ------------------------------------------------------------------------------


def test_json_has_the_standard_keys_and_the_extra_fields() -> None:
    line = JsonFormatter().format(record(extra={"socket_id": "1.2", "close_code": 4201}))
    entry = json.loads(line)
    assert entry["level"] == "info"
    assert entry["logger"] == "sidecar.test"
    assert entry["msg"] == "connection closed"
    assert isinstance(entry["ts"], float)
    assert entry["socket_id"] == "1.2"
    assert entry["close_code"] == 4201


def test_json_leaves_out_the_logrecord_internals() -> None:
    entry = json.loads(JsonFormatter().format(record()))
    assert set(entry) == {"ts", "level", "logger", "msg"}


def test_json_formats_the_message_arguments() -> None:
    logger = logging.getLogger("sidecar.test")
    rec = logger.makeRecord(logger.name, logging.WARNING, "f.py", 1, "%d clients", (3,), None)
    entry = json.loads(JsonFormatter().format(rec))
    assert entry["msg"] == "3 clients"
    assert entry["level"] == "warning"


def test_json_is_one_line_even_with_a_traceback_and_newlines() -> None:
    line = JsonFormatter().format(record("two\nlines", exc_info=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "two\nlines"
    assert "ValueError: boom" in entry["exc"]


# What Python's str.splitlines takes for a line's end; a JSON encoder escapes only the first
# seven (the C0 controls), and JavaScript ends a line at U+2028 and U+2029 too.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def test_json_is_one_line_whatever_line_breaks_a_client_sent() -> None:
    # A client's request path or channel name reaches a log line's fields.
    path = f"/apps/1/events{LINE_BREAKS}" + '{"level":"error","msg":"forged"}'
    line = JsonFormatter().format(record(f"refused{LINE_BREAKS}x", extra={"path": path}))
    assert line.splitlines() == [line]
    assert line.isascii()
    entry = json.loads(line)
    assert entry["path"] == path
    assert entry["msg"] == f"refused{LINE_BREAKS}x"


def test_json_keeps_other_non_ascii_as_it_is() -> None:
    line = JsonFormatter().format(record(extra={"channel": "café-ý-☃"}))
    assert "café-ý-☃" in line
    assert json.loads(line)["channel"] == "café-ý-☃"


def test_json_turns_unserializable_fields_into_strings() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    entry = json.loads(JsonFormatter().format(record(extra={"what": Thing()})))
    assert entry["what"] == "a thing"


# TextFormatter ------------------------------------------------------------------------------


def test_text_has_level_message_and_fields() -> None:
    line = TextFormatter().format(record(extra={"socket_id": "1.2", "close_code": 4201}))
    assert " info " in line
    assert "connection closed" in line
    assert line.endswith("socket_id=1.2 close_code=4201")
    assert "\n" not in line


def test_text_escapes_what_could_break_a_line_or_drive_the_terminal() -> None:
    line = TextFormatter().format(
        record(f"refused{LINE_BREAKS}", extra={"path": "/a\x1b[31m\x00é☃"})
    )
    assert line.splitlines() == [line]
    assert "\x1b" not in line and "\x00" not in line
    assert line.endswith("path=/a\\x1b[31m\\x00é☃")
    assert "refused\\n\\r\\x0b" in line


def test_text_without_fields_ends_with_the_message() -> None:
    assert TextFormatter().format(record("ready")).endswith("ready")


def test_text_appends_the_traceback() -> None:
    text = TextFormatter().format(record(exc_info=True))
    first, rest = text.split("\n", 1)
    assert "connection closed" in first
    assert "ValueError: boom" in rest


# setup --------------------------------------------------------------------------------------


def test_setup_installs_one_json_handler(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup("info", json_lines=True)
    setup("info", json_lines=True)  # twice: still one handler
    root = logging.getLogger()
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, JsonFormatter)
    assert root.level == logging.INFO
    assert logging.getLogger("aiohttp.access").level == logging.WARNING
    logging.getLogger("sidecar.x").info("one", extra={"n": 1})
    logging.getLogger("sidecar.x").info("two", extra={"n": 2})
    logging.getLogger("sidecar.x").debug("hidden")
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["msg"] for line in lines] == ["one", "two"]
    assert [json.loads(line)["n"] for line in lines] == [1, 2]


def test_setup_text_mode_and_level(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    setup("warning", json_lines=False)
    root = logging.getLogger()
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, TextFormatter)
    assert root.level == logging.WARNING
    logging.getLogger("sidecar.x").info("quiet")
    logging.getLogger("sidecar.x").warning("loud", extra={"k": "v"})
    err = capsys.readouterr().err
    assert "quiet" not in err
    assert "loud  k=v" in err


def test_setup_picks_text_on_a_terminal_and_json_otherwise(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Tty())
    setup("info")
    assert isinstance(logging.getLogger().handlers[0].formatter, TextFormatter)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    setup("info")
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
