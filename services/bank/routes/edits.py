"""Mutations (CONTRACT.md section 4): insert, interpolate, delete. Each needs the bearer token."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from services.bank.bodies import read_feature_input
from services.bank.deps import Bank, SnippetPathId, require_token
from services.bank.errors import responses
from services.bank.routes.docs import FEATURE_OR_IMAGE
from shared.schemas.bank import InsertResponse, InterpolateRequest, MutationResponse

router = APIRouter(tags=["edit"], dependencies=[Depends(require_token)])


@router.post(
    "/bank/snippets",
    status_code=201,
    response_model=InsertResponse,
    responses=responses(401, 403, 413, 415, 422, 503),
    openapi_extra=FEATURE_OR_IMAGE,
)
async def insert(request: Request, bank: Bank) -> InsertResponse:
    """Insert a snippet: project a feature (or an image's feature) onto the bank (eq. 10) and append it."""
    feature, name = await read_feature_input(bank, request)
    sid, version, residual = await run_in_threadpool(bank.store.insert, feature, name)
    return InsertResponse(id=sid, version=version, residual=residual)


@router.post(
    "/bank/interpolate",
    status_code=201,
    response_model=MutationResponse,
    responses=responses(401, 403, 404, 413, 415, 422, 503),
)
def interpolate(req: InterpolateRequest, bank: Bank) -> MutationResponse:
    """Eq. 11 between two live snippets (base or run-time), appended as a new snippet."""
    sid, version = bank.store.interpolate(req.i, req.j, req.alpha, req.method, req.name)
    return MutationResponse(id=sid, version=version)


@router.delete(
    "/bank/snippets/{id}",
    status_code=204,
    response_class=Response,
    responses=responses(401, 403, 404, 409, 422, 503),
)
def delete(id: SnippetPathId, bank: Bank) -> Response:
    """Delete a run-time snippet (base rows are immutable: 409). Its id is never reused."""
    bank.store.delete(id)
    return Response(status_code=204)
