"""What the bank's routes depend on: the service state, the token check and the snippet-id path type.

The token is checked twice, by the same function: by ``token_guard`` in the middleware, before a
mutation's body is read (an unauthenticated client cannot make the bank buffer 64 MiB), and by the
``require_token`` dependency of the edit routes, which also declares the bearer scheme in OpenAPI.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from services.bank.errors import RETRY_AFTER_S, STATUS, MutationsDisabled, TokenRejected
from services.bank.events import EventPublisher
from services.bank.images import ImageEncoder
from services.bank.metrics import BankMetrics
from services.bank.settings import BankSettings
from services.bank.store import BankStore
from shared.errors import GMemError
from shared.http.middleware import Guard
from shared.schemas.bank import MAX_ID


@dataclass(frozen=True)
class BankState:
    """Everything one bank app serves from; ``app.state.bank``."""

    settings: BankSettings
    store: BankStore
    images: ImageEncoder
    metrics: BankMetrics
    publisher: EventPublisher | None


def get_bank(request: Request) -> BankState:
    state: BankState = request.app.state.bank
    return state


Bank = Annotated[BankState, Depends(get_bank)]
SnippetPathId = Annotated[int, Path(ge=0, le=MAX_ID, description="snippet id")]

_bearer = HTTPBearer(auto_error=False, description="GMEM_BANK_TOKEN; needed for mutations only")


def check_token(settings: BankSettings, presented: str | None) -> None:
    """MutationsDisabled without a configured token, TokenRejected for a missing or wrong one."""
    if settings.token is None or not settings.token.get_secret_value():
        raise MutationsDisabled(
            "mutations are disabled because no token is configured; start the bank with "
            "GMEM_BANK_TOKEN=<secret> and send 'Authorization: Bearer <secret>'"
        )
    if presented is None or not hmac.compare_digest(
        presented.encode(), settings.token.get_secret_value().encode()
    ):
        raise TokenRejected("missing or wrong bearer token; send 'Authorization: Bearer <GMEM_BANK_TOKEN>'")


def require_token(
    bank: Bank, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    check_token(bank.settings, creds.credentials if creds is not None else None)


def _bearer_of(scope: Scope) -> str | None:
    raw = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"), None)
    if raw is None:
        return None
    scheme, _, value = raw.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def token_guard(routes: Sequence[BaseRoute], settings: BankSettings) -> Guard:
    """A ``RequestContext`` guard: the token check of the route ``scope`` will reach, before its body.

    ``routes``: a router's routes; those that depend on ``require_token`` are guarded.
    """
    guarded = [
        r
        for r in routes
        if isinstance(r, APIRoute) and any(d.dependency is require_token for d in r.dependencies)
    ]

    async def guard(scope: Scope) -> Response | None:
        if not any(r.matches(scope)[0] == Match.FULL for r in guarded):
            return None
        try:
            check_token(settings, _bearer_of(scope))
        except GMemError as exc:
            return STATUS.response(exc, RETRY_AFTER_S)
        return None

    return guard
