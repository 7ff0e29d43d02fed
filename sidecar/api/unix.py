"""The Unix socket the app publishes on: claimed safely, trusted by its file permissions."""

from __future__ import annotations

import contextlib
import os
import socket
import stat


class SocketInUse(RuntimeError):
    pass


def claim_socket_path(path: str) -> None:
    """Make `path` free for a new listener, or refuse.

    A socket a live process answers on is refused (another sidecar is running there); a socket
    file nobody answers on is what a crash leaves behind, and is removed. Anything else at the
    path is not ours to delete.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: left by a process that is gone
        return
    except OSError as exc:
        raise SocketInUse(f"cannot probe {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise SocketInUse(f"{path} is in use by a running sidecar; stop it or set publish.socket")
