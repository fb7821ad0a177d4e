"""Downloading images that uploads name by URL, for the workers.

Workers fetch what uploads name, so a URL could point them at the machine's own services or its
network's (a cloud's metadata service at 169.254.169.254, an admin port on localhost): server-side
request forgery. By default a worker connects to public addresses only. The check runs on the
address each connection actually goes to, after DNS resolution and on every redirect, so a name
that resolves to a private address, or re-resolves to one between checks, is refused too.
Networks listed in ``Downloads.allow`` (``IMGSEARCH_DOWNLOAD_ALLOW``) are allowed besides, for an
image store on the local network.

With a proxy in the environment (``http_proxy``, ``https_proxy``), workers connect to the proxy
only; its address must then be allowed, and the proxy applies its own rules to the images' hosts.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from imgsearch.errors import InvalidImage, TransientError, UnknownHost
from imgsearch.ingest.images import DEFAULT_MAX_BYTES

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_TIMEOUT_SECONDS = 20.0  # to connect, and for each read
DEFAULT_DEADLINE_SECONDS = 60.0  # for the whole download
CONCURRENCY = 16  # downloads of one batch at a time: a batch of 32 takes at most two rounds
_CHUNK = 256 * 1024


class Refused(Exception):
    """A connection or redirect the policy doesn't allow. Not an ``OSError``, so urllib passes it
    through instead of wrapping it as a network error (which would be retried). ``where``: the
    host (and its addresses) a connection was refused to, for callers that word it their own way
    (webhook deliveries name their own setting); None for a refused redirect."""

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(message)
        self.where = where


@dataclass(frozen=True)
class Downloads:
    """How workers download images: the size limit, the time limits (``timeout`` to connect and
    for each read, ``deadline`` for the whole body, so a server that trickles bytes can't hold a
    worker past its lease), and the networks they may reach besides public addresses."""

    max_bytes: int = DEFAULT_MAX_BYTES
    allow: tuple[Network, ...] = ()
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    deadline: float = DEFAULT_DEADLINE_SECONDS

    def permits(self, address: Address) -> bool:
        """Whether a worker may connect to ``address``: a public (global unicast) address, or one
        in an allowed network. An IPv4 address written as IPv6 (``::ffff:127.0.0.1``) counts as
        the IPv4 address."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_global and not address.is_multicast:
            return True
        return any(address.version == net.version and address in net for net in self.allow)

    def fetch(self, uri: str) -> bytes:
        """The image at ``uri``. HTTP errors, refused addresses and oversized bodies are the
        image's fault (:class:`InvalidImage`); network errors and slow downloads are transient."""
        started = time.monotonic()
        try:
            with opener(self).open(_ascii_url(uri), timeout=self.timeout) as response:
                data = self._body(response, uri, started)
        except InvalidImage:  # from _body: not one of urllib's ValueErrors below
            raise
        except Refused as exc:
            raise InvalidImage(f"cannot download {uri}: {exc}") from exc
        except urllib.error.HTTPError as exc:
            raise InvalidImage(f"cannot download {uri}: HTTP {exc.code}") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, socket.gaierror):  # the name doesn't resolve (now)
                raise UnknownHost(f"cannot download {uri}: its host doesn't resolve ({exc.reason})") from exc
            raise TransientError(f"cannot download {uri}: {exc}") from exc
        except (TimeoutError, OSError) as exc:
            raise TransientError(f"cannot download {uri}: {exc}") from exc
        except (http.client.InvalidURL, ValueError) as exc:  # a URL urllib can't even request
            raise InvalidImage(f"cannot download {uri}: {exc}") from exc
        except http.client.HTTPException as exc:  # a response cut short or malformed
            raise TransientError(f"cannot download {uri}: {exc!r}") from exc
        return data

    def fetch_all(self, uris: Sequence[str]) -> list[bytes | InvalidImage | TransientError]:
        """:meth:`fetch` each of ``uris``, up to :data:`CONCURRENCY` at a time; each the image or
        why there is none, in order."""

        def one(uri: str) -> bytes | InvalidImage | TransientError:
            try:
                return self.fetch(uri)
            except (InvalidImage, TransientError) as exc:
                return exc

        if len(uris) <= 1:
            return [one(uri) for uri in uris]
        with ThreadPoolExecutor(min(CONCURRENCY, len(uris)), thread_name_prefix="download") as pool:
            return list(pool.map(one, uris))

    def _body(self, response: Any, uri: str, started: float) -> bytes:
        """The response's body, within the size limit and the deadline. A body its
        ``Content-Length`` announces over the limit is refused unread, one that turns out over it
        once ``max_bytes + 1`` bytes are in; one that ends short of what it announced (the
        connection closed mid-way) is transient, not a truncated image."""
        announced = _content_length(response)
        if announced is not None and announced > self.max_bytes:
            raise InvalidImage(f"{uri} is over the {self.max_bytes}-byte limit ({announced} bytes announced)")
        parts: list[bytes] = []
        size = 0
        while size <= self.max_bytes:
            # read1: what has arrived (one read of the socket), so the deadline is checked between
            # a trickle's bytes; read() would wait for the whole chunk
            chunk = response.read1(min(_CHUNK, self.max_bytes + 1 - size))
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
            if time.monotonic() - started > self.deadline:
                raise TransientError(
                    f"cannot download {uri}: not done after {self.deadline:g} s ({size} bytes)"
                )
        # http.client counts down what Content-Length announced; read1 returns b"" when the
        # connection closes early instead of raising IncompleteRead as read() does
        if size > self.max_bytes:
            raise InvalidImage(f"{uri} is over the {self.max_bytes}-byte limit")
        missing = getattr(response, "length", None)
        if missing:
            raise TransientError(
                f"cannot download {uri}: the connection closed after {size} of {size + missing} bytes"
            )
        return b"".join(parts)


