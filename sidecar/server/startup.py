"""What a start claims on the machine, each refusal one line naming the key to fix.

`sidecar/server/prepare.py: prepare()` claims the ports, the publish socket's directory and the
files of the certificate and the app before any worker or loop starts; anything in the way is a
`StartError` (`sidecar: cannot start: KEY: ...`, exit status 1), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from sidecar.config.model import Config
from sidecar.config.values import ConfigError
from sidecar.tls.certinfo import CertificateError

# Mode of a publish socket directory made at start: the owner and its group (the app's user
# is put in the socket's group, README), nobody else.
SOCKET_DIRECTORY_MODE = 0o750
# sockaddr_un holds 108 bytes, the last a NUL (Linux).
MAX_SOCKET_PATH = 107


class StartError(RuntimeError):
    """Something on the machine stops the start: the message names the key and the path."""


@contextlib.contextmanager
def blame(key: str) -> Iterator[None]:
    """An OSError or an unusable certificate inside becomes a StartError naming `key`."""
    try:
        yield
    except CertificateError as exc:
        raise StartError(f"{key}: {exc}") from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise StartError(f"{key}: {where}{exc.strerror or exc}") from None


def claim_port(host: str, port: int, key: str) -> None:
    """Refuse a port that another process listens on, before binding it with SO_REUSEPORT.

    Linux lets any socket of the same user that sets SO_REUSEPORT join a port's listeners and
    take a share of its connections, so the workers' own SO_REUSEPORT binds would succeed
    beside a running sidecar. A bind without SO_REUSEPORT fails (EADDRINUSE) while anyone
    listens there, SO_REUSEPORT or not; SO_REUSEADDR keeps connections left in TIME_WAIT by a
    previous run from counting. The probe is closed at once and the workers' sockets bound
    right after: from then on, a second sidecar's probe fails on them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as exc:
            raise port_taken(key, host, port, exc) from None


# Two sidecars started at the same instant could both pass the probe before either has bound
# its workers' sockets; the probe and the binds are made under a lock per port, so that the
# second one's probe sees the first one's sockets. The lock is a Linux abstract Unix socket:
# nothing left on disk, released when its process ends, per network namespace as ports are.
# Held for a few milliseconds; a start waits this long (seconds) for another one's.
PORT_CLAIM_WAIT = 5.0


@contextlib.contextmanager
def port_claim(port: int, key: str, wait: float = PORT_CLAIM_WAIT) -> Iterator[None]:
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                lock.bind(f"\0sidecar-port-claim-{port}")
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise StartError(
                        f"{key}: another sidecar is starting on port {port}; try again"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        lock.close()


def port_taken(key: str, host: str, port: int, exc: OSError) -> StartError:
    why = exc.strerror or str(exc)
    hint = ""
    if exc.errno == errno.EADDRINUSE:
        hint = f" (another process listens there: stop it or set {key})"
    return StartError(f"{key}: cannot listen on {host}:{port}: {why}{hint}")


def publish_directory(socket_path: str) -> tuple[Path, bool]:
    """The publish socket's directory, and whether it is missing but can be made here.

    ConfigError (naming publish.socket) when the socket cannot be made there by this user:
    what `check-config` reports before anything starts, and `run` refuses.
    """
    if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            "publish.socket",
            f"is {len(os.fsencode(socket_path))} bytes long; a Unix socket's path may have "
            f"{MAX_SOCKET_PATH} at most: choose a shorter one",
        )
    parent = Path(socket_path).parent
    fix = "create it or set publish.socket"
    if parent.is_dir():
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(
                "publish.socket", f"this user cannot create a socket in {parent}: {fix}"
            )
        return parent, False
    if parent.exists():
        raise ConfigError("publish.socket", f"{parent} is not a directory: {fix}")
    above = parent.parent
    if not above.is_dir():
        raise ConfigError(
            "publish.socket", f"directory {parent} does not exist, nor does {above}: {fix}"
        )
    if not os.access(above, os.W_OK | os.X_OK):
        raise ConfigError(
            "publish.socket",
            f"directory {parent} does not exist and this user cannot make it in {above}: "
            f"create it (owned by the user running sidecar, mode 0750) or set publish.socket",
        )
    return parent, True


def usable_publish_directory(socket_path: str) -> tuple[Path, bool]:
    """publish_directory(), refusing with a StartError."""
    try:
        return publish_directory(socket_path)
    except ConfigError as exc:
        raise StartError(str(exc)) from None


def make_publish_directory(socket_path: str) -> Path | None:
    """Make the socket's directory when only it is missing (0750); the path made, or None.

    StartError when the socket cannot be made there.
    """
    parent, missing = usable_publish_directory(socket_path)
    if not missing:
        return None
    with blame("publish.socket"):
        parent.mkdir(mode=SOCKET_DIRECTORY_MODE)
        os.chmod(parent, SOCKET_DIRECTORY_MODE)  # whatever the umask
    return parent


def directory_can_be_made(path: str | os.PathLike[str], key: str) -> None:
    """ConfigError naming `key` unless `path` is a directory or this user can make it (with
    its parents, as the certificate directory is made)."""
    folder = Path(path)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(key, f"{existing} is not a directory, so {folder} cannot be made there")
    if existing == folder:
        return
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, f"this user cannot make {folder} in {existing}")


def check_paths(config: Config) -> list[str]:
    """What check-config can tell about the machine before anything starts: ConfigError for a
    directory that cannot be used; the notes say what `run` will make."""
    notes = []
    if config.tls.mode in ("self-signed", "acme") or config.apps is None:
        directory_can_be_made(config.tls.dir, "tls.dir")
    parent, missing = publish_directory(config.publish.socket)
    if missing:
        notes.append(f"{parent} will be made (mode 0750) for publish.socket")
    return notes
