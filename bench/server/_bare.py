"""The baseline of bench/server/serve.py's HTTP overhead: a bare FastAPI app on uvicorn (as
``imgsearch serve`` runs it: one process, no access log) whose ``POST /v1/search`` parses the same
JSON body and answers ten hits, with no key, database or middleware.

    .venv/bin/python -m uvicorn --app-dir bench/server _bare:app --port PORT --no-access-log
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()

TEN_HITS = [
    {
        "image_id": 1000 + i,
        "product_id": f"sku-{i}",
        "tenant": "acme",
        "category": "shoes",
        "price": 19.99,
        "distance": 0.1 + i / 100,
        "score": 0.9 - i / 100,
    }
    for i in range(10)
]


class Search(BaseModel):
    vector: list[float]
    k: int = 10


@app.post("/v1/search")
async def search(body: Search) -> dict[str, Any]:
    return {"hits": TEN_HITS[: body.k]}
