"""Fuzzing sidecar.protocol.signatures: any signed request or auth string is accepted or refused
with a SignatureError, never another exception; what was signed right verifies, any change refuses.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import tests.support.fuzz  # noqa: F401  (the hypothesis profile)
from sidecar.protocol.signatures import (
    MAX_CLOCK_SKEW,
    SignatureError,
    channel_string,
    hmac_sha256_hex,
    string_to_sign,
    user_string,
    verify_auth,
    verify_request,
)

KEY = "app-key"
SECRET = "app-secret-123"
NOW = 1_700_000_000.0

param_name = st.sampled_from(
    ["auth_key", "auth_timestamp", "auth_version", "auth_signature", "body_md5", "info", "AUTH_KEY"]
) | st.text(max_size=10)
param_value = st.text(max_size=40) | st.sampled_from(
    [KEY, "1.0", str(int(NOW)), "9" * 400, "-" + "9" * 400, "1e9", " 1700000000", "1_700_000_000"]
)
method = st.sampled_from(["POST", "GET", "post", "DELETE"]) | st.text(max_size=8)
path = st.sampled_from(["/apps/1/events", "/apps/1/channels"]) | st.text(max_size=30)


def signed_params(
    verb: str, where: str, extra: dict[str, str], body: bytes, timestamp: int
) -> dict[str, str]:
    params = {
        **extra,
        "auth_key": KEY,
        "auth_timestamp": str(timestamp),
        "auth_version": "1.0",
    }
    if body:
        params["body_md5"] = hashlib.md5(body).hexdigest()
    params["auth_signature"] = hmac_sha256_hex(SECRET, string_to_sign(verb, where, params))
    return params


# Requests that get past the first checks, so the later ones are reached too.
plausible_params = st.fixed_dictionaries(
    {"auth_key": st.just(KEY), "auth_version": st.just("1.0"), "auth_timestamp": param_value},
    optional={"auth_signature": st.text(max_size=64), "body_md5": st.text(max_size=32)},
)


@given(
    method,
    path,
    st.dictionaries(param_name, param_value, max_size=8) | plausible_params,
    st.binary(max_size=40),
)
def test_any_request_verifies_or_is_refused(
    verb: str, where: str, params: dict[str, str], body: bytes
) -> None:
    try:
        verify_request(
            method=verb, path=where, params=params, body=body, key=KEY, secret=SECRET, now=NOW
        )
    except SignatureError as exc:
        assert str(exc)
    else:  # accepting a request means it carried the signature of this secret
        assert params["auth_signature"] == hmac_sha256_hex(
            SECRET, string_to_sign(verb, where, params)
        )


@pytest.mark.parametrize("timestamp", ["9" * 400, "-" + "9" * 400, "9" * 4000])
def test_a_timestamp_too_large_for_a_float_is_refused(timestamp: str) -> None:
    """Found by the fuzzer: int("9" * 400) is a number, but subtracting it from the float clock
    raised OverflowError (a 500 and a traceback on the signed API) instead of a refusal."""
    params = {"auth_key": KEY, "auth_version": "1.0", "auth_timestamp": timestamp}
    with pytest.raises(SignatureError):
        verify_request(
            method="POST",
            path="/apps/1/events",
            params=params,
            body=b"",
            key=KEY,
            secret=SECRET,
            now=NOW,
        )


lower_names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(
    lambda n: not n.startswith("auth_") and n != "body_md5"
)


@given(
    st.sampled_from(["POST", "GET"]),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789/_-", min_size=1, max_size=30),
    st.dictionaries(lower_names, st.text(max_size=20), max_size=4),
    st.binary(max_size=60),
    st.integers(-MAX_CLOCK_SKEW, MAX_CLOCK_SKEW),
    st.data(),
)
def test_a_signed_request_verifies_and_any_change_is_refused(
    verb: str,
    where: str,
    extra: dict[str, str],
    body: bytes,
    skew: int,
    draw: st.DataObject,
) -> None:
    timestamp = int(NOW) + skew
    params = signed_params(verb, "/" + where, extra, body, timestamp)
    check = {"method": verb, "path": "/" + where, "key": KEY, "secret": SECRET, "now": NOW}
    verify_request(params=params, body=body, **check)

    change = draw.draw(st.sampled_from(["path", "body", "param", "secret", "late"]))
    changed_params, changed_body = dict(params), body
    if change == "path":
        check["path"] = check["path"] + "x"
    elif change == "body":
        changed_body = body + b"!"
    elif change == "param":
        name = draw.draw(st.sampled_from(sorted(set(params) - {"auth_signature"})))
        changed_params[name] = params[name] + "0"
    elif change == "secret":
        check["secret"] = SECRET + "!"
    else:
        check["now"] = NOW + 2 * MAX_CLOCK_SKEW + 1
    with pytest.raises(SignatureError):
        verify_request(params=changed_params, body=changed_body, **check)


@given(st.none() | st.text(max_size=120), st.text(max_size=30), st.text(max_size=60))
def test_any_channel_auth_is_accepted_only_when_signed(
    auth: str | None, socket_id: str, channel: str
) -> None:
    signed = channel_string(socket_id, channel)
    right = f"{KEY}:{hmac_sha256_hex(SECRET, signed)}"
    assume(auth != right)
    with pytest.raises(SignatureError):
        verify_auth(auth, key=KEY, secret=SECRET, signed=signed, what="socket_id:channel_name")
    verify_auth(right, key=KEY, secret=SECRET, signed=signed, what="socket_id:channel_name")


@given(st.text(max_size=30), st.text(max_size=200), st.text(max_size=5))
def test_a_signin_verifies_only_for_its_own_user_data(
    socket_id: str, user_data: str, tail: str
) -> None:
    signed = user_string(socket_id, user_data)
    auth = f"{KEY}:{hmac_sha256_hex(SECRET, signed)}"
    verify_auth(auth, key=KEY, secret=SECRET, signed=signed, what="user data")
    assume(tail)
    with pytest.raises(SignatureError):
        verify_auth(
            auth,
            key=KEY,
            secret=SECRET,
            signed=user_string(socket_id, user_data + tail),
            what="user data",
        )
