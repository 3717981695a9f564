"""Document ingest against real `slm serve` processes on loopback: real PDF, DOCX, XLSX and
Markdown files (generated), their text extracted in the limited child, sanitised, chunked,
and used as cited context in chat requests; bad files get clear 400/413/429 errors; nothing
stays past its time-to-live."""

import json
import time

import httpx
import pytest
import support.document_files as files
from slm.documents.extract import Section
from slm.documents.store import (
    CONTEXT_PREAMBLE,
    Document,
    DocumentStore,
    make_chunks,
    select_context,
)
from support.server import TINY_ID, run_slm

EMAIL = "alice.martin@example.com"
PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

SAMPLES = {
    "plan.pdf": (PDF, lambda: files.pdf([
        ["Falcon project plan.", f"Contact {EMAIL} for the budget."],
        ["The kickoff meeting of Falcon is in Lyon."]])),
    "plan.docx": (DOCX, lambda: files.docx_file(
        {"Falcon": [f"Contact {EMAIL} for the budget."],
         "Kickoff": ["The kickoff meeting of Falcon is in Lyon."]},
        table=[["item", "cost"], ["sensor boards", "1200"]])),
    "plan.xlsx": (XLSX, lambda: files.xlsx_file(
        {"Budget": [["item", "cost", "owner"], ["sensor boards", 1200, EMAIL],
                    ["kickoff in Lyon", 300, "Falcon team"]]})),
    "plan.md": ("text/markdown", lambda: (
        f"# Falcon\n\nContact {EMAIL} for the budget.\n\n## Kickoff\n\n"
        "The kickoff meeting of Falcon is in Lyon.\n").encode()),
}
WHERE = {"plan.pdf": "page 2", "plan.docx": "section 'Kickoff'",
         "plan.xlsx": "sheet 'Budget' rows 1-3", "plan.md": "section 'Kickoff'"}


def upload(base: str, name: str, data: bytes, content_type: str) -> httpx.Response:
    return httpx.post(base + "/v1/documents", files={"file": (name, data, content_type)},
                      timeout=60)


def ask(base: str, doc_ids: list[str], question: str, **extra) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", timeout=60, json={
        "model": TINY_ID, "documents": doc_ids, "max_tokens": 4,
        "messages": [{"role": "user", "content": question}], **extra})


@pytest.mark.parametrize("name", list(SAMPLES))
def test_each_format_is_extracted_sanitised_and_cited(tiny_server, name):
    content_type, make = SAMPLES[name]
    data = make()
    sent = upload(tiny_server.base, name, data, content_type)
    assert sent.status_code == 201, sent.text
    card = sent.json()
    assert card["id"].startswith("doc_")
    assert (card["filename"], card["bytes"]) == (name, len(data))
    assert card["kind"] == {"md": "markdown"}.get(name.split(".")[1], name.split(".")[1])
    assert card["sanitised"] == {"EMAIL": 1}
    assert card["chunks"] >= 1 and card["tokens"] > 0
    assert httpx.get(f"{tiny_server.base}/v1/documents/{card['id']}").json() == card

    answer = ask(tiny_server.base, [card["id"]], "Where is the kickoff meeting?")
    assert answer.status_code == 200, answer.text
    cites = answer.json()["citations"]
    assert {c["document"] for c in cites} == {card["id"]}
    assert WHERE[name] in [c["where"] for c in cites]
    assert json.loads(answer.headers["x-slm-citations"]) == cites
    streamed = ask(tiny_server.base, [card["id"]], "Where?", stream=True)
    assert json.loads(streamed.headers["x-slm-citations"]) == cites[: len(
        json.loads(streamed.headers["x-slm-citations"]))]


def test_the_model_sees_the_sanitised_excerpts(start_server, tiny_model):
    """The ledger (storing prompts) shows what the model was given: the document's text
    with the email replaced by a placeholder, and the numbered excerpt labels."""
    server = start_server(tiny_model, "[ledger]\nstore_prompt = true\n")
    content_type, make = SAMPLES["plan.md"]
    doc = upload(server.base, "plan.md", make(), content_type).json()
    assert ask(server.base, [doc["id"]], "Who is the contact?").status_code == 200
    assert httpx.delete(f"{server.base}/v1/documents/{doc['id']}").status_code == 200
    server.stop()
    rows = [json.loads(line) for line in run_slm(
        "ledger", "export", "--db", str(server.ledger), "--format", "jsonl").stdout.splitlines()]
    ingest, chat = [r for r in rows if r["endpoint"] in ("documents", "chat")]
    assert [r["status"] for r in rows if r["endpoint"] == "documents_delete"] == [200]
    assert ingest["status"] == 201 and "EMAIL" in ingest["entities"]
    assert EMAIL not in ingest["prompt_text"] and "[EMAIL_" in ingest["prompt_text"]
    prompt = chat["prompt_text"]
    assert "The kickoff meeting of Falcon is in Lyon." in prompt
    assert "plan.md, section 'Kickoff'" in prompt and "[1] plan.md" in prompt
    assert EMAIL not in prompt and "[EMAIL_" in prompt


