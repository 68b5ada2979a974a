"""Reads of the bank (CONTRACT.md section 4): info, retrieve, one snippet, project, search. No token."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from services.bank import reads
from services.bank.bodies import read_feature_input, snippet_info
from services.bank.deps import Bank, SnippetPathId
from services.bank.errors import responses
from services.bank.routes.docs import FEATURE_OR_IMAGE, RETRIEVE_DOC
from shared.schemas.bank import (
    BankInfo,
    Neighbor,
    ProjectResponse,
    RetrieveResponse,
    SearchRequest,
    SearchResponse,
    SnippetInfo,
)

router = APIRouter(tags=["bank"])


@router.get("/bank", response_model=BankInfo)
async def bank_info(bank: Bank) -> BankInfo:
    view, f = bank.store.view(), bank.store.factors
    return BankInfo(
        version=view.version,
        size=view.pool_size("all"),
        base_size=f.size,
        feature_dim=f.feature_dim,
        rank=f.rank,
        encoder=f.meta.encoder,
        format_version=f.meta.format_version,
        labels=bank.store.has_labels,
        source=f.meta.source or None,
    )


@router.post(
    "/bank/retrieve",
    response_model=RetrieveResponse,
    responses=responses(404, 409, 413, 415, 422),
    description=RETRIEVE_DOC + reads.RETRIEVE_DOC_BINARY,
    openapi_extra=reads.RETRIEVE_BODY_DOC,
)
async def retrieve(request: Request, bank: Bank) -> Response:
    # The body is parsed by reads.retrieve itself: large bodies go to a worker process so that JSON
    # parsing never holds the event loop (GET /healthz stays fast during any request).
    return await reads.retrieve(bank.store, request)


@router.get("/bank/snippets/{id}", response_model=SnippetInfo, responses=responses(404, 422))
def get_snippet(id: SnippetPathId, bank: Bank) -> SnippetInfo:
    return snippet_info(bank, id)


@router.post(
    "/bank/project",
    response_model=ProjectResponse,
    responses=responses(413, 415, 422),
    openapi_extra=FEATURE_OR_IMAGE,
)
async def project(request: Request, bank: Bank) -> ProjectResponse:
    """Eq. 10 without storing: coefficients, the snippet they give, and the residual."""
    feature, _ = await read_feature_input(bank, request)
    c, snippet, residual = await run_in_threadpool(bank.store.project, feature)
    return ProjectResponse(coefficients=c.tolist(), snippet=snippet.tolist(), residual=residual)


@router.post("/bank/search", response_model=SearchResponse, responses=responses(404, 413, 415, 422, 503))
def search(req: SearchRequest, bank: Bank) -> SearchResponse:
    """Exact kNN (FAISS) by distance between reconstructions, over live snippets of the pool."""
    store = bank.store
    if req.id is not None:
        view = store.view()
        store.record(view, req.id)
        c = store.coefficient_rows(view, np.asarray([req.id]))[0]
    else:
        c = store.project(req.snippet if req.snippet is not None else req.feature)[0]  # type: ignore[arg-type]
    _, hits = store.search(c, req.k, req.pool)
    return SearchResponse(neighbors=[Neighbor(id=i, distance=d) for i, d in hits])
