"""Placeholders, rehydration (whole and streamed) and OpenAI payload handling."""

from __future__ import annotations

import json
import random

from slm.sanitise.detectors import Detector
from slm.sanitise.payload import StreamedResponseRehydrator, redact_request, rehydrate_response
from slm.sanitise.vault import PLACEHOLDER, Vault

DETECTOR = Detector()
TEXT = ("Write to bob@example.com or to bob@example.com, from 192.0.2.10; "
        'the password: "hunter2hunter2" must not leak.')


def test_same_value_same_placeholder_different_values_different():
    vault = Vault(DETECTOR)
    out = vault.redact(TEXT)
    found = PLACEHOLDER.findall(out)
    assert len(found) == 4 and found[0] == found[1] and len(set(found)) == 3
    assert "bob@example.com" not in out and "192.0.2.10" not in out and "hunter2" not in out
    assert vault.entity_types == ["EMAIL", "IP_ADDRESS", "PASSWORD"]
    assert vault.rehydrate(out) == TEXT


def test_placeholders_differ_between_requests_and_never_cross():
    one, two = Vault(DETECTOR), Vault(DETECTOR)
    p1, p2 = one.redact("bob@example.com"), two.redact("bob@example.com")
    assert p1 != p2
    assert two.rehydrate(p1) == p1  # another request's placeholder stays as it is
    mangled = p1[:-2] + "]"
    assert one.rehydrate(mangled) == mangled


def test_stream_rehydration_of_every_split_equals_the_whole():
    vault = Vault(DETECTOR)
    redacted = vault.redact(TEXT)
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(redacted)), rng.randint(1, 12)))
        pieces = [redacted[a:b] for a, b in zip([0, *cuts], [*cuts, len(redacted)], strict=True)]
        stream = vault.stream()
        out = [stream.feed(p) for p in pieces] + [stream.flush()]
        assert "".join(out) == TEXT


def test_stream_holds_back_only_what_could_become_a_placeholder():
    vault = Vault(DETECTOR)
    placeholder = vault.redact("bob@example.com")
    stream = vault.stream()
    assert stream.feed("a [note] and [") == "a [note] and "  # '[' may start a placeholder
    assert stream.feed("x") == "[x"  # no placeholder starts with '[x'
    assert stream.feed(placeholder[:5]) == ""
    assert stream.feed(placeholder[5:] + " end") == "bob@example.com end"


def test_json_escaped_rehydration_for_tool_arguments():
    vault = Vault(Detector(custom={"QUOTED": r'Q"[a-z]+\\\\'}))
    value = 'Q"abc\\\\'
    args = json.dumps({"v": vault.redact(value)})
    assert json.loads(vault.rehydrate(args, json_escape=True)) == {"v": value}


def test_request_payload_is_redacted_everywhere_text_goes():
    vault = Vault(DETECTOR)
    body = {"model": "m", "temperature": 0.2, "messages": [
        {"role": "system", "content": "mail admin@example.org"},
        {"role": "user", "content": [{"type": "text", "text": "ip 198.51.100.7"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function",
             "function": {"name": "f", "arguments": '{"to": "x@example.net"}'}}]},
        {"role": "tool", "tool_call_id": "c", "content": "sent to x@example.net"},
    ]}
    out = redact_request(body, vault)
    wire = json.dumps(out)
    for secret in ("admin@example.org", "198.51.100.7", "x@example.net"):
        assert secret not in wire
    assert body["messages"][0]["content"] == "mail admin@example.org"  # original untouched
    assert out["temperature"] == 0.2 and out["model"] == "m"
    reply = {"choices": [{"index": 0, "message": {
        "content": out["messages"][0]["content"], "tool_calls": [
            {"function": {"name": "f", "arguments": out["messages"][2]["tool_calls"][0]
                          ["function"]["arguments"]}}]}}]}
    back = rehydrate_response(reply, vault)["choices"][0]["message"]
    assert back["content"] == "mail admin@example.org"
    assert json.loads(back["tool_calls"][0]["function"]["arguments"]) == {"to": "x@example.net"}


def test_streamed_chunks_flush_held_text_at_finish():
    vault = Vault(DETECTOR)
    redacted = vault.redact("to bob@example.com")
    rehydrator = StreamedResponseRehydrator(vault, chat=True)
    first = rehydrator.chunk({"choices": [{"index": 0, "delta": {"content": redacted[:-3]}}]})
    last = rehydrator.chunk({"choices": [{"index": 0, "delta": {"content": redacted[-3:]},
                                          "finish_reason": "stop"}]})
    text = first["choices"][0]["delta"]["content"] + last["choices"][0]["delta"]["content"]
    assert first["choices"][0]["delta"]["content"] == "to "
    assert text == "to bob@example.com"


def test_every_content_field_is_redacted_but_protocol_fields_are_not():
    vault = Vault(DETECTOR)
    body = {"model": "m", "prompt": "p", "suffix": "# owner alice@example.com",
            "user": "carol@example.com", "tools": [{"type": "function", "function": {
                "name": "notify", "description": "writes to ops@example.com"}}]}
    wire = json.dumps(redact_request(body, vault))
    for secret in ("alice@example.com", "carol@example.com", "ops@example.com"):
        assert secret not in wire
    assert '"name": "notify"' in wire and '"model": "m"' in wire


def test_tool_arguments_with_quotes_and_backslashes_round_trip():
    vault = Vault(DETECTOR)
    args = json.dumps({"password": 'pa"ss\\w0rd!', "mail": "bob@example.com"})
    body = {"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]}]}
    sent = redact_request(body, vault)["messages"][0]["tool_calls"][0]["function"]["arguments"]
    assert "bob@example.com" not in sent and "w0rd" not in sent
    reply = {"choices": [{"index": 0, "message": {"content": None, "tool_calls": [
        {"function": {"name": "f", "arguments": sent}}]}}]}
    back = rehydrate_response(reply, vault)["choices"][0]["message"]["tool_calls"][0]
    assert json.loads(back["function"]["arguments"]) == json.loads(args)


def test_stream_flushes_into_a_finish_chunk_without_delta_and_at_a_bare_end():
    vault = Vault(DETECTOR)
    placeholder = vault.redact("bob@example.com")
    chat = StreamedResponseRehydrator(vault, chat=True)
    chat.chunk({"choices": [{"index": 0, "delta": {"content": "hi " + placeholder[:4]}}]})
    last = chat.chunk({"choices": [{"index": 0, "finish_reason": "stop"}]})
    assert last["choices"][0]["delta"]["content"] == placeholder[:4]
    tools = StreamedResponseRehydrator(vault, chat=True)
    tools.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "function": {"arguments": '{"to": "' + placeholder[:6]}}]}}]})
    rest = tools.leftovers()
    assert rest == [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
        {"index": 1, "function": {"arguments": placeholder[:6]}}]}}]
