"""API token checks as PVE and PBS do them, against the tokens listed in node.json."""

from __future__ import annotations

import hmac
from typing import Callable

from .httpd import ApiError


def _check(tokens: dict[str, str], tokenid: str, secret: str) -> str:
    """The token id when secret matches node.json's; else PVE's 401 'authentication failure'."""
    expected = tokens.get(tokenid)
    if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
        raise ApiError(401, "authentication failure")
    return tokenid


def pve_auth(tokens: dict[str, str]) -> Callable[[dict[str, str]], str]:
    """Checker for 'Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET'; returns the token id."""

    def check(headers: dict[str, str]) -> str:
        value = headers.get("authorization", "")
        if not value.startswith("PVEAPIToken="):
            raise ApiError(401, "No ticket")
        tokenid, _, secret = value[len("PVEAPIToken="):].partition("=")
        return _check(tokens, tokenid, secret)

    return check


def pbs_auth(tokens: dict[str, str]) -> Callable[[dict[str, str]], str]:
    """Checker for 'Authorization: PBSAPIToken=USER@REALM!TOKENID:SECRET'; returns the token id."""

    def check(headers: dict[str, str]) -> str:
        value = headers.get("authorization", "")
        if not value.startswith("PBSAPIToken"):
            raise ApiError(401, "authentication failed - missing authorization header")
        body = value[len("PBSAPIToken"):].lstrip("= ")
        tokenid, _, secret = body.rpartition(":")
        if not tokenid:
            raise ApiError(401, "authentication failed - invalid token")
        try:
            return _check(tokens, tokenid, secret)
        except ApiError:
            raise ApiError(401, "authentication failed - invalid token") from None

    return check