def _content_length(response: Any) -> int | None:
    """The body size the response announces, if it announces a usable one."""
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


PUBLIC_ONLY = Downloads()  # the default: public addresses, 50 MiB


def _ascii_url(uri: str) -> str:
    """``uri`` with non-ASCII characters in its path, query and fragment percent-encoded, as
    browsers send them (existing escapes are kept); a non-ASCII host goes as it is (IDNA)."""
    parts = urllib.parse.urlsplit(uri)
    safe = "/:@!$&'()*+,;=%~"
    return urllib.parse.urlunsplit(
        parts._replace(
            path=urllib.parse.quote(parts.path, safe=safe),
            query=urllib.parse.quote(parts.query, safe=safe + "?"),
            fragment=urllib.parse.quote(parts.fragment, safe=safe + "?"),
        )
    )


def _connect(
    policy: Downloads, address: tuple[str, int], timeout: Any = None, source_address: Any = None
) -> socket.socket:
    """``socket.create_connection`` that tries only the addresses ``policy`` permits."""
    host, port = address
    refused: list[str] = []
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # an IPv6 zone id aside
        if not policy.permits(ip):
            refused.append(str(ip))
            continue
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not None and timeout is not getattr(socket, "_GLOBAL_DEFAULT_TIMEOUT", None):
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    if error is not None:
        raise error
    where = host if refused == [host] else f"{host} ({', '.join(dict.fromkeys(refused))})"
    raise Refused(
        f"{where} is not a public address; workers download from private networks only when "
        "IMGSEARCH_DOWNLOAD_ALLOW lists them",
        where,
    )


def _guarded(connection: type[http.client.HTTPConnection], policy: Downloads) -> Any:
    """A factory for ``connection`` objects that connect through :func:`_connect`."""

    def make(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
        conn = connection(*args, **kwargs)
        # http.client's connect() (HTTPS's too, before its TLS handshake) opens the socket with
        # this attribute, socket.create_connection by default
        conn._create_connection = functools.partial(_connect, policy)  # type: ignore[attr-defined]
        return conn

    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: Downloads) -> None:
        super().__init__()
        self._connection = _guarded(http.client.HTTPConnection, policy)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: Downloads) -> None:
        super().__init__()
        self._connection = _guarded(http.client.HTTPSConnection, policy)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)  # ssl's default context, as urlopen's


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, to http(s) only (its own default also follows ftp)."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl)).scheme.lower()
        if scheme not in ("http", "https"):
            raise Refused(f"redirected to {newurl!r}, which is not an http(s) URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@functools.lru_cache(maxsize=32)
def opener(policy: Downloads, *, redirects: bool = True) -> urllib.request.OpenerDirector:
    """urllib's default opener for http and https alone, every connection checked by ``policy``;
    without ``redirects``, a 3xx answer is an ``HTTPError`` (webhook deliveries follow none).
    Built once per policy, as urlopen builds its own once: building one (and reading the proxy
    variables) costs ~0.6 ms, more than a local download (bench/ingest/downloads.py)."""
    built = urllib.request.OpenerDirector()
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        _HTTPHandler(policy),
        _HTTPSHandler(policy),
    ]
    if redirects:
        handlers.append(_RedirectHandler())
    for handler in handlers:
        built.add_handler(handler)
    return built
