"""Reloading a running sidecar: rewrite its configuration file, send it SIGHUP."""

from __future__ import annotations

import os
import signal
from typing import Any

import yaml

from tests.support.process import SidecarProcess


def write_config(sidecar: SidecarProcess, **changes: Any) -> None:
    """The file the process was started with, with `changes` (the process's dict unchanged)."""
    sidecar.config_path.write_text(yaml.safe_dump({**sidecar.config, **changes}))


def sighup(sidecar: SidecarProcess) -> None:
    assert sidecar.proc is not None
    os.kill(sidecar.proc.pid, signal.SIGHUP)
