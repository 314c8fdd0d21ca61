"""Short-lived access tokens for the private channels (``docs/websocket-protocol.md`` §4).

``v1.<base64url(account)>.<expires ms>.<base64url(HMAC-SHA256(secret, "v1.<account64>.<expires>"))>``,
base64url without padding. Pure: the current time is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from streams.errors import OperatorError

VERSION = "v1"


class TokenError(OperatorError, ValueError):
    """A token that is not accepted; ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, signed: str) -> str:
    return _b64(hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest())


def valid_account(account: str) -> bool:
    return 1 <= len(account) <= 64 and account.isprintable()


def sign_token(secret: bytes, account: str, expires_ms: int) -> str:
    if not valid_account(account):
        raise TokenError("invalid_token", "an account id is 1 to 64 printable characters")
    signed = f"{VERSION}.{_b64(account.encode())}.{expires_ms}"
    return f"{signed}.{_signature(secret, signed)}"


def verify_token(secret: bytes, token: str, now_ms: int, max_ttl_ms: int) -> tuple[str, int]:
    """(account, expires ms) of a valid token; :class:`TokenError` otherwise."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != VERSION or not parts[2].isdigit():
        raise TokenError("invalid_token", "the token does not parse")
    signed = ".".join(parts[:3])
    if not hmac.compare_digest(_signature(secret, signed), parts[3]):
        raise TokenError("invalid_token", "bad token signature")
    try:
        account = _unb64(parts[1]).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise TokenError("invalid_token", "the token's account does not decode") from None
    if not valid_account(account):
        raise TokenError("invalid_token", "the token's account is not a valid account id")
    expires = int(parts[2])
    if expires <= now_ms:
        raise TokenError("token_expired", "the token has expired")
    if expires - now_ms > max_ttl_ms:
        raise TokenError("invalid_token", "the token's expiry is further ahead than the gateway allows")
    return account, expires
