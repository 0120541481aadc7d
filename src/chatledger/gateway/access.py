"""Who may use the gateway's own routes (settings, logs): the master key, or loopback when there is none."""

from __future__ import annotations

import hmac

from chatledger.errors import AuthenticationFailed, GatewayError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    code = "forbidden"


def check_admin(master_key: str | None, authorization: str | None, client_host: str | None) -> None:
    if master_key:
        token = (authorization or "")[7:] if (authorization or "")[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), master_key.encode()):
            raise AuthenticationFailed("This route needs the gateway's master key as a Bearer token.")
        return
    if client_host is not None and client_host not in LOOPBACK_HOSTS and not client_host.startswith("127."):
        raise Forbidden("Without CHATLEDGER_MASTER_KEY this route only answers loopback clients.")