def test_raw_body_upload_list_and_delete(tiny_server):
    sent = httpx.post(tiny_server.base + "/v1/documents",
                      params={"filename": "../../secret/no\ntes.md"},
                      content=b"# Notes\n\nPlain words.\n",
                      headers={"Content-Type": "text/markdown"}, timeout=60)
    assert sent.status_code == 201, sent.text
    assert sent.json()["filename"] == "notes.md"  # no path, no control characters
    doc_id = sent.json()["id"]
    listed = httpx.get(tiny_server.base + "/v1/documents").json()["data"]
    assert doc_id in [d["id"] for d in listed]
    assert httpx.delete(f"{tiny_server.base}/v1/documents/{doc_id}").json()["deleted"]
    gone = httpx.get(f"{tiny_server.base}/v1/documents/{doc_id}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "document_not_found"
    asked = ask(tiny_server.base, [doc_id], "anything?")
    assert asked.status_code == 404
    assert asked.json()["error"]["param"] == "documents"


BAD = [
    ("secret.pdf", PDF, lambda: files.encrypted_pdf([["hidden"]]), 400, "document_encrypted"),
    ("secret.docx", DOCX, files.encrypted_docx, 400, "document_encrypted"),
    ("broken.pdf", PDF, lambda: files.pdf([["cut short"]])[:60], 400, "document_corrupt"),
    ("fake.pdf", PDF, lambda: b"this is not a PDF at all", 400, "document_corrupt"),
    ("broken.docx", DOCX, lambda: b"PK\x03\x04" + b"\x00" * 200, 400, "document_corrupt"),
    ("notes.md", "text/markdown", lambda: b"caf\xe9 latin-1", 400, "document_corrupt"),
    ("tool.exe", "application/octet-stream", lambda: b"MZ\x90\x00", 400,
     "unsupported_document_type"),
    ("scan.pdf", PDF, lambda: files.pdf([[]]), 400, "document_empty"),
    ("bomb.docx", DOCX, lambda: files.docx_bomb(300), 413, "document_too_large"),
]


@pytest.mark.parametrize(("name", "content_type", "make", "status", "code"), BAD,
                         ids=[b[0] for b in BAD])
def test_bad_documents_get_clear_errors(tiny_server, name, content_type, make, status, code):
    before = httpx.get(tiny_server.base + "/v1/documents").json()["data"]
    refused = upload(tiny_server.base, name, make(), content_type)
    assert refused.status_code == status, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == (code, "file")
    assert error["message"] and "Traceback" not in error["message"]
    assert httpx.get(tiny_server.base + "/v1/documents").json()["data"] == before


def test_limits_ttl_and_switch(start_server, tiny_model):
    server = start_server(tiny_model, "[documents]\nmax_bytes = 2048\nmax_chars = 400\n"
                          "max_stored_chars = 500\nttl_s = 2\n")
    base = server.base
    too_big = upload(base, "big.md", b"word " * 1000, "text/markdown")
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "document_too_large"
    too_long = upload(base, "long.md", b"y " * 900, "text/markdown")
    assert too_long.status_code == 413
    assert "max_chars" in too_long.json()["error"]["message"]
    first = upload(base, "a.md", b"a " * 150, "text/markdown")
    assert first.status_code == 201
    full = upload(base, "b.md", b"b " * 150, "text/markdown")
    assert full.status_code == 429
    assert full.json()["error"]["code"] == "document_store_full"
    assert server.metric("slm_documents") == 1
    # past the time-to-live (2 s) the purge task forgets it within a quarter of the TTL,
    # without being asked for (the metric reads the store; it does not purge)
    end = time.monotonic() + 4
    while server.metric("slm_documents") and time.monotonic() < end:
        time.sleep(0.1)
    assert server.metric("slm_documents") == 0
    assert httpx.get(base + "/v1/documents").json()["data"] == []
    assert upload(base, "b.md", b"b " * 150, "text/markdown").status_code == 201

    off = start_server(tiny_model, "[documents]\nenabled = false\n")
    refused = upload(off.base, "a.md", b"a", "text/markdown")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "documents_disabled"


def test_no_room_in_the_context_is_a_400(start_server, tiny_model):
    server = start_server(tiny_model, "[model]\nctx = 256\n")
    doc = upload(server.base, "plan.md", SAMPLES["plan.md"][1](), "text/markdown").json()
    long_question = "Where is the kickoff meeting? " * 20
    refused = ask(server.base, [doc["id"]], long_question, max_tokens=100)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    bad = ask(server.base, "not-a-list", "hi")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "documents"


def test_slm_ingest_and_chat_with_a_document(tiny_server, tmp_path):
    path = tmp_path / "plan.docx"
    path.write_bytes(SAMPLES["plan.docx"][1]())
    done = run_slm("ingest", str(path), "--url", tiny_server.base)
    assert done.returncode == 0, done.stderr
    doc_id = done.stdout.strip()
    assert doc_id.startswith("doc_")
    chat = run_slm("chat", "--url", tiny_server.base, "--document", doc_id, "-p",
                   "Where is the kickoff?", "--max-tokens", "3")
    assert chat.returncode == 0, chat.stderr
    assert "plan.docx, section 'Kickoff'" in chat.stdout
    bad = tmp_path / "secret.pdf"
    bad.write_bytes(files.encrypted_pdf([["x"]]))
    refused = run_slm("ingest", str(bad), "--url", tiny_server.base)
    assert refused.returncode == 1
    assert refused.stderr.startswith("slm: error: HTTP 400: ")
    assert "document_encrypted" in refused.stderr
    missing = run_slm("ingest", str(tmp_path / "nope.pdf"), "--url", tiny_server.base)
    assert missing.returncode == 2


def tokens(text: str) -> list[int]:
    """A whitespace tokenizer: one token per word (chunking's arithmetic, not a model's)."""
    return list(range(len(text.split())))


def words(text: str) -> int:
    return len(text.split())


def test_chunks_fit_and_never_cross_sections():
    long = " ".join(f"w{i}" for i in range(250))
    sections = [Section("page 1", f"short one\n\n{long}\n\nshort two"),
                Section("page 2", "alone")]
    chunks = make_chunks(sections, tokens, 100)
    assert all(c.tokens <= 100 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert {c.where for c in chunks} == {"page 1", "page 2"}
    assert chunks[-1].where == "page 2" and chunks[-1].text == "alone"
    rebuilt = " ".join(" ".join(c.text.split()) for c in chunks if c.where == "page 1")
    assert rebuilt == " ".join(f"short one {long} short two".split())


def test_context_takes_the_best_matching_chunks_within_budget():
    sections = [Section(f"page {i}", text) for i, text in enumerate(
        ["apples and pears", "the kickoff is in Lyon", "budget of 42 euros",
         "more about apples"], start=1)]
    doc = Document("doc_1", "f.pdf", "pdf", 1, "0" * 64, make_chunks(sections, tokens, 50), {})
    preamble = words(CONTEXT_PREAMBLE)
    text, cites = select_context([doc], "Where is the kickoff?", preamble + 12, words)
    assert [c.where for c in cites] == ["page 2"]
    assert "[1] f.pdf, page 2:\nthe kickoff is in Lyon" in text
    _, more = select_context([doc], "kickoff apples", preamble + 35, words)
    assert [c.where for c in more] == ["page 1", "page 2", "page 4"]  # document order
    _, none = select_context([doc], "kickoff", preamble + 5, words)
    assert none == []


def test_store_forgets_at_ttl_and_bounds_its_size():
    now = [0.0]
    store = DocumentStore(ttl_s=10, max_chars=20, clock=lambda: now[0])
    chunks = make_chunks([Section("p", "0123456789")], tokens, 10)
    store.add(Document("doc_a", "a", "text", 10, "", chunks, {}))
    store.add(Document("doc_b", "b", "text", 10, "", chunks, {}))
    with pytest.raises(Exception, match="store is full"):
        store.add(Document("doc_c", "c", "text", 10, "", chunks, {}))
    now[0] = 10.0
    assert store.all() == []


def test_documents_belong_to_the_key_that_uploaded_them(start_server, tiny_model):
    server = start_server(tiny_model, '[server]\napi_keys = ["key-alice-123", "key-bob-4567"]\n')
    alice = {"Authorization": "Bearer key-alice-123"}
    bob = {"Authorization": "Bearer key-bob-4567"}
    sent = httpx.post(server.base + "/v1/documents", headers=alice, timeout=60,
                      files={"file": ("a.md", b"# A\n\nAlice's plan.\n", "text/markdown")})
    assert sent.status_code == 201, sent.text
    doc_id = sent.json()["id"]
    url = f"{server.base}/v1/documents/{doc_id}"
    assert httpx.get(url, headers=bob).status_code == 404
    assert httpx.get(server.base + "/v1/documents", headers=bob).json()["data"] == []
    assert httpx.delete(url, headers=bob).status_code == 404
    chat = {"model": TINY_ID, "documents": [doc_id], "max_tokens": 2,
            "messages": [{"role": "user", "content": "plan?"}]}
    assert httpx.post(server.base + "/v1/chat/completions", json=chat, headers=bob,
                      timeout=60).status_code == 404
    assert httpx.post(server.base + "/v1/chat/completions", json=chat, headers=alice,
                      timeout=60).status_code == 200
    assert httpx.get(url, headers=alice).status_code == 200
    # the document's text never enters the prompt cache (it must not outlive its TTL)
    assert server.metric("slm_prompt_cache_bytes", alice) == 0
