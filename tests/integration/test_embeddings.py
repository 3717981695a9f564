"""Embeddings from a model that declares pooling; a clear 400 from one that does not."""

import math

import httpx
from support.server import TINY_ID


def test_embeddings_are_normalised_and_deterministic(start_server, tiny_embed_model):
    server = start_server(tiny_embed_model)
    url = server.base + "/v1/embeddings"
    r = httpx.post(url, json={"model": TINY_ID, "input": ["hello world", "red green blue"]})
    assert r.status_code == 200, r.text
    out = r.json()
    vecs = [d["embedding"] for d in out["data"]]
    assert len(vecs) == 2 and len(vecs[0]) == 64
    assert all(abs(math.sqrt(sum(v * v for v in vec)) - 1) < 1e-4 for vec in vecs)
    assert vecs[0] != vecs[1]
    again = httpx.post(url, json={"model": TINY_ID, "input": "hello world"}).json()
    assert again["data"][0]["embedding"] == vecs[0]
    assert out["usage"]["prompt_tokens"] > 0
    bad = httpx.post(url, json={"model": TINY_ID, "input": []})
    assert bad.status_code == 400


def test_embeddings_refused_for_a_model_without_pooling(client):
    r = client.post("/v1/embeddings", json={"model": TINY_ID, "input": "hello"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "embeddings_not_supported"
