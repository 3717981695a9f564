"""One settings schema for the TOML config file, the CLI flags and the docs.

Each field of :class:`Settings` carries its TOML section, help text and (optionally) a
validator in its metadata. ``load_settings`` reads the file, applies flag overrides and
validates; ``add_flags`` builds the argparse options; ``settings_doc`` renders the table in
the README. Add an option in one place: a new field here.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import enum
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from slm.config.adapters import AdapterConfig, parse_adapters
from slm.config.upstreams import UpstreamConfig, parse_upstreams
from slm.errors import ConfigError
from slm.model.planner import KvType
from slm.ops.logs import LogFormat
from slm.sanitise.detectors import ENTITY_TYPES, Detector, DetectorError

DEFAULT_CONFIG_PATH = Path("/etc/slm/slm.toml")


class OmpWaitPolicy(enum.StrEnum):
    """libgomp's ``OMP_WAIT_POLICY`` for llama.cpp's threads (``DEFAULT``: left unset)."""

    ACTIVE = "active"
    PASSIVE = "passive"
    DEFAULT = "default"

Check = Callable[[Any], str | None]
Parse = Callable[[str, Any], Any]  # (TOML key, raw value) -> the value, or ConfigError


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a ``--flag`` reads its text, when the setting's type alone does not say."""

    type: Callable[[str], Any]
    metavar: str


def _int_or_auto(text: str) -> int | str:
    return text if text == "auto" else int(text)


