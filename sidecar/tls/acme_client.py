"""One certificate order with the `acme` library: blocking, so it runs in a thread.

The steps are the library's (account, order, HTTP-01 challenges, finalize, download), with
three things of our own around them:
- every step is retried a few times on `badNonce` (the library retries once; a CA may reject
  many nonces in a row, and a whole new order for each would be slow and use up rate limits);
- polling is short (from 50 ms, growing), where the library sleeps whole seconds;
- the account is kept in the certificate folder and registered again when the CA has forgotten
  it (`accountDoesNotExist`), or when the directory changed.
Every failure becomes `AcmeFailure` whose `reason` is what the CA (or the network) said.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import josepy as jose
import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.config.secrets import write_private
from sidecar.config.tls import AcmeConfig

log = logging.getLogger("sidecar.acme")

T = TypeVar("T")

# A CA may refuse a run of nonces (Let's Encrypt rarely, pebble 5% by default); each refusal
# costs one request, so a few more tries are cheaper than starting the order again.
BAD_NONCE_TRIES = 6
# How long one order may take, validation included, before it counts as failed.
ORDER_DEADLINE = 120.0
POLL_FIRST, POLL_MAX = 0.05, 2.0
NETWORK_TIMEOUT = 30
USER_AGENT = "sidecar-acme"


class AcmeFailure(Exception):
    """An order that did not produce a certificate; `reason` says why, in the CA's words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChallengeStore:
    """HTTP-01 answers by token: written by the ACME thread, read by the plain-HTTP listener."""

    def __init__(self) -> None:
        self._answers: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, token: str, key_authorization: str) -> None:
        with self._lock:
            self._answers[token] = key_authorization

    def remove(self, token: str) -> None:
        with self._lock:
            self._answers.pop(token, None)

    def get(self, token: str) -> str | None:
        with self._lock:
            return self._answers.get(token)

    def tokens(self) -> list[str]:
        with self._lock:
            return list(self._answers)


# Describing failures ------------------------------------------------------------------------


def _problem(error: messages.Error) -> str:
    text = f"{error.code or error.typ}: {error.detail or error.title or 'no detail'}"
    for sub in getattr(error, "subproblems", None) or ():
        identifier = getattr(sub, "identifier", None)
        where = f"{identifier.value}: " if identifier is not None else ""
        text += f"; {where}{getattr(sub, 'detail', sub)}"
    return text


