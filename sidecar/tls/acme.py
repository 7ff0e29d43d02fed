"""tls.mode acme: get the certificate before the TLS port needs it, renew it in the background.

One process does ACME: the single process, or the supervisor of the workers (it owns the
plain-HTTP listener, where the CA's HTTP-01 requests arrive, and `ChallengeStore` lives in its
memory). The certificate goes to files in `tls.dir/acme/`: the certificate (full chain) and its
key (0600), plus a small record of the directory and names it was ordered for. Whoever serves
TLS loads those files with a `CertificateManager` and reloads them in place when they change,
so a renewal reaches every worker without a dropped connection (`on_new_certificate` lets the
owner nudge them at once instead of at their next file check).

The key is made once and kept across renewals: the certificate file is then the only file that
changes, in one atomic rename, and no reader can ever see a certificate beside the wrong key.
A failed order is logged with the CA's reason and tried again with back-off (`retry_min`
doubling to `retry_max`) while the current certificate, if any, keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from sidecar.config.tls import AcmeConfig, CertFiles, TlsConfig
from sidecar.http_glue import json_error
from sidecar.tls.acme_client import (
    AcmeClient,
    AcmeFailure,
    ChallengeStore,
    atomic_write,
    new_ec_key_pem,
)
from sidecar.tls.certificates import read_pair
from sidecar.tls.certinfo import CertificateError, CertificateInfo, utcnow

log = logging.getLogger("sidecar.acme")

CHALLENGE_PATH = "/.well-known/acme-challenge/{token}"
# The renewal loop wakes at least this often, so a changed clock or file is noticed.
MAX_SLEEP = 3600.0

T = TypeVar("T")


@dataclass(frozen=True)
class AcmeFiles:
    """Where the certificate for `domains` lives in tls.dir/acme/."""

    folder: Path
    cert: Path
    key: Path
    record: Path

    @classmethod
    def for_config(cls, tls: TlsConfig) -> AcmeFiles:
        assert tls.acme is not None
        folder = Path(tls.dir) / "acme"
        stem = tls.acme.domains[0]
        return cls(folder, folder / f"{stem}.crt", folder / f"{stem}.key", folder / f"{stem}.json")

    def cert_files(self) -> CertFiles:
        return CertFiles(str(self.cert), str(self.key))


def usable_certificate(
    files: AcmeFiles, settings: AcmeConfig
) -> tuple[CertificateInfo | None, str]:
    """The certificate on disk if it can be served for `settings`; else None and why not."""
    if not files.cert.exists():
        return None, f"no certificate yet ({files.cert} does not exist)"
    try:
        _, _, info = read_pair(files.cert_files())
    except CertificateError as exc:
        return None, str(exc)
    missing = [d for d in settings.domains if not info.covers(d)]
    if missing:
        return None, f"{files.cert} does not cover {', '.join(missing)}"
    if info.expired():
        return None, f"{files.cert} expired on {info.not_after:%Y-%m-%d %H:%M} UTC"
    try:
        record = json.loads(files.record.read_text())
    except (OSError, ValueError):
        record = {}
    if record.get("directory") != settings.directory:
        return None, f"{files.cert} was not issued by {settings.directory}"
    return info, "ok"


def answer_challenges(app: web.Application, store: ChallengeStore) -> None:
    """GET /.well-known/acme-challenge/{token} on the plain-HTTP listener: never redirected."""

    async def answer(request: web.Request) -> web.Response:
        value = store.get(request.match_info["token"])
        if value is None:
            return json_error(404, "no such ACME challenge")
        return web.Response(text=value)

    app.router.add_get(CHALLENGE_PATH, answer)


async def in_daemon_thread(work: Callable[[], T]) -> T:
    """`asyncio.to_thread`, but in a daemon thread: a shutdown never waits for a slow CA.

    The default executor is joined when the loop closes, so SIGTERM during an order would
    wait for the CA's answer; an abandoned order here is simply dropped with the process.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:
            outcome = functools.partial(future.set_exception, exc)
        else:
            outcome = functools.partial(future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name="sidecar-acme", daemon=True).start()
    return await future


