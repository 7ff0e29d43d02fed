"""sidecar.protocol.signatures: Pusher's signed HTTP API and channel-auth HMACs."""

from __future__ import annotations

import hashlib
import time
from urllib.parse import parse_qsl, urlsplit

import pusher
import pytest
from pusher.http import Request
from pusher.pusher_client import PusherClient

from sidecar.protocol.signatures import (
    MAX_CLOCK_SKEW,
    SignatureError,
    channel_string,
    hmac_sha256_hex,
    string_to_sign,
    user_string,
    verify_auth,
    verify_request,
    verify_signature,
)

# The test vector of PROTOCOL.md (from Pusher's documentation of the HTTP API).
APP_ID = "3"
KEY = "278d425bdf160c739803"
SECRET = "7ad3773142a6692b25b8"
TIMESTAMP = 1353088179
BODY = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
BODY_MD5 = "ec365a775a4cd0599faeb73354201b6f"
SIGNATURE = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
PATH = "/apps/3/events"


def vector_params(**changes: str | None) -> dict[str, str]:
    params = {
        "auth_key": KEY,
        "auth_timestamp": str(TIMESTAMP),
        "auth_version": "1.0",
        "body_md5": BODY_MD5,
        "auth_signature": SIGNATURE,
    }
    params.update(changes)
    return {k: v for k, v in params.items() if v is not None}


def verify(
    params: dict[str, str],
    *,
    body: bytes = BODY,
    method: str = "POST",
    path: str = PATH,
    key: str = KEY,
    secret: str = SECRET,
    now: float = TIMESTAMP + 10,
) -> None:
    verify_request(
        method=method, path=path, params=params, body=body, key=key, secret=secret, now=now
    )


def refusal(params: dict[str, str], **kwargs: object) -> str:
    with pytest.raises(SignatureError) as info:
        verify(params, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def signed(method: str, path: str, params: dict[str, str], body: bytes = b"") -> dict[str, str]:
    """Sign like a Pusher server library would."""
    params = dict(params)
    if body:
        params["body_md5"] = hashlib.md5(body).hexdigest()
    params["auth_signature"] = hmac_sha256_hex(SECRET, string_to_sign(method, path, params))
    return params


# The documented vector ----------------------------------------------------------------------


def test_vector_body_md5() -> None:
    assert hashlib.md5(BODY).hexdigest() == BODY_MD5


def test_vector_string_to_sign_and_signature() -> None:
    params = vector_params()
    text = string_to_sign("POST", PATH, params)
    assert text == (
        "POST\n/apps/3/events\n"
        f"auth_key={KEY}&auth_timestamp={TIMESTAMP}&auth_version=1.0&body_md5={BODY_MD5}"
    )
    assert hmac_sha256_hex(SECRET, text) == SIGNATURE


def test_vector_verifies() -> None:
    verify(vector_params())  # no exception


def test_string_to_sign_sorts_and_lower_cases_keys_and_uppercases_the_method() -> None:
    text = string_to_sign("get", "/p", {"b": "2", "A": "1", "auth_signature": "x", "C": "a,b"})
    assert text == "GET\n/p\na=1&b=2&c=a,b"


# Refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [MAX_CLOCK_SKEW, -MAX_CLOCK_SKEW])
def test_timestamp_600_seconds_away_is_accepted(skew: int) -> None:
    verify(vector_params(), now=TIMESTAMP + skew)


@pytest.mark.parametrize("skew", [601, -601, 86400])
def test_timestamp_601_seconds_away_is_refused(skew: int) -> None:
    assert "auth_timestamp" in refusal(vector_params(), now=TIMESTAMP + skew)


@pytest.mark.parametrize("timestamp", [None, "", "soon", "1353088179.5"])
def test_missing_or_non_numeric_timestamp_is_refused(timestamp: str | None) -> None:
    assert "auth_timestamp" in refusal(vector_params(auth_timestamp=timestamp))


def resigned(**changes: str | None) -> dict[str, str]:
    """The vector with `changes`, signed again: the signature holds, only the body check can
    refuse it."""
    params = vector_params(**changes, auth_signature=None)
    params["auth_signature"] = hmac_sha256_hex(SECRET, string_to_sign("POST", PATH, params))
    return params


def test_wrong_body_md5_is_refused() -> None:
    message = refusal(resigned(body_md5="0" * 32))
    assert "body_md5 does not match" in message


def test_body_that_does_not_match_its_md5_is_refused() -> None:
    assert "body_md5" in refusal(vector_params(), body=BODY.replace(b"foo", b"bar"))


def test_missing_body_md5_with_a_body_is_refused() -> None:
    assert "body_md5 is missing" in refusal(resigned(body_md5=None))


def test_non_ascii_body_md5_is_a_signature_error() -> None:
    assert "body_md5" in refusal(resigned(body_md5="é" * 32))


def test_a_changed_body_md5_breaks_the_signature_before_the_body_is_read() -> None:
    # The signature covers body_md5, so the API checks it before reading a byte of the body.
    with pytest.raises(SignatureError, match="auth_signature does not match"):
        verify_signature(
            method="POST",
            path=PATH,
            params=vector_params(body_md5="0" * 32),
            key=KEY,
            secret=SECRET,
            now=TIMESTAMP + 10,
        )


def test_wrong_signature_is_refused() -> None:
    assert "auth_signature does not match" in refusal(vector_params(auth_signature="ab" * 32))


def test_signature_made_with_another_secret_is_refused() -> None:
    assert "auth_signature does not match" in refusal(vector_params(), secret="another-secret")


def test_signature_for_another_path_or_method_is_refused() -> None:
    assert "auth_signature" in refusal(vector_params(), path="/apps/4/events")
    assert "auth_signature" in refusal(vector_params(), method="PUT")


def test_missing_signature_is_refused() -> None:
    assert "auth_signature is missing" in refusal(vector_params(auth_signature=None))


def test_tampered_parameter_is_refused() -> None:
    params = signed("GET", "/apps/3/channels", {**vector_params(), "filter_by_prefix": "presence-"})
    verify(params, method="GET", path="/apps/3/channels", body=b"")
    params["filter_by_prefix"] = "private-"
    assert "auth_signature" in refusal(params, method="GET", path="/apps/3/channels", body=b"")


@pytest.mark.parametrize("auth_key", [None, "", "278d425bdf160c739804"])
def test_wrong_or_missing_key_is_refused(auth_key: str | None) -> None:
    assert "auth_key" in refusal(vector_params(auth_key=auth_key))


@pytest.mark.parametrize("auth_version", [None, "", "1", "2.0"])
def test_wrong_auth_version_is_refused(auth_version: str | None) -> None:
    assert "auth_version" in refusal(vector_params(auth_version=auth_version))


def test_get_without_body_needs_no_body_md5() -> None:
    base = {"auth_key": KEY, "auth_timestamp": str(TIMESTAMP), "auth_version": "1.0"}
    params = signed("GET", "/apps/3/channels", base)
    verify(params, method="GET", path="/apps/3/channels", body=b"")


# What the real Pusher Python library sends --------------------------------------------------


def library_params(request: Request) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))