def _network_reason(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    for arg in exc.args:  # urllib3 keeps the innermost error in the message only
        text = str(arg)
        if "]" in text:
            return text.rsplit("]", 1)[-1].strip(" ')\"") or text
    return str(exc)[:300]


def describe_failure(exc: BaseException, directory: str) -> str:
    """One line: what went wrong, as precisely as the CA or the network said it."""
    if isinstance(exc, messages.Error):
        return _problem(exc)
    if isinstance(exc, errors.ValidationError):
        parts = []
        for authzr in exc.failed_authzrs:
            name = authzr.body.identifier.value
            for challenge in authzr.body.challenges:
                if challenge.error is not None:
                    parts.append(f"{name}: {_problem(challenge.error)}")
        return "validation failed: " + ("; ".join(parts) or "no reason given")
    if isinstance(exc, errors.IssuanceError):
        return _problem(exc.error)
    if isinstance(exc, requests.exceptions.SSLError):
        return f"cannot verify {directory}'s certificate (set tls.acme.ca_bundle for a private CA)"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"cannot reach {directory}: {_network_reason(exc)}"
    if isinstance(exc, errors.TimeoutError):
        return f"the CA did not finish the order within {ORDER_DEADLINE:g} s"
    return f"{type(exc).__name__}: {exc}"


# The client ---------------------------------------------------------------------------------


def new_ec_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class AcmeClient:
    """Orders certificates from one directory; the account lives in `folder` (key 0600)."""

    def __init__(self, settings: AcmeConfig, folder: Path, challenges: ChallengeStore) -> None:
        self.settings = settings
        self.folder = folder
        self.challenges = challenges
        self.account_key_path = folder / "account.key"
        self.account_path = folder / "account.json"
        self.bad_nonces = 0  # nonces the CA refused during the last order (each one retried)

    def order(self, key_pem: bytes, domains: tuple[str, ...]) -> str:
        """The full chain PEM for `domains` and the private key `key_pem`; AcmeFailure if not."""
        try:
            return self._order(key_pem, domains)
        except AcmeFailure:
            raise
        except Exception as exc:
            raise AcmeFailure(describe_failure(exc, self.settings.directory)) from exc

    def _order(self, key_pem: bytes, domains: tuple[str, ...]) -> str:
        deadline = time.monotonic() + ORDER_DEADLINE
        self.bad_nonces = 0
        acme, net = self._connect()
        self._account(acme, net)
        csr = crypto_util.make_csr(key_pem, list(domains))
        try:
            order = self._step(acme.new_order, csr)
        except messages.Error as exc:
            if exc.code != "accountDoesNotExist":
                raise
            log.warning("the CA does not know our account; registering again")
            self._register(acme, net)
            order = self._step(acme.new_order, csr)
        tokens = []
        try:
            pending = []
            for authzr in order.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue  # the CA remembers a recent validation of this name
                challb = _http01(authzr)
                response, validation = challb.response_and_validation(net.key)
                token = challb.chall.encode("token")
                self.challenges.add(token, validation)
                tokens.append(token)
                self._step(acme.answer_challenge, challb, response)
                pending.append(authzr)
            failed = [a for a in (self._settle(acme, a, deadline) for a in pending) if a]
            if failed:
                raise errors.ValidationError(failed)
        finally:
            for token in tokens:
                self.challenges.remove(token)
        return self._finalize(acme, order, deadline)

    def _step(self, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One request to the CA, sent again when the CA refuses its nonce."""
        for attempt in range(BAD_NONCE_TRIES):
            try:
                return step(*args, **kwargs)
            except messages.Error as exc:
                if exc.code != "badNonce" or attempt == BAD_NONCE_TRIES - 1:
                    raise
                self.bad_nonces += 1
        raise AssertionError("unreachable")

    def _connect(self) -> tuple[client.ClientV2, client.ClientNetwork]:
        key = jose.JWKEC(key=serialization.load_pem_private_key(self._account_key(), None))
        verify: bool | str = self.settings.ca_bundle or True
        net = client.ClientNetwork(
            key,
            alg=jose.ES256,
            verify_ssl=verify,  # type: ignore[arg-type]  # a CA file path is what requests takes
            user_agent=USER_AGENT,
            timeout=NETWORK_TIMEOUT,
        )
        directory = client.ClientV2.get_directory(self.settings.directory, net)
        return client.ClientV2(directory, net), net

    def _account_key(self) -> bytes:
        with contextlib.suppress(FileNotFoundError):
            return self.account_key_path.read_bytes()
        self.folder.mkdir(parents=True, exist_ok=True)
        pem = new_ec_key_pem()
        write_private(self.account_key_path, pem)
        log.info("ACME account key created", extra={"path": str(self.account_key_path)})
        return pem

    def _account(self, acme: client.ClientV2, net: client.ClientNetwork) -> None:
        saved = self._saved_account()
        if saved is not None:
            net.account = messages.RegistrationResource(
                uri=saved["uri"], body=messages.Registration()
            )
            return
        self._register(acme, net)

    def _saved_account(self) -> dict[str, Any] | None:
        try:
            saved = json.loads(self.account_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("directory") != self.settings.directory:
            return None  # another CA's account means nothing here
        return saved if isinstance(saved.get("uri"), str) else None

    def _register(self, acme: client.ClientV2, net: client.ClientNetwork) -> None:
        net.account = None
        fields: dict[str, Any] = {"terms_of_service_agreed": True}
        if self.settings.email:
            fields["email"] = self.settings.email
        eab = self.settings.eab
        if eab is not None:
            assert net.key is not None  # _connect made the network with the account key
            fields["external_account_binding"] = messages.ExternalAccountBinding.from_data(
                account_public_key=net.key.public_key(),
                kid=eab.kid,
                hmac_key=eab.hmac_key,
                directory=acme.directory,
            )
        elif acme.external_account_required():
            raise AcmeFailure(
                "this CA requires external account binding: set tls.acme.eab {kid, hmac_key}"
            )
        registration = messages.NewRegistration.from_data(**fields)
        try:
            regr = self._step(acme.new_account, registration)
        except errors.ConflictError as exc:
            # The CA already has an account for this key (account.json was lost): use it.
            regr = messages.RegistrationResource(uri=str(exc), body=messages.Registration())
            net.account = regr
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"directory": self.settings.directory, "uri": regr.uri}
        write_private(self.account_path, json.dumps(record, indent=2).encode())
        log.info("ACME account registered", extra={"account": regr.uri})

    def _settle(
        self, acme: client.ClientV2, authzr: messages.AuthorizationResource, deadline: float
    ) -> messages.AuthorizationResource | None:
        """Poll one authorization until decided: None when valid, itself when it failed."""
        delay = POLL_FIRST
        while True:
            authzr, _ = self._step(acme.poll, authzr)
            status = authzr.body.status
            if status == messages.STATUS_VALID:
                return None
            if status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                return authzr
            if time.monotonic() > deadline:
                raise errors.TimeoutError()
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    def _finalize(
        self, acme: client.ClientV2, order: messages.OrderResource, deadline: float
    ) -> str:
        new_nonce = acme.directory["newNonce"]
        delay = POLL_FIRST
        while True:
            try:
                order = self._step(acme.begin_finalization, order)
                break
            except messages.Error as exc:
                # The order turns `ready` a moment after its last authorization is valid.
                if exc.code != "orderNotReady" or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX)
        delay = POLL_FIRST
        while True:
            body = order.body
            if body.status == messages.STATUS_VALID and body.certificate is not None:
                response = self._step(
                    acme.net.post, body.certificate, None, new_nonce_url=new_nonce
                )
                return response.text
            if body.status == messages.STATUS_INVALID:
                if body.error is not None:
                    raise errors.IssuanceError(body.error)
                raise AcmeFailure("the CA marked the order invalid without a reason")
            if time.monotonic() > deadline:
                raise errors.TimeoutError()
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX)
            response = self._step(acme.net.post, order.uri, None, new_nonce_url=new_nonce)
            order = order.update(body=messages.Order.from_json(response.json()))


def _http01(authzr: messages.AuthorizationResource) -> messages.ChallengeBody:
    for challb in authzr.body.challenges:
        if isinstance(challb.chall, challenges.HTTP01):
            return challb
    name = authzr.body.identifier.value
    raise AcmeFailure(f"{name}: the CA offers no HTTP-01 challenge for it")


def atomic_write(path: Path, data: bytes, private: bool = False) -> None:
    """Replace `path` in one rename, so a reader sees the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    if private:
        write_private(tmp, data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
