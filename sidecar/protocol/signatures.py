"""Pusher's signatures: the signed HTTP API, channel authorization and user sign-in. No I/O."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

# Pusher refuses requests whose auth_timestamp is further than this from its clock.
MAX_CLOCK_SKEW = 600


class SignatureError(Exception):
    """Why a signed request is refused; the HTTP layer answers 401 with this message."""


def hmac_sha256_hex(secret: str, message: str | bytes) -> str:
    if isinstance(message, str):
        message = message.encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def string_to_sign(method: str, path: str, params: Mapping[str, str]) -> str:
    query = "&".join(
        f"{k.lower()}={v}"
        for k, v in sorted(params.items(), key=lambda kv: kv[0].lower())
        if k.lower() != "auth_signature"
    )
    return f"{method.upper()}\n{path}\n{query}"


def verify_request(
    *,
    method: str,
    path: str,
    params: Mapping[str, str],
    body: bytes,
    key: str,
    secret: str,
    now: float,
) -> None:
    """Check a signed API request; raise SignatureError saying what is wrong."""
    verify_signature(method=method, path=path, params=params, key=key, secret=secret, now=now)
    verify_body(params, body)


def verify_signature(
    *, method: str, path: str, params: Mapping[str, str], key: str, secret: str, now: float
) -> None:
    """Everything but the body: the signature covers body_md5, so a server can check it before
    reading a byte of the body (an unsigned client must not make it buffer megabytes)."""
    if params.get("auth_key") != key:
        raise SignatureError("auth_key is missing or not this app's key")
    if params.get("auth_version") != "1.0":
        raise SignatureError("auth_version must be 1.0")
    try:
        timestamp = int(params.get("auth_timestamp", ""))
    except ValueError:
        raise SignatureError("auth_timestamp is missing or not a number") from None
    # Compared, not subtracted: an int too large for a float (400 digits) makes `now - t` raise.
    if not now - MAX_CLOCK_SKEW <= timestamp <= now + MAX_CLOCK_SKEW:
        raise SignatureError(
            f"auth_timestamp is more than {MAX_CLOCK_SKEW} s from the server's clock "
            f"(server time {int(now)})"
        )
    signature = params.get("auth_signature")
    if not signature:
        raise SignatureError("auth_signature is missing")
    expected = hmac_sha256_hex(secret, string_to_sign(method, path, params))
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise SignatureError("auth_signature does not match")


def verify_body(params: Mapping[str, str], body: bytes) -> None:
    """The body is the one the signed body_md5 names."""
    if body:
        body_md5 = params.get("body_md5")
        if body_md5 is None:
            raise SignatureError("body_md5 is missing")
        if not hmac.compare_digest(body_md5.encode(), hashlib.md5(body).hexdigest().encode()):
            raise SignatureError("body_md5 does not match the body")


# Channel authorization and user sign-in ------------------------------------------------------
# The app's auth endpoint signs with the secret the relay shares; the browser only carries the
# result, `auth = key + ":" + hex(HMAC_SHA256(secret, string))`.


def channel_string(socket_id: str, channel: str, channel_data: str | None = None) -> str:
    """What a channel subscription's auth signs; presence adds the exact channel_data string."""
    if channel_data is None:
        return f"{socket_id}:{channel}"
    return f"{socket_id}:{channel}:{channel_data}"


def user_string(socket_id: str, user_data: str) -> str:
    """What a pusher:signin's auth signs."""
    return f"{socket_id}::user::{user_data}"


def verify_auth(auth: str | None, *, key: str, secret: str, signed: str, what: str) -> None:
    """Check `auth` against the string the app should have signed; SignatureError says why.

    `what` names the signed string in the message (e.g. "socket_id:channel_name"), so a
    developer whose endpoint signs the wrong thing sees what was expected.
    """
    if not auth:
        raise SignatureError("auth is missing: get one from your auth endpoint")
    given_key, sep, signature = auth.partition(":")
    if not sep or not hmac.compare_digest(given_key.encode(), key.encode()):
        raise SignatureError("auth must be this app's key, ':' and the signature")
    expected = hmac_sha256_hex(secret, signed)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise SignatureError(f"auth signature does not match {what} signed with the app secret")