def _parse_ctx(key: str, value: Any) -> int | str:
    """``model.ctx``: a token count or ``auto``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if value == "auto":
        return "auto"
    raise ConfigError(f"{key}: expected integer or \"auto\", got {type(value).__name__}")


def _parse_upstreams(key: str, value: Any) -> tuple[UpstreamConfig, ...]:
    return parse_upstreams(value)


def _parse_adapters(key: str, value: Any) -> tuple[AdapterConfig, ...]:
    return parse_adapters(value)


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def _between(low: int, high: int) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _setting(
    section: str,
    default: Any,
    help: str,
    *,
    check: Check | None = None,
    cli: bool = True,
    secret: bool = False,
    table: type[msgspec.Struct] | None = None,
    parse: Parse | None = None,
    flag: Flag | None = None,
    old_flags: tuple[str, ...] = (),
    old_keys: tuple[str, ...] = (),
) -> Any:
    """Declare one setting: its TOML section, default, help, validator and CLI exposure.

    Names are derived, never written: the TOML key is the field's name without its
    section's prefix (``memory_budget_mb`` is ``[memory] budget_mb``), the flag is
    ``--field-name``. ``old_flags`` and ``old_keys`` are names it had before, still
    accepted. ``table`` makes the setting the whole ``[[section]]`` array of such tables.
    ``parse`` turns a value of the file or a flag into the setting's own when its type
    alone cannot (the default parse checks the value against the field's type); ``flag``
    is how its ``--flag`` reads the command line when that differs from the type."""
    meta = {"section": section, "help": help, "check": check, "cli": cli, "secret": secret,
            "table": table, "parse": parse, "flag": flag, "old_flags": old_flags,
            "old_keys": old_keys}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: copy.copy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The Doorman's whole configuration (TOML sections in brackets)."""

    # [server]
    host: str = _setting(
        "server", "127.0.0.1", "Address to bind; loopback by default. Beyond loopback the "
        "listener must serve HTTPS (`tls_cert`, `tls_key`) and an API key must exist "
        "(or `allow_keyless_network`).")
    port: int = _setting("server", 8080, "TCP port to listen on.", check=_between(0, 65535))
    tls_cert: str | None = _setting(
        "server", None, "PEM certificate (chain) of the listener: with `tls_key` it serves "
        "HTTPS (read at start; a new one needs a restart).")
    tls_key: str | None = _setting("server", None, "PEM private key of `tls_cert`.")
    tls_client_ca: str | None = _setting(
        "server", None, "PEM CA certificates: HTTPS clients must present a certificate "
        "one of them signed (mutual TLS, for fleet callers); API keys still apply.")
    loopback_port: int = _setting(
        "server", 0, "Also serve plain HTTP on 127.0.0.1 at this port, for callers on the "
        "device (0 = no second listener).", check=_between(0, 65535))
    allow_keyless_network: bool = _setting(
        "server", False, "Serve beyond loopback even while no API key exists (anyone who "
        "reaches the port may use every endpoint). Off: `slm serve` refuses to start.",
        cli=False)
    api_keys: list[str] = _setting(
        "server", [], "API keys accepted as `Authorization: Bearer KEY` (none = no auth).",
        cli=False, secret=True,
    )
    api_key_file: str | None = _setting(
        "server", None, "File with one API key per line (added to `api_keys`)."
    )
    key_store: str = _setting(
        "server", "/var/lib/slm/keys.json", "The API key store that `slm keys` manages "
        "(hashed keys with names, scopes and limits; mode 0600).", cli=False,
    )
    max_body_bytes: int = _setting(
        "server", 1_048_576, "Largest request body accepted (413 above).", check=_at_least(1024)
    )
    queue_depth: int = _setting(
        "server", 8, "Requests that may wait for the model; more get 429.", check=_at_least(1)
    )
    request_timeout_s: float = _setting(
        "server", 300.0, "Deadline of a request, queueing included (504 after).",
        check=_at_least(0.01),
    )
    stream_coalesce_ms: float = _setting(
        "server", 20.0, "Streamed text produced within this window goes out as one chunk "
        "(0 = a chunk per token); the first token is never delayed.", check=_at_least(0),
    )
    shutdown_grace_s: float = _setting(
        "server", 10.0, "On SIGTERM, how long in-flight requests may finish before they "
        "are ended with a 503 `shutting_down` error.", check=_at_least(0),
    )
    # [model]
    model: str | None = _setting(
        "model", None, "GGUF model file; default: the embedded SmolLM2-135M-Instruct Q4_1."
    )
    model_sha256: str | None = _setting(
        "model", None, "Expected sha256 of the model file (checked before loading).",
        old_keys=("model_sha256",),
    )
    model_id: str | None = _setting(
        "model", None, "Model name clients must send; default: the file name without .gguf.",
        old_keys=("model_id",),
    )
    ctx: int | str = _setting(
        "model", 4096, "Context size in tokens, or `auto`: the largest that fits "
        "`memory.budget_mb` (the planner decides).",
        check=lambda v: None if v == "auto" or (isinstance(v, int) and v >= 16)
        else "must be at least 16 or \"auto\"",
        parse=_parse_ctx, flag=Flag(_int_or_auto, "INTEGER|auto"),
    )
    # [engine]
    threads: int = _setting(
        "engine", 0, "Threads for decoding (0 = all CPUs this process may use).",
        check=_at_least(0),
    )
    batch: int = _setting(
        "engine", 512, "Prompt tokens decoded per batch.", check=_at_least(1)
    )
    kv_type: KvType = _setting(
        "engine", KvType.F16, "KV cache element type: `f16`, `q8_0` or `q4_0` (quantised "
        "types halve or quarter the cache and turn on flash attention).",
    )
    omp_wait_policy: OmpWaitPolicy = _setting(
        "engine", OmpWaitPolicy.DEFAULT,
        "OpenMP wait policy: `active` spins, `passive` sleeps, `default` spins briefly "
        "then sleeps (libgomp's own default).",
    )
    # [memory]
    memory_budget_mb: float = _setting(
        "memory", 550.0, "Peak memory the service may use with its model; the start is "
        "refused if the planned footprint exceeds it, and new work gets 503 at run time.",
        check=_at_least(1),
    )
    memory_baseline_mb: float = _setting(
        "memory", 58.0, "The runtime's own footprint without a model, added by the planner "
        "(58 MB measured for the Python package; `just budget` measures the binary's on each "
        "build and the image sets it).", check=_at_least(0),
    )
    # [ledger]
    ledger_path: str = _setting(
        "ledger", "/var/lib/slm/ledger.db", "The audit ledger (SQLite); created if missing.",
    )
    ledger_store_prompt: bool = _setting(
        "ledger", False, "Also store the prompt text (as sent to the model) in each record; "
        "by default only its sha256.",
    )
    ledger_head_log_interval_s: float = _setting(
        "ledger", 60.0, "How often the chain head (count, hash) is written to the log.",
        check=_at_least(0.1),
    )
    replica: str | None = _setting(
        "ledger", None, "Litestream replica of the ledger: `file:///path` or "
        "`s3://bucket/prefix` (credentials from AWS_* environment variables).",
    )
    replica_endpoint: str | None = _setting(
        "ledger", None, "S3-compatible endpoint URL for an `s3://` replica.",
    )
    replica_region: str = _setting("ledger", "us-east-1", "S3 region of the replica.")
    replicate_in_service: bool = _setting(
        "ledger", True, "Run Litestream as a child of the service; false when the "
        "`slm-litestream.service` companion unit (`slm ledger replicate`) replicates.",
    )
    replica_sync_interval_s: float = _setting(
        "ledger", 1.0, "How often Litestream ships new ledger pages.", check=_at_least(0.1),
    )
    # [router]
    overflow_to_b: bool = _setting(
        "router", True, "Prompts too long for tier A's context go to tier B instead of "
        "failing (when a tier B upstream is configured).",
    )
    fallback_to_b: bool = _setting(
        "router", True, "Requests tier A cannot take now (queue full, still loading, over "
        "the memory budget) go to tier B (when one is configured).",
    )
    router_health_interval_s: float = _setting(
        "router", 10.0, "How often upstreams with a `health_path` are probed; an unhealthy "
        "one is skipped until it answers again.",
        check=_at_least(0.1), old_flags=("--upstream-health-interval-s",),
    )
    max_retry_after_s: float = _setting(
        "router", 30.0, "Longest upstream `Retry-After` honoured by a retry; longer waits "
        "fail over instead.", check=_at_least(0),
    )
    upstreams: tuple[UpstreamConfig, ...] = _setting(
        "upstream", (), "Tier B / C upstreams, one `[[upstream]]` table each. Tier C hosts "
        "not listed here are never contacted.", cli=False, table=UpstreamConfig,
        parse=_parse_upstreams,
    )
    adapters: tuple[AdapterConfig, ...] = _setting(
        "adapter", (), "LoRA adapters, one `[[adapter]]` table each. Requests pick one as "
        "`model:name`.", cli=False, table=AdapterConfig,
        parse=_parse_adapters,
    )
    # [sanitise]
    sanitise_entities: list[str] = _setting(
        "sanitise", list(ENTITY_TYPES), "Entity types replaced by placeholders before a "
        "request leaves the box.", cli=False,
    )
    sanitise_phone_regions: list[str] = _setting(
        "sanitise", ["US", "GB", "DE", "FR"], "Regions whose national phone number formats "
        "are recognised (international `+` numbers always are).",
        cli=False,
    )
    sanitise_custom: dict[str, str] = _setting(
        "sanitise", {}, "Extra entity types: `{ NAME = \"regex\" }` (the whole match, or "
        "its one capturing group, is replaced).", cli=False,
    )
    # [prompt_cache]
    prompt_cache_memory_mb: float = _setting(
        "prompt_cache", 32.0, "KV snapshots of recent prompts kept in memory (0 = off); "
        "never more than the memory budget leaves beside the model's planned footprint.",
        check=_at_least(0),
    )
    prompt_cache_min_tokens: int = _setting(
        "prompt_cache", 64, "Shortest prompt (with its answer) worth a snapshot.",
        check=_at_least(1),
    )
    prompt_cache_dir: str | None = _setting(
        "prompt_cache", None, "Directory keeping snapshots across restarts (entries leaving "
        "memory, and all at shutdown), one subdirectory per model sha256.",
    )
    prompt_cache_disk_mb: float = _setting(
        "prompt_cache", 256.0, "Most bytes of snapshots kept in `prompt_cache.dir`.",
        check=_at_least(0),
    )
    # [documents]
    documents_enabled: bool = _setting(
        "documents", True, "Accept documents at `POST /v1/documents` for chat context.",
    )
    documents_max_bytes: int = _setting(
        "documents", 10 * 1024 * 1024, "Largest document upload (413 above).",
        check=_at_least(1024),
    )
    documents_max_chars: int = _setting(
        "documents", 1_000_000, "Most text one document may hold once extracted (413 above).",
        check=_at_least(1),
    )
    documents_max_stored_chars: int = _setting(
        "documents", 4_000_000, "Text held for all documents together (429 above); "
        "documents live in memory only.", check=_at_least(1),
    )
    documents_ttl_s: float = _setting(
        "documents", 3600.0, "How long a document is kept after its upload; then it is "
        "forgotten.", check=_at_least(1),
    )
    documents_chunk_tokens: int = _setting(
        "documents", 256, "Tokens per chunk of document text.",
        check=_at_least(16),
    )
    documents_context_tokens: int = _setting(
        "documents", 1536, "Most tokens of document excerpts added to a chat request (less "
        "when the context has less room).", check=_at_least(16),
    )
    documents_extract_timeout_s: float = _setting(
        "documents", 30.0, "Deadline for reading one document (its parser is then killed).",
        check=_at_least(1),
    )
    documents_extract_memory_mb: int = _setting(
        "documents", 384, "Address-space limit of the child process that reads a document "
        "(one at a time; it is also the first the OOM killer takes).", check=_at_least(64),
    )
    # [signing]
    trusted_root: str | None = _setting(
        "signing", None, "Pinned Sigstore `trusted_root.json`. When set, nothing loads "
        "unless its bundle (`FILE.sigstore.json` beside it) verifies offline against this "
        "root and the signer below: the model at every start, and `signing.file_list`.",
    )
    signing_identity: str | None = _setting(
        "signing", None, "The certificate identity (SAN) every signature must carry.",
        old_flags=("--signer-identity",),
    )
    signing_issuer: str | None = _setting(
        "signing", None, "The OIDC issuer every signature's certificate must name.",
        old_flags=("--signer-issuer",),
    )
    file_list: str | None = _setting(
        "signing", None, "A signed list of files and their sha256 (the appliance's unpacked "
        "binary): at start every listed file must match and no unlisted file may sit in "
        "the listed directory.",
    )
    installed_release: str | None = _setting(
        "signing", None, "File recording the newest release this device has served "
        "(written once the service is ready): a start whose signed file list names an older "
        "release is refused, a downgrade (needs `signing.file_list`).",
    )
    # [logging]
    log_level: str = _setting(
        "logging", "info", "Log level.", check=_one_of("debug", "info", "warning", "error")
    )
    log_format: LogFormat = _setting(
        "logging", LogFormat.AUTO, "`journal` (structured journald entries: REQUEST_ID, TIER, "
        "STATUS... fields), `json` (one object a line on stderr), `text`, or `auto`: journal "
        "when stderr is connected to the journal (run by systemd), text otherwise.",
    )

    def detector(self) -> Detector:
        """The sanitiser's detector for these settings (ConfigError when they are bad)."""
        try:
            return Detector(self.sanitise_entities, phone_regions=self.sanitise_phone_regions,
                            custom=self.sanitise_custom)
        except DetectorError as exc:
            raise ConfigError(f"sanitise: {exc.message}", hint=exc.hint) from None

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for logs and `slm config show`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and value:
                value = ["***"] * len(value)
            out[f.name] = msgspec.to_builtins(value)
        return out


def _fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(Settings)


def _key(f: dataclasses.Field[Any]) -> str:
    """A setting's key in its TOML section: the field's name without the section prefix."""
    return f.name.removeprefix(f.metadata["section"] + "_")


def _toml_key(f: dataclasses.Field[Any]) -> str:
    """``section.key`` of a setting in the TOML file (``[[section]]`` for an array)."""
    if f.metadata["table"] is not None:
        return f"[[{f.metadata['section']}]]"
    return f"{f.metadata['section']}.{_key(f)}"


def _flag(f: dataclasses.Field[Any]) -> str:
    return "--" + f.name.replace("_", "-")


def _base_type(field_name: str) -> tuple[type, bool]:
    """The value type of a setting and whether it may be None."""
    hint = typing.get_type_hints(Settings)[field_name]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], type(None) in typing.get_args(hint)
    if origin in (list, dict, tuple):
        return origin, False
    return hint, False