async def start_acme(
    tls: TlsConfig, challenges: ChallengeStore, stopping: asyncio.Event
) -> AcmeService | None:
    """The running AcmeService once a usable certificate is on disk; None if told to stop first."""
    service = AcmeService(tls, challenges)
    ensure = asyncio.ensure_future(service.ensure())
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait((ensure, stop), return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not ensure.done():
        ensure.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ensure
        return None
    ensure.result()
    service.start()
    return service


class AcmeService:
    """Issues at start when needed, renews at `renew_at` of the lifetime, retries with back-off."""

    def __init__(self, tls: TlsConfig, challenges: ChallengeStore | None = None) -> None:
        assert tls.acme is not None
        self.settings = tls.acme
        self.files = AcmeFiles.for_config(tls)
        self.challenges = challenges if challenges is not None else ChallengeStore()
        self.client = AcmeClient(self.settings, self.files.folder, self.challenges)
        self.current: CertificateInfo | None = None
        self.failures = 0
        # Called (on the loop) after a new certificate is on disk: reload it, tell the workers.
        self.on_new_certificate: list[Callable[[], object]] = []  # what they return is unused
        self._task: asyncio.Task[None] | None = None

    @property
    def next_renewal(self) -> datetime.datetime | None:
        return self.current.renewal_time(self.settings.renew_at) if self.current else None

    async def ensure(self) -> CertificateInfo:
        """A usable certificate on disk: the one there, or a new one (retrying until it comes)."""
        info, why = usable_certificate(self.files, self.settings)
        if info is not None:
            self.current = info
            return info
        log.warning(
            "no usable certificate; requesting one (the TLS port waits for it)",
            extra={
                "reason": why,
                "domains": list(self.settings.domains),
                "directory": self.settings.directory,
            },
        )
        while self.current is None:
            if not await self.renew():
                await asyncio.sleep(self.backoff())
        return self.current

    async def renew(self) -> bool:
        """Order a certificate now; False (logged with the CA's reason) when it failed."""
        started = asyncio.get_running_loop().time()
        try:
            # The library blocks (requests, time.sleep): never on the event loop.
            info = await in_daemon_thread(self._order_and_store)
        except (AcmeFailure, OSError) as exc:
            # OSError: the certificate folder cannot be written (permissions, a full disk).
            reason = exc.reason if isinstance(exc, AcmeFailure) else f"cannot store: {exc}"
            self.failures += 1
            extra: dict[str, object] = {
                "reason": reason,
                "bad_nonces_retried": self.client.bad_nonces,
                "domains": list(self.settings.domains),
                "retry_in_s": round(self.backoff(peek=True), 1),
            }
            if self.current is not None:
                extra["current_expires"] = self.current.not_after.isoformat()
            log.error("certificate request failed", extra=extra)
            return False
        self.failures = 0
        self.current = info
        log.info(
            "certificate issued",
            extra={
                "names": list(info.names),
                "issuer": info.issuer,
                "not_after": info.not_after.isoformat(),
                "next_renewal": info.renewal_time(self.settings.renew_at).isoformat(),
                "took_s": round(asyncio.get_running_loop().time() - started, 3),
                "bad_nonces_retried": self.client.bad_nonces,
            },
        )
        for callback in self.on_new_certificate:
            callback()
        return True

    def _order_and_store(self) -> CertificateInfo:
        files = self.files
        files.folder.mkdir(parents=True, exist_ok=True)
        try:
            key_pem = files.key.read_bytes()
        except FileNotFoundError:
            key_pem = new_ec_key_pem()
            atomic_write(files.key, key_pem, private=True)
        chain = self.client.order(key_pem, self.settings.domains)
        atomic_write(files.cert, chain.encode())
        record = {"directory": self.settings.directory, "domains": list(self.settings.domains)}
        atomic_write(files.record, json.dumps(record, indent=2).encode())
        try:
            _, _, info = read_pair(files.cert_files())
        except CertificateError as exc:
            raise AcmeFailure(f"the CA's certificate does not load: {exc}") from None
        return info

    def backoff(self, peek: bool = False) -> float:
        """Seconds to wait after `failures` failures in a row: doubling, capped, jittered."""
        n = max(self.failures, 1) - 1
        delay = min(self.settings.retry_min * 2**n, self.settings.retry_max)
        return delay if peek else delay * random.uniform(0.9, 1.1)

    # Renewal in the background -------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._renewals())

    async def _renewals(self) -> None:
        while True:
            due = self.next_renewal
            now = utcnow()
            if due is not None and due > now:
                await asyncio.sleep(min((due - now).total_seconds(), MAX_SLEEP))
                continue
            log.info("certificate due for renewal", extra={"domains": list(self.settings.domains)})
            try:
                renewed = await self.renew()
            except Exception:  # a bug must not end renewals for the life of the process
                log.exception("certificate renewal crashed; trying again later")
                self.failures += 1
                renewed = False
            if not renewed:
                await asyncio.sleep(self.backoff())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
