"""The ``slm`` command: ``serve`` the Doorman, ``chat`` with it, audit its ``ledger``,
``plan`` memory, ``sanitise`` text, ``verify`` signatures, manage API ``keys``, inspect
``config``.

Exit codes: 0 ok, 1 runtime failure (model missing or corrupt, load failure, port in use,
broken ledger chain), 2 invalid configuration or usage, a ledger or key store that cannot be
read, or a refused key change, 3 an artefact refused by the signature check (the unit does
not restart on 3), 130 interrupted (Ctrl-C). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from slm import __version__
from slm.access.keys import KeyStoreError
from slm.audit.ledger import LedgerError
from slm.config.settings import (
    Settings,
    add_flags,
    flag_overrides,
    load_api_keys,
    load_settings,
    settings_doc,
)
from slm.documents.extract import DocumentKind
from slm.errors import ConfigError, SignatureError, SlmError
from slm.model.planner import KvType

if TYPE_CHECKING:
    from slm.audit.replication import Replica


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slm", description="service-slm, the Doorman: an OpenAI-compatible LLM gateway."
    )
    parser.add_argument("--version", action="version", version=f"slm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP service")
    serve.add_argument("--config", type=Path, default=None,
                       help="TOML config file (default: /etc/slm/slm.toml when present)")
    add_flags(serve)

    ledger = sub.add_parser("ledger", help="verify, export or restore the audit ledger")
    ledger_sub = ledger.add_subparsers(dest="action", required=True)
    verify = ledger_sub.add_parser(
        "verify", help="walk the hash chain (exit 0 intact, 1 broken, 2 unreadable)")
    verify.add_argument("--db", type=Path, required=True, help="ledger file")
    verify.add_argument("--expect", metavar="COUNT:HASH",
                        help="a chain head from the service log that the ledger must contain")
    export = ledger_sub.add_parser("export", help="stream records as CSV or JSON lines")
    export.add_argument("--db", type=Path, required=True, help="ledger file")
    export.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    export.add_argument("--since", help="only records at or after this ISO 8601 time")
    restore = ledger_sub.add_parser("restore", help="restore the ledger from its replica")
    restore.add_argument("--out", type=Path, required=True, help="new ledger file to write")
    restore.add_argument("--replica", help="replica URL (default: ledger.replica of --config)")
    restore.add_argument("--config", type=Path, default=None, help="TOML config file")
    add_flags(restore, only_section="ledger")
    replicate = ledger_sub.add_parser(
        "replicate", help="run Litestream for the ledger in the foreground (the "
        "slm-litestream.service companion unit) until SIGTERM, then ship the last pages")
    replicate.add_argument("--config", type=Path, default=None, help="TOML config file")
    replicate.add_argument(
        "--check", action="store_true",
        help="only say whether this config wants the companion unit (exit 0) or not (exit 1)")
    add_flags(replicate, only_section="ledger")

    plan = sub.add_parser("plan", help="predict the memory footprint of a model")
    plan.add_argument("--model", type=Path, default=None,
                      help="GGUF file (default: the embedded default model)")
    plan.add_argument("--ctx", type=_positive, default=None,
                      help="context size (default: the trained one)")
    plan.add_argument("--kv-type", choices=[t.value for t in KvType],
                     default=KvType.F16.value)
    plan.add_argument("--batch", type=_positive, default=512,
                      help="micro-batch size (n_ubatch)")
    plan.add_argument("--parallel", type=_positive, default=1,
                      help="parallel sequences sharing the context (recurrent state and "
                      "sliding windows grow with it)")
    plan.add_argument("--baseline-mb", type=float, default=None,
                      help="runtime footprint without a model (default: memory.baseline_mb)")
    plan.add_argument("--budget", type=float, metavar="MB",
                      help="also answer the largest context that fits this budget")
    plan.add_argument("--json", action="store_true", help="machine-readable output")

    sanitise = sub.add_parser(
        "sanitise", help="redact PII and secrets from stdin (what tier B / C would receive)")
    sanitise.add_argument("--json", action="store_true",
                          help='print {"text", "entities": [{"type", "start", "end"}]} with '
                          "offsets into the input")
    sanitise.add_argument("--config", type=Path, default=None,
                          help="TOML config file (its [sanitise] section is used)")

    verify = sub.add_parser(
        "verify", help="the start-up signature check alone: the signed file list and the "
        "model against signing.trusted_root (exit 0 verified, 3 refused)")
    verify.add_argument("--config", type=Path, default=None, help="TOML config file")
    add_flags(verify)

    chat = sub.add_parser(
        "chat", help="chat with a Doorman in the terminal, or answer one question (-p)")
    _add_client_flags(chat)
    chat.add_argument("--model-file", type=Path, default=None,
                      help="start a private Doorman on this GGUF file instead (default "
                      "settings, no config file) and chat with it")
    chat.add_argument("--ledger", type=Path, default=None,
                      help="with --model-file: keep its audit ledger here (default: a "
                      "temporary file, removed at the end)")
    chat.add_argument("--model", help="model id to ask (default: the first one listed)")
    chat.add_argument("-s", "--system", help="system prompt")
    chat.add_argument("-p", "--prompt",
                      help="ask this one question and exit (piped stdin is appended)")
    chat.add_argument("--max-tokens", type=_positive, default=None)
    chat.add_argument("--temperature", type=float, default=None)
    chat.add_argument("--stats", action="store_true",
                      help="after each answer, print its token counts and finish reason")

    chat.add_argument("--document", action="append", default=[], metavar="ID",
                      help="answer from this document (an id from 'slm ingest'; repeatable)")

    ingest = sub.add_parser(
        "ingest", help="send a PDF, DOCX, XLSX or Markdown file to a Doorman for chat "
        "context; prints its document id")
    ingest.add_argument("file", type=Path)
    _add_client_flags(ingest)
    ingest.add_argument("--json", action="store_true",
                        help="print the document's whole description as JSON")

    extract = sub.add_parser(
        "extract-text", help="(internal) a document on stdin as JSON sections on stdout: "
        "the limited child process the service reads uploads in")
    extract.add_argument("--kind", required=True,
                         choices=[k.value for k in DocumentKind])
    extract.add_argument("--max-chars", type=_positive, required=True)
    extract.add_argument("--max-unpacked-bytes", type=_positive, required=True)
    extract.add_argument("--memory-mb", type=_positive, required=True)
    extract.add_argument("--cpu-s", type=_positive, required=True)

    keys = sub.add_parser("keys", help="create, list or revoke API keys (server.key_store)")
    keys.add_argument("--config", type=Path, default=None, help="TOML config file")
    keys.add_argument("--key-store", type=Path, default=None,
                      help="the key store file (default: server.key_store of --config)")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser(
        "create", help="make a key and print it (shown this once; the store keeps a hash)")
    create.add_argument("name", help="the key's name, as the ledger records it")
    create.add_argument("--scope", default="inference",
                        help="comma-separated: inference, documents, admin "
                        "(default: inference)")
    create.add_argument("--rpm", type=_positive, default=None, help="requests per minute")
    create.add_argument("--tpm", type=_positive, default=None, help="tokens per minute")
    create.add_argument("--tokens-per-day", type=_positive, default=None,
                        help="tokens per UTC day (counted from the ledger across restarts)")
    create.add_argument("--tokens-per-month", type=_positive, default=None,
                        help="tokens per UTC calendar month")
    keys_list = keys_sub.add_parser("list", help="the keys' names, scopes, limits, state")
    keys_list.add_argument("--json", action="store_true", help="machine-readable output")
    revoke = keys_sub.add_parser("revoke", help="revoke a key (from its next request on)")
    revoke.add_argument("name")

    config = sub.add_parser("config", help="show the effective configuration or its docs")
    config.add_argument("action", choices=["show", "doc"])
    config.add_argument("--config", type=Path, default=None, help="TOML config file")
    add_flags(config)
    return parser


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    """How ``slm chat`` and ``slm ingest`` reach a Doorman: its URL and API key."""
    parser.add_argument("--url", default=os.environ.get("SLM_URL", "http://127.0.0.1:8080"),
                        help="the Doorman's base URL (default: $SLM_URL or "
                        "http://127.0.0.1:8080)")
    parser.add_argument("--api-key-file", type=Path, default=None,
                        help="file whose first line is the API key (default: $SLM_API_KEY)")


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, flag_overrides(args))
    api_keys = load_api_keys(settings)
    from slm.access.keys import KeyStore

    stored = KeyStore(Path(settings.key_store)).keys()  # a damaged store stops the start
    from slm.server.listeners import check_exposure

    check_exposure(settings, has_keys=bool(api_keys) or any(k.active for k in stored))
    from slm.server.startup import serve

    return serve(settings, api_keys)


def _verify(args: argparse.Namespace) -> int:
    from slm.server.startup import check_signatures, model_path

    settings = load_settings(args.config, flag_overrides(args))
    if not settings.trusted_root:
        raise ConfigError("nothing to verify: signing.trusted_root is not set")
    for done in check_signatures(settings, model_path(settings)):
        print(done.line())
    return 0


def _keys(args: argparse.Namespace) -> int:
    from slm.access.keys import LIMITS, KeyStore, parse_scopes

    path = args.key_store or Path(load_settings(args.config).key_store)
    store = KeyStore(path)
    if args.action == "create":
        print(store.create(args.name, parse_scopes(args.scope),
                           **{name: getattr(args, name) for name in LIMITS}))
        return 0
    if args.action == "revoke":
        key = store.revoke(args.name)
        print(f"revoked {key.name} at {key.revoked}")
        return 0
    keys = store.keys()
    if args.json:
        print(json.dumps([key.public_json() for key in keys], indent=1))
        return 0
    for key in keys:
        limits = ", ".join(f"{n.replace('_', ' ')} {getattr(key, n)}" for n in LIMITS
                           if getattr(key, n))
        state = f"revoked {key.revoked}" if key.revoked else "active"
        print(f"{key.name}\t{','.join(sorted(key.scopes))}\t{limits or '-'}\t"
              f"created {key.created}\t{state}")
    return 0


def _replica(settings: Settings, url: str | None) -> Replica:
    from slm.audit.replication import Replica

    url = url or settings.replica
    if not url:
        raise ConfigError("no replica: pass --replica URL or set ledger.replica in --config")
    return Replica(url, endpoint=settings.replica_endpoint, region=settings.replica_region,
                   sync_interval_s=settings.replica_sync_interval_s)


def _ledger(args: argparse.Namespace) -> int:
    from slm.audit import verify_export

    if args.action == "verify":
        expect = None
        if args.expect:
            count, _, head = args.expect.partition(":")
            if not count.isdigit() or len(head) != 64:
                raise ConfigError("--expect takes COUNT:HASH as logged in 'ledger head' lines")
            expect = (int(count), head)
        verdict = verify_export.verify(args.db, expect)
        if verdict.ok:
            print(f"ok: {verdict.count} records, head {verdict.head}")
            return 0
        print(f"broken at record {verdict.broken_id}: {verdict.reason} "
              f"({verdict.count} records verified before it)")
        return 1
    if args.action == "export":
        try:
            verify_export.export(args.db, args.format, args.since)
        except BrokenPipeError:  # `| head` closed the pipe: not an error
            sys.stderr.close()
        return 0
    settings = load_settings(args.config, flag_overrides(args))
    if args.action == "replicate":
        return _replicate(settings, check=args.check)
    from slm.audit.replication import restore

    restore(_replica(settings, args.replica), args.out)
    verdict = verify_export.verify(args.out)
    print(f"restored {args.out}: {verdict.count} records, head {verdict.head}"
          + ("" if verdict.ok else f"; chain broken at record {verdict.broken_id}"))
    return 0 if verdict.ok else 1


def _replicate(settings: Settings, *, check: bool) -> int:
    """Foreground replication for the companion unit (``ledger.replicate_in_service`` off)."""
    import signal
    import threading

    from slm.audit.replication import Replicator
    from slm.ops.logs import setup_logging

    wanted = bool(settings.replica) and not settings.replicate_in_service
    if check:
        return 0 if wanted else 1
    if not wanted:
        raise ConfigError("ledger replicate needs ledger.replica set and "
                          "ledger.replicate_in_service = false")
    setup_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    replicator = Replicator(_replica(settings, None), Path(settings.ledger_path))
    replicator.start()
    stop.wait()
    replicator.stop()
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _plan(args: argparse.Namespace) -> int:
    from slm.model.file import default_model_path
    from slm.model.gguf_meta import read_gguf
    from slm.model.planner import largest_context, megabytes, plan

    path = args.model or default_model_path()
    info = read_gguf(path)
    ctx = args.ctx or int(info.arch("context_length", 4096))
    baseline = args.baseline_mb if args.baseline_mb is not None else Settings().memory_baseline_mb
    common = {"kv_type": args.kv_type, "n_ubatch": args.batch, "baseline_mb": baseline,
              "n_seq": args.parallel, "info": info}
    p = plan(path, n_ctx=ctx, **common)
    fits = largest_context(path, args.budget, **common) if args.budget else None
    if args.json:
        print(json.dumps({**p.as_dict(), "model": str(path),
                          "architecture": info.architecture, "budget_mb": args.budget,
                          "largest_context": fits}, indent=2))
        return 0
    print(f"{path.name} ({info.architecture}, {p.attention} attention), context {ctx}, "
          f"KV {args.kv_type}")
    for label, value in (("weights", p.weights), ("KV cache", p.kv_cache),
                         ("compute", p.compute), ("output", p.output),
                         ("tokenizer", p.tokenizer),
                         ("runtime", p.baseline), ("total", p.total)):
        print(f"  {label:10} {megabytes(value):>14}")
    if fits is not None:
        if fits == 0:
            print(f"nothing fits {args.budget:g} MB: even a 256-token context needs more")
            return 1
        beyond = largest_context(path, args.budget, cap_to_trained=False, **common)
        print(f"largest context within {args.budget:g} MB: {fits}"
              + (f" (the trained maximum; memory alone would allow {beyond})"
                 if beyond > fits else ""))
    return 0


def _sanitise(args: argparse.Namespace) -> int:
    from slm.sanitise.vault import Vault

    detector = load_settings(args.config).detector()
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"stdin is not UTF-8 text (byte {exc.start})") from None
    if args.json:
        spans = detector.find(text)
        redacted = Vault(detector).replace(text, spans)
        print(json.dumps({"text": redacted, "entities": [
            {"type": s.type, "start": s.start, "end": s.end} for s in spans]},
            ensure_ascii=False))
    else:
        sys.stdout.write(Vault(detector).redact(text))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from slm.cli.chat import run_chat

    return run_chat(args.url, model=args.model, model_file=args.model_file,
                    ledger=args.ledger, api_key_file=args.api_key_file, system=args.system,
                    prompt=args.prompt, max_tokens=args.max_tokens,
                    temperature=args.temperature, documents=args.document,
                    stats=args.stats)


def _ingest(args: argparse.Namespace) -> int:
    import mimetypes

    from slm.cli.chat import api_key
    from slm.cli.chat_client import DoormanClient

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from None
    content_type = mimetypes.guess_type(args.file.name)[0] or "application/octet-stream"
    with DoormanClient(args.url, api_key(args.api_key_file)) as client:
        card = client.upload(args.file.name, data, content_type)
    print(json.dumps(card, indent=2) if args.json else card["id"])
    return 0


def _extract_text(args: argparse.Namespace) -> int:
    from slm.documents.isolated import extract_text_main

    return extract_text_main(args.kind, args.max_chars, args.max_unpacked_bytes,
                             args.memory_mb, args.cpu_s)


def _config(args: argparse.Namespace) -> int:
    if args.action == "doc":
        print(settings_doc())
        return 0
    settings = load_settings(args.config, flag_overrides(args))
    print(json.dumps(settings.redacted(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``slm`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "ledger":
            return _ledger(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "sanitise":
            return _sanitise(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "chat":
            return _chat(args)
        if args.command == "ingest":
            return _ingest(args)
        if args.command == "extract-text":
            return _extract_text(args)
        if args.command == "keys":
            return _keys(args)
        return _config(args)
    except ConfigError as exc:
        print(f"slm: config error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyStoreError as exc:  # a key store that cannot be read, or a refused change
        print(f"slm: keys: {exc.one_line()}", file=sys.stderr)
        return 2
    except LedgerError as exc:  # a ledger that cannot be read: distinct from a broken chain
        print(f"slm: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except SignatureError as exc:
        print(f"slm: refused: {exc.one_line()}", file=sys.stderr)
        return 3
    except SlmError as exc:
        print(f"slm: error: {exc.one_line()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