def _type_name(kind: type) -> str:
    if issubclass(kind, enum.Enum):
        return "string"
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
            dict: "table", tuple: "array of tables"}[kind]


def _coerce(f: dataclasses.Field[Any], value: Any) -> Any:
    """A value of the file or a flag as the setting's: its own parse function, else a
    check against the field's type (ints are accepted where floats are expected)."""
    key = _toml_key(f)
    kind, optional = _base_type(f.name)
    if value is None and optional:
        return None
    parse: Parse | None = f.metadata["parse"]
    if parse is not None:
        return parse(key, value)
    if issubclass(kind, enum.Enum) and isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{key}: must be one of {', '.join(m.value for m in kind)} "
                              f"(got {value!r})") from None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list and ok and not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings")
    if kind is dict and ok and not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{key}: expected a table of strings")
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(kind)}, got {type(value).__name__}")
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML file into a flat ``{setting: value}`` dict, refusing unknown keys."""
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    by_section: dict[str, dict[str, dataclasses.Field[Any]]] = {}
    for f in _fields():
        keys = ("*",) if f.metadata["table"] is not None else (_key(f), *f.metadata["old_keys"])
        by_section.setdefault(f.metadata["section"], {}).update(dict.fromkeys(keys, f))
    flat: dict[str, Any] = {}
    for section, table in doc.items():
        if section not in by_section:
            raise ConfigError(f"{path}: unknown section [{section}]")
        if "*" in by_section[section]:  # an array of tables, taken whole
            flat[by_section[section]["*"].name] = table
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{section}' must be a table ([{section}])")
        for key, value in table.items():
            if key not in by_section[section]:
                raise ConfigError(f"{path}: unknown key '{section}.{key}'")
            flat[by_section[section][key].name] = value
    return flat


def load_settings(
    config_path: Path | None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build validated settings: defaults < config file < overrides (CLI flags).

    With no explicit path, ``/etc/slm/slm.toml`` is read when it exists.
    """
    if config_path is None and DEFAULT_CONFIG_PATH.is_file():
        config_path = DEFAULT_CONFIG_PATH
    values: dict[str, Any] = read_config_file(config_path) if config_path else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    checked: dict[str, Any] = {}
    for f in _fields():
        if f.name not in values:
            continue
        key = _toml_key(f)
        value = _coerce(f, values[f.name])
        check = f.metadata["check"]
        problem = check(value) if check and value is not None else None
        if problem:
            raise ConfigError(f"{key}: {problem} (got {value!r})")
        checked[f.name] = value
    settings = Settings(**checked)
    settings.detector()  # refuse a bad entity, region or pattern at start
    if settings.trusted_root and not (settings.signing_identity and settings.signing_issuer):
        raise ConfigError("signing.trusted_root needs signing.identity and signing.issuer "
                          "(who must have signed)")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("server.tls_cert and server.tls_key go together")
    if settings.tls_client_ca and not settings.tls_cert:
        raise ConfigError("server.tls_client_ca needs server.tls_cert and server.tls_key")
    if settings.file_list and not settings.trusted_root:
        raise ConfigError("signing.file_list needs signing.trusted_root")
    if settings.installed_release and not settings.file_list:
        raise ConfigError("signing.installed_release needs signing.file_list (the release "
                          "is named in the signed file list)")
    return settings


