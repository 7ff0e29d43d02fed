"""The listener's certificates: loaded at start, reloaded in place when their files change.

`CertificateManager.context` is the one `ssl.SSLContext` the TLS listener is created with.
Reloading calls `load_cert_chain` on that same object: OpenSSL copies the certificate into
each connection when its handshake starts, so new handshakes get the new certificate while
every established connection carries on untouched. No listener is restarted, nothing dropped.

With several certificates (files mode's `tls.certificates`), each has a context of its own and
the listener's context picks one per handshake from the client's SNI name; a client without
SNI, or asking for a name none covers, gets the first.

Files are checked every `reload_interval` seconds (size, mtime, inode: certbot swaps symlinks,
others rewrite in place) and at once on SIGHUP. A pair that does not load (a half-written file,
a key that does not match) is never put into a live context: the current certificate keeps
serving and the files are tried again at the next check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.config.tls import CertFiles
from sidecar.tls.certinfo import CertificateError, CertificateInfo, check_pair, name_matches
from sidecar.tls.contexts import load_pem_pair, policy_context

log = logging.getLogger("sidecar.tls")

Signature = tuple[tuple[int, int, int], ...]


def file_signature(*paths: str) -> Signature | None:
    """What changes when a file is rewritten or a symlink re-pointed; None if one is missing."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(stamps)


def read_pair(files: CertFiles) -> tuple[bytes, bytes, CertificateInfo]:
    """Both files' bytes, checked to belong together; CertificateError naming the file if not."""
    try:
        cert_pem = Path(files.cert).read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {files.cert}: {exc.strerror}") from None
    try:
        key_pem = Path(files.key).read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {files.key}: {exc.strerror}") from None
    info = check_pair(cert_pem, key_pem, files.cert, files.key)
    return cert_pem, key_pem, info


def check_certificates(files: Sequence[CertFiles]) -> None:
    """Raise CertificateError (naming the file) unless every pair would load; serves nothing."""
    for pair in files:
        cert_pem, key_pem, _ = read_pair(pair)
        try:
            load_pem_pair(policy_context(), cert_pem, key_pem)
        except ssl.SSLError as exc:
            raise CertificateError(f"{pair.cert}: OpenSSL refuses it: {exc}") from None


@dataclass
class _Slot:
    """One certificate: its files, its context, what was last loaded into it."""

    files: CertFiles
    context: ssl.SSLContext = field(default_factory=policy_context)
    info: CertificateInfo | None = None
    loaded: Signature | None = None
    failed: tuple[Signature | None, str] | None = None  # the last failure, to log it once
    failed_checks: int = 0


class CertificateManager:
    def __init__(self, files: Sequence[CertFiles], reload_interval: float = 5.0) -> None:
        if not files:
            raise ValueError("a CertificateManager needs at least one certificate")
        self._slots = [_Slot(f) for f in files]
        self.reload_interval = reload_interval
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcards: list[tuple[str, ssl.SSLContext]] = []
        self._watcher: asyncio.Task[None] | None = None
        if len(self._slots) > 1:
            self.context.sni_callback = self._choose

    @property
    def context(self) -> ssl.SSLContext:
        """The listener's context (the first certificate, and the SNI chooser)."""
        return self._slots[0].context

    @property
    def certificates(self) -> list[tuple[CertFiles, CertificateInfo | None]]:
        return [(slot.files, slot.info) for slot in self._slots]

    def load(self) -> None:
        """Load every certificate now; CertificateError (saying which file and why) if one fails."""
        for slot in self._slots:
            signature = file_signature(slot.files.cert, slot.files.key)
            cert_pem, key_pem, info = read_pair(slot.files)
            self._install(slot, cert_pem, key_pem, info, signature)
        self._index()

    def reload(self, force: bool = False) -> int:
        """Load the files that changed (all with `force`); how many certificates were swapped.

        Never raises: a pair that does not load is logged and the current one keeps serving.
        """
        swapped = 0
        for slot in self._slots:
            signature = file_signature(slot.files.cert, slot.files.key)
            if not force and (signature is None or signature == slot.loaded):
                if signature is None and slot.failed != (None, "missing"):
                    slot.failed, slot.failed_checks = (None, "missing"), 1
                    log.warning("certificate file missing", extra={"cert": slot.files.cert})
                continue
            try:
                cert_pem, key_pem, info = read_pair(slot.files)
                swapped += self._install(slot, cert_pem, key_pem, info, signature)
            except (CertificateError, ssl.SSLError) as exc:
                self._failed(slot, signature, str(exc), force)
        if swapped:
            self._index()
        return swapped

    def _install(
        self,
        slot: _Slot,
        cert_pem: bytes,
        key_pem: bytes,
        info: CertificateInfo,
        signature: Signature | None,
    ) -> bool:
        """Whether the certificate was swapped (False: the same one, only its files touched)."""
        if slot.info is not None and slot.info.fingerprint == info.fingerprint:
            slot.loaded, slot.failed = signature, None
            return False
        try:
            load_pem_pair(slot.context, cert_pem, key_pem)
        except ssl.SSLError as exc:
            raise CertificateError(f"{slot.files.cert}: OpenSSL refuses it: {exc}") from None
        replaced = slot.info
        slot.info, slot.loaded, slot.failed = info, signature, None
        extra = {
            "cert": slot.files.cert,
            "names": list(info.names),
            "issuer": info.issuer,
            "not_after": info.not_after.isoformat(),
            "serial": f"{info.serial:x}",
        }
        if info.expired():
            log.error(
                "certificate has expired; serving it until the files are replaced", extra=extra
            )
        log.info("certificate loaded" if replaced is None else "certificate reloaded", extra=extra)
        return True

    def _failed(self, slot: _Slot, signature: Signature | None, reason: str, force: bool) -> None:
        if slot.failed == (signature, reason):
            slot.failed_checks += 1
        else:
            slot.failed, slot.failed_checks = (signature, reason), 1
        extra = {"cert": slot.files.cert, "reason": reason}
        if force or slot.failed_checks == 2:
            log.error("certificate not reloaded; the current one keeps serving", extra=extra)
        elif slot.failed_checks == 1:
            # certbot replaces the certificate and the key one after the other: a check
            # between the two sees a mismatch that the next check no longer does.
            log.info("certificate files changed but do not load yet; retrying", extra=extra)

    # SNI -----------------------------------------------------------------------------------

    def _index(self) -> None:
        exact: dict[str, ssl.SSLContext] = {}
        wildcards: list[tuple[str, ssl.SSLContext]] = []
        for slot in self._slots:
            for name in slot.info.names if slot.info else ():
                if name.startswith("*."):
                    wildcards.append((name, slot.context))
                else:
                    exact.setdefault(name.lower(), slot.context)
        self._exact, self._wildcards = exact, wildcards

    def choose(self, server_name: str | None) -> ssl.SSLContext:
        """The context whose certificate covers `server_name`: exact names before wildcards."""
        if server_name:
            found = self._exact.get(server_name.lower().rstrip("."))
            if found is not None:
                return found
            for pattern, context in self._wildcards:
                if name_matches(pattern, server_name):
                    return context
        return self.context

    def _choose(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> None:
        chosen = self.choose(server_name)
        if chosen is not connection.context:
            connection.context = chosen

    # Watching ------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the files every `reload_interval` seconds. SIGHUP is the process's
        (sidecar/server/lifecycle.py): its reload calls `reload(force=True)`."""
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            self.reload()

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