@pytest.fixture
def client() -> PusherClient:
    return PusherClient(app_id=APP_ID, key=KEY, secret=SECRET, ssl=False)


def test_pusher_library_trigger_verifies(client: PusherClient) -> None:
    request = client.trigger.make_request(["project-3"], "foo", {"some": "data"})
    params = library_params(request)
    verify(params, method="POST", path=request.path, body=request.body, now=time.time())


def test_pusher_library_channels_query_verifies(client: PusherClient) -> None:
    request = client.channels_info.make_request(
        prefix_filter="presence-", attributes=["user_count", "subscription_count"]
    )
    params = library_params(request)
    assert params["info"] == "user_count,subscription_count"
    verify(params, method="GET", path=request.path, body=b"", now=time.time())


# Channel authorization ----------------------------------------------------------------------


def test_channel_auth_vector() -> None:
    signature = hmac_sha256_hex(SECRET, "1234.1234:private-foobar")
    assert signature == "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"


def test_hmac_sha256_hex_takes_bytes_like_str() -> None:
    message = "1234.1234:private-foobar"
    assert hmac_sha256_hex(SECRET, message.encode()) == hmac_sha256_hex(SECRET, message)


def test_presence_auth_matches_the_pusher_library() -> None:
    reply = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET).authenticate(
        "presence-room", "1234.1234", {"user_id": "7"}
    )
    ours = hmac_sha256_hex(SECRET, f"1234.1234:presence-room:{reply['channel_data']}")
    assert reply["auth"] == f"{KEY}:{ours}"


def test_verify_auth_takes_the_channel_vector() -> None:
    auth = f"{KEY}:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
    signed = channel_string("1234.1234", "private-foobar")
    verify_auth(auth, key=KEY, secret=SECRET, signed=signed, what="socket_id:channel_name")


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (None, "auth is missing"),
        ("", "auth is missing"),
        ("58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4", "app's key"),
        ("other-key:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4", "key"),
        (f"{KEY}:" + "0" * 64, "auth signature does not match socket_id:channel_name"),
    ],
)
def test_verify_auth_refusals(auth: str | None, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify_auth(
            auth,
            key=KEY,
            secret=SECRET,
            signed=channel_string("1234.1234", "private-foobar"),
            what="socket_id:channel_name",
        )


def test_user_signin_matches_the_pusher_library() -> None:
    client = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET)
    reply = client.authenticate_user("1234.1234", {"id": "ann", "name": "Ann"})
    signed = user_string("1234.1234", reply["user_data"])
    verify_auth(reply["auth"], key=KEY, secret=SECRET, signed=signed, what="")


def test_pusher_library_channel_and_users_queries_verify(client: PusherClient) -> None:
    for request in (
        client.channel_info.make_request("presence-room", ["user_count", "subscription_count"]),
        client.users_info.make_request("presence-room"),
    ):
        params = library_params(request)
        verify(params, method="GET", path=request.path, body=b"", now=time.time())
