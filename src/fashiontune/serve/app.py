"""The FastAPI app: JSON API (routes scripts may rely on) + the page + thumbnails.

    GET  /api/search?q=TEXT&k=N[&model=S]       text -> images of index S (0 = the first served index);
                                                 "reranked": {"model", "k"} when a re-ranker ordered the top k
    POST /api/search/image  (multipart file)     image -> images
    GET  /api/similar/{item_id}?k=N              the item's nearest items (itself left out)
    POST /api/classify  (multipart file, threshold)  per field: probabilities from heads and zero-shot prompts
    GET  /api/models                              the served indexes, with per-class metrics of results.json
    GET  /healthz                                 {"ok": true, "models": n} once every index is loaded
    GET  /thumb/{slot}/{pos}.jpg                  an item's image, read from its shard by byte offset
    GET  /                                        the page (static/index.html: no external resource)
"""

from __future__ import annotations

from importlib import resources
from typing import Sequence

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, Response

from fashiontune.errors import UserError
from fashiontune.serve.catalogue import Catalogue
from fashiontune.serve.uploads import UploadLimits, read_image

MAX_K = 200
MAX_QUERY_CHARS = 500


def create_app(catalogues: Sequence[Catalogue], limits: UploadLimits = UploadLimits()) -> FastAPI:
    app = FastAPI(title="fashiontune serve", docs_url=None, redoc_url=None, openapi_url=None)  # docs pull a CDN
    page = resources.files("fashiontune.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    def pick(model: int) -> Catalogue:
        if not 0 <= model < len(catalogues):
            raise HTTPException(404, f"model={model}: this server has models 0..{len(catalogues) - 1} (GET /api/models)")
        return catalogues[model]

    def results(cat: Catalogue, hits) -> dict:
        return {"model": cat.slot, "results": [cat.item_json(h.pos, h.score) for h in hits]}

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> str:
        return page

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "models": len(catalogues)}

    @app.get("/api/models")
    def models() -> dict:
        return {"models": [c.describe() for c in catalogues]}

    @app.get("/api/search")
    async def search(q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS),
                     k: int = Query(20, ge=1, le=MAX_K), model: int = 0) -> dict:
        cat = pick(model)
        try:  # async: the request waits on the text-search batcher's threads, not on a threadpool thread
            return {**results(cat, await cat.search_text_async(q, k)), "reranked": cat.rerank_info()}
        except UserError as e:
            raise HTTPException(400, str(e)) from e

    @app.post("/api/search/image")
    async def search_image(file: UploadFile = File(...), k: int = Query(20, ge=1, le=MAX_K), model: int = 0) -> dict:
        cat = pick(model)
        from fashiontune.index.faiss_index import normalise

        return results(cat, cat.search(normalise(cat.image_features(await read_image(file, limits))), k))

    @app.get("/api/similar/{item_id}")
    def similar(item_id: str, k: int = Query(20, ge=1, le=MAX_K), model: int = 0) -> dict:
        cat = pick(model)
        pos = cat.positions.get(item_id)
        if pos is None:
            raise HTTPException(404, f"item {item_id!r} is not in model {model}'s index ({len(cat)} items)")
        return {**results(cat, cat.search(cat.vectors[pos:pos + 1], k, exclude=pos)), "item": cat.item_json(pos)}

    @app.post("/api/classify")
    async def classify(file: UploadFile = File(...), threshold: float = Form(0.5, ge=0.0, le=1.0),
                       model: int = 0) -> dict:
        cat = pick(model)
        fields = cat.classify(await read_image(file, limits))
        for f in fields.values():  # the user's threshold over the probabilities (the page's slider)
            for m in f["methods"].values():
                m["above"] = [lab for lab, p in zip(m["labels"], m["probs"]) if p >= threshold]
        return {"model": cat.slot, "threshold": threshold, "fields": fields}

    @app.get("/thumb/{slot}/{pos}.jpg")
    def thumb(slot: int, pos: int) -> Response:
        cat = pick(slot)
        if not 0 <= pos < len(cat):
            raise HTTPException(404, f"item position {pos} is not in model {slot}'s index ({len(cat)} items)")
        return Response(cat.image_bytes(pos), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    return app