def load_api_keys(settings: Settings) -> list[str]:
    """All accepted API keys: ``api_keys`` plus the lines of ``api_key_file``."""
    keys = list(settings.api_keys)
    if settings.api_key_file:
        try:
            text = Path(settings.api_key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"server.api_key_file: cannot read {settings.api_key_file}: {exc.strerror}"
            ) from None
        keys += [line.strip() for line in text.splitlines() if line.strip()]
    if any(len(k) < 8 for k in keys):
        raise ConfigError("server.api_keys: every key must be at least 8 characters")
    return keys


def add_flags(parser: argparse.ArgumentParser, only_section: str | None = None) -> None:
    """Add one ``--flag`` per CLI-exposed setting (defaults None: unset flags don't override)."""
    for f in _fields():
        if not f.metadata["cli"] or only_section not in (None, f.metadata["section"]):
            continue
        if f.name == "replica" and only_section:  # `ledger restore` has its own --replica
            continue
        kind, _ = _base_type(f.name)
        flags = (_flag(f), *f.metadata["old_flags"])
        help_text = f"{f.metadata['help']} [{_toml_key(f)}]"
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        elif issubclass(kind, enum.Enum):
            parser.add_argument(*flags, dest=f.name, default=None, help=help_text,
                                choices=[m.value for m in kind])
        elif f.metadata["flag"] is not None:
            reads: Flag = f.metadata["flag"]
            parser.add_argument(*flags, dest=f.name, type=reads.type, default=None,
                                help=help_text, metavar=reads.metavar)
        else:
            parser.add_argument(*flags, dest=f.name, type=kind, default=None, help=help_text,
                                metavar=_type_name(kind).upper())


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags on the command line."""
    return {f.name: getattr(args, f.name, None) for f in _fields() if f.metadata["cli"]}


def table_doc(table: type[msgspec.Struct]) -> str:
    """The keys of one ``[[section]]`` table, from its type: each with what it holds (its
    description, its choices), whether it is required, and its default."""
    hints = typing.get_type_hints(table, include_extras=True)
    keys = []
    for f in msgspec.structs.fields(table):
        hint, notes = hints[f.name], []
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extras = typing.get_args(hint)
            notes += [m.description for m in extras
                      if isinstance(m, msgspec.Meta) and m.description]
        if typing.get_origin(hint) is typing.Literal:
            notes.append(" or ".join(str(c) for c in typing.get_args(hint)))
        if f.required:
            notes.append("required")
        elif f.default not in (None, msgspec.NODEFAULT):
            notes.append(repr(f.default))
        keys.append(f"`{f.name}`" + (f" ({'; '.join(notes)})" if notes else ""))
    return ", ".join(keys)


def settings_doc() -> str:
    """A Markdown table of every setting, for the README."""
    rows = ["| TOML key | flag | default | meaning |", "|---|---|---|---|"]
    for f in _fields():
        default: Any = f.default  # a dataclass field has a default or a default factory
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        flag = _flag(f) if f.metadata["cli"] else "(file only)"
        if isinstance(default, tuple):
            default = []
        if isinstance(default, enum.Enum):
            default = default.value
        meaning = f.metadata["help"]
        if f.metadata["table"] is not None:
            meaning += f" Keys: {table_doc(f.metadata['table'])}."
        if f.metadata["old_flags"]:
            flag += "`, `".join(("", *f.metadata["old_flags"]))
        rows.append(f"| `{_toml_key(f)}` | `{flag}` | `{default!r}` | {meaning} |")
    return "\n".join(rows)


def environment_threads() -> int:
    """CPUs this process may run on (respects affinity and cgroup cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
