"""Where the Doorman listens, and what it refuses to listen as.

The main listener is ``server.host:server.port``: plain HTTP on loopback, HTTPS with
``server.tls_cert`` / ``server.tls_key`` (and client certificates with
``server.tls_client_ca``). Beyond loopback it must be HTTPS, and an API key must exist
unless ``server.allow_keyless_network`` says otherwise: both are refused at start, before
anything is bound. ``server.loopback_port`` adds a plain-HTTP listener on 127.0.0.1 for
callers on the device. Sockets are bound here, before the HTTP servers start, so a port in
use or a bad certificate is one line and no half-started server.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import ssl

from slm.config.settings import Settings
from slm.errors import ConfigError, SlmError

LOOPBACK = "127.0.0.1"


class ListenError(SlmError):
    """A listener's address cannot be bound."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (``0.0.0.0`` and names other
    than ``localhost`` are not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def keys_required(settings: Settings) -> bool:
    """Whether a request needs a key even while none exists: beyond loopback, unless
    ``server.allow_keyless_network`` (there, no key means nobody gets in)."""
    return not (is_loopback(settings.host) or settings.allow_keyless_network)


def check_exposure(settings: Settings, *, has_keys: bool) -> None:
    """Refuse (ConfigError, exit 2) a listener beyond loopback that serves plain HTTP, or
    that anyone could use because no API key exists."""
    if is_loopback(settings.host):
        return
    if not settings.tls_cert:
        raise ConfigError(
            f"server.host {settings.host!r} is beyond loopback, where the Doorman serves "
            f"only HTTPS", hint="set server.tls_cert and server.tls_key, or bind 127.0.0.1")
    if keys_required(settings) and not has_keys:
        raise ConfigError(
            f"server.host {settings.host!r} is beyond loopback and no API key exists",
            hint="create one with `slm keys create NAME`, or set "
                 "server.allow_keyless_network = true")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context (TLS 1.2 at least; client certificates required with
    ``tls_client_ca``), or None for plain HTTP. A file that cannot be loaded is a
    ConfigError naming it."""
    if not (settings.tls_cert and settings.tls_key):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"server.tls_cert / server.tls_key ({settings.tls_cert}, "
                          f"{settings.tls_key}) cannot be loaded: {_why(exc)}") from None
    if settings.tls_client_ca:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"server.tls_client_ca ({settings.tls_client_ca}) cannot be "
                              f"loaded: {_why(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _why(exc: OSError | ssl.SSLError) -> str:
    return getattr(exc, "reason", None) or exc.strerror or str(exc)


@dataclasses.dataclass
class Listener:
    """One bound socket and how it serves (``tls`` None: plain HTTP)."""

    host: str
    port: int
    sock: socket.socket
    tls: ssl.SSLContext | None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def bind(host: str, port: int, tls: ssl.SSLContext | None) -> Listener:
    """A listening TCP socket on ``host:port`` (ListenError when it cannot be bound)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(False)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return Listener(host, sock.getsockname()[1], sock, tls)


def open_listeners(settings: Settings, tls: ssl.SSLContext | None) -> list[Listener]:
    """The main listener (HTTPS with ``tls``), then the plain loopback one when
    ``server.loopback_port`` is set."""
    listeners = [bind(settings.host, settings.port, tls)]
    if settings.loopback_port:
        try:
            listeners.append(bind(LOOPBACK, settings.loopback_port, None))
        except ListenError:
            listeners[0].sock.close()
            raise
    return listeners
