"""Reads of the bank (CONTRACT.md section 4): info, retrieve, one snippet, project, search. No token."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from services.bank.bodies import read_feature_input, retrieve_body, snippet_info
from services.bank.deps import Bank, SnippetPathId
from services.bank.errors import responses
from services.bank.routes.docs import FEATURE_OR_IMAGE, RETRIEVE_DOC
from shared.schemas.bank import (
    BankInfo,
    Neighbor,
    ProjectResponse,
    RetrieveRequest,
    RetrieveResponse,
    SearchRequest,
    SearchResponse,
    SnippetInfo,
)

router = APIRouter(tags=["bank"])


@router.get("/bank", response_model=BankInfo)
async def bank_info(bank: Bank) -> BankInfo:
    view, f = bank.store.view(), bank.store.factors
    return BankInfo(version=view.version, size=view.pool_size("all"), base_size=f.size, feature_dim=f.feature_dim,
                    rank=f.rank, encoder=f.meta.encoder, format_version=f.meta.format_version)


@router.post("/bank/retrieve", response_model=RetrieveResponse, responses=responses(404, 409, 413, 415, 422),
             description=RETRIEVE_DOC)
async def retrieve(req: RetrieveRequest, bank: Bank) -> Response:
    if req.z is not None:
        zs = req.z if isinstance(req.z[0], list) else [req.z]
        view, ids, snippets = bank.store.retrieve_by_noise(zs, req.pool)  # type: ignore[arg-type]
    else:
        view, ids, snippets = bank.store.retrieve_by_id(req.indices or [], req.pool)
    return retrieve_body(view, req.pool, ids, snippets, req.encoding)


@router.get("/bank/snippets/{id}", response_model=SnippetInfo, responses=responses(404, 422))
def get_snippet(id: SnippetPathId, bank: Bank) -> SnippetInfo:
    return snippet_info(bank, id)


@router.post("/bank/project", response_model=ProjectResponse, responses=responses(413, 415, 422),
             openapi_extra=FEATURE_OR_IMAGE)
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
