"""Image downloads: public addresses only unless a network is allowed, checked on every connection
(after DNS, on every redirect), over a real HTTP server on localhost."""

from __future__ import annotations

import http.server
import ipaddress
import re
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from imgsearch.errors import InvalidImage, TransientError
from imgsearch.ingest.downloads import Downloads
from imgsearch.settings import Settings, describe_invalid
from tests.helpers import FileServer, image_bytes, serve_files

LOOPBACK = Downloads(allow=(ipaddress.ip_network("127.0.0.1/32"),))
REFUSED = "is not a public address; workers download from private networks only when IMGSEARCH_DOWNLOAD_ALLOW lists them"


@pytest.mark.parametrize("address", ["8.8.8.8", "151.101.1.69", "2a00:1450:4001:80b::200e"])
def test_public_addresses_are_permitted(address: str) -> None:
    assert Downloads().permits(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",  # loopback
        "127.9.9.9",
        "0.0.0.0",  # this host
        "10.1.2.3",  # private
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # link-local: cloud metadata services
        "100.64.0.1",  # carrier-grade NAT
        "224.0.0.1",  # multicast
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",  # unique local
        "::ffff:127.0.0.1",  # IPv4 written as IPv6
        "::ffff:169.254.169.254",
        "ff02::1",
    ],
)
def test_other_addresses_are_refused_by_default(address: str) -> None:
    assert not Downloads().permits(ipaddress.ip_address(address))


def test_allowed_networks_are_permitted_and_nothing_else() -> None:
    policy = Downloads(allow=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")))
    assert policy.permits(ipaddress.ip_address("10.200.0.5"))
    assert policy.permits(ipaddress.ip_address("::ffff:10.0.0.1"))
    assert policy.permits(ipaddress.ip_address("fd12::1"))
    assert not policy.permits(ipaddress.ip_address("192.168.0.1"))
    assert not policy.permits(ipaddress.ip_address("127.0.0.1"))


def test_an_allowed_host_is_downloaded(image_server: FileServer) -> None:
    (image_server.root / "a.png").write_bytes(image_bytes(1))
    assert LOOPBACK.fetch(f"{image_server.url}/a.png") == image_bytes(1)
    assert image_server.paths == ["/a.png"]


@pytest.mark.parametrize(
    ("host", "named"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "localhost (127.0.0.1"),  # a name is refused by what it resolves to
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
    ],
)
def test_a_private_host_is_refused_without_a_request(image_server: FileServer, host: str, named: str) -> None:
    (image_server.root / "a.png").write_bytes(image_bytes(1))
    port = image_server.url.rsplit(":", 1)[1]
    with pytest.raises(InvalidImage, match=re.escape(named) + ".*" + re.escape(REFUSED)):
        Downloads().fetch(f"http://{host}:{port}/a.png")
    assert image_server.paths == []


def test_cloud_metadata_is_refused_before_connecting() -> None:
    with pytest.raises(InvalidImage, match=re.escape(f"169.254.169.254 {REFUSED}")):
        Downloads(timeout=0.5).fetch("http://169.254.169.254/latest/meta-data/")


def test_a_redirect_is_checked_like_the_first_request(image_server: FileServer) -> None:
    (image_server.root / "a.png").write_bytes(image_bytes(2))
    port = image_server.url.rsplit(":", 1)[1]
    assert LOOPBACK.fetch(f"{image_server.url}/redirect?to=/a.png") == image_bytes(2)
    with pytest.raises(InvalidImage, match=re.escape(f"127.0.0.2 {REFUSED}")):
        LOOPBACK.fetch(f"{image_server.url}/redirect?to=http://127.0.0.2:{port}/a.png")
    with pytest.raises(
        InvalidImage, match=re.escape("redirected to 'ftp://127.0.0.1/a.png', which is not an http(s) URL")
    ):
        LOOPBACK.fetch(f"{image_server.url}/redirect?to=ftp://127.0.0.1/a.png")
    assert image_server.paths == [
        "/redirect?to=/a.png",
        "/a.png",
        f"/redirect?to=http://127.0.0.2:{port}/a.png",
        "/redirect?to=ftp://127.0.0.1/a.png",
    ]


def test_an_allowed_host_that_is_down_is_transient(image_server: FileServer) -> None:
    port = image_server.url.rsplit(":", 1)[1]
    down = Downloads(allow=(ipaddress.ip_network("127.0.0.0/8"),))
    with pytest.raises(TransientError, match="Connection refused"):
        down.fetch(f"http://127.0.0.3:{port}/a.png")  # nothing listens on 127.0.0.3


def trickle(handler: http.server.BaseHTTPRequestHandler) -> None:
    """Promises 1,000 bytes and sends one every 50 ms: each read well within any timeout."""
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    try:
        for _ in range(1000):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.05)
    except OSError:  # the client gave up
        pass


def test_a_download_that_trickles_past_its_deadline_is_transient(tmp_path: Path) -> None:
    with serve_files(tmp_path, {"/trickle": trickle}) as server:
        policy = Downloads(allow=LOOPBACK.allow, timeout=5, deadline=0.5)
        started = time.monotonic()
        with pytest.raises(
            TransientError, match=r"cannot download .*/trickle: not done after 0\.5 s \(\d+ bytes\)"
        ):
            policy.fetch(f"{server.url}/trickle")
        assert time.monotonic() - started < 5  # stopped by the deadline, not by the per-read timeout


def cut_short(handler: http.server.BaseHTTPRequestHandler) -> None:
    """Promises 100,000 bytes, sends 1,000 and closes the connection (a dropped link)."""
    handler.send_response(200)
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    handler.wfile.write(image_bytes()[:1000])
    handler.close_connection = True


def test_a_body_cut_short_of_its_content_length_is_transient_not_a_truncated_image(tmp_path: Path) -> None:
    with (
        serve_files(tmp_path, {"/cut.png": cut_short}) as server,
        pytest.raises(
            TransientError,
            match=r"cannot download .*/cut\.png: the connection closed after 1000 of 100000 bytes",
        ),
    ):
        LOOPBACK.fetch(f"{server.url}/cut.png")


def test_a_body_announced_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    """The server announces 10 MB and sends nothing for 5 s: reading would wait for it."""

    def huge(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(10_000_000))
        handler.end_headers()
        handler.wfile.flush()
        time.sleep(5)

    policy = Downloads(max_bytes=1000, allow=LOOPBACK.allow, timeout=10)
    with serve_files(tmp_path, {"/huge.png": huge}) as server:
        started = time.monotonic()
        with pytest.raises(
            InvalidImage, match=r"/huge\.png is over the 1000-byte limit \(10000000 bytes announced\)$"
        ):
            policy.fetch(f"{server.url}/huge.png")
        assert time.monotonic() - started < 4


def test_a_body_that_announces_no_size_is_read_up_to_the_limit(tmp_path: Path) -> None:
    def unannounced(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)  # HTTP/1.0, no Content-Length: the body ends when the connection does
        handler.end_headers()
        handler.wfile.write(b"x" * 5000)

    policy = Downloads(max_bytes=1000, allow=LOOPBACK.allow)
    with serve_files(tmp_path, {"/a.png": unannounced, "/b.png": unannounced}) as server:
        with pytest.raises(InvalidImage, match=r"/a\.png is over the 1000-byte limit$"):
            policy.fetch(f"{server.url}/a.png")
        assert LOOPBACK.fetch(f"{server.url}/b.png") == b"x" * 5000


def test_a_batch_downloads_concurrently_and_keeps_its_order(tmp_path: Path) -> None:
    """Three requests that each wait for the other two: they all succeed only when they are in
    flight together (one at a time, the first would wait out the barrier and get a 503)."""
    barrier = threading.Barrier(3, timeout=10)

    def together(handler: http.server.BaseHTTPRequestHandler) -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            handler.send_error(503)
            return
        body = handler.path.encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with serve_files(tmp_path, {"/together": together}) as server:
        uris = [f"{server.url}/together?i={i}" for i in range(3)]
        results = LOOPBACK.fetch_all([*uris, f"{server.url}/missing.png"])
    assert results[:3] == [f"/together?i={i}".encode() for i in range(3)]
    assert isinstance(results[3], InvalidImage) and str(results[3]).endswith("missing.png: HTTP 404")


def test_the_setting_takes_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSEARCH_DOWNLOAD_ALLOW", "10.0.0.0/8, 192.168.1.5 ,fd00::/8")
    monkeypatch.setenv("IMGSEARCH_MAX_IMAGE_BYTES", "1000")
    assert Settings().downloads() == Downloads(
        max_bytes=1000,
        allow=(
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("192.168.1.5/32"),
            ipaddress.ip_network("fd00::/8"),
        ),
    )
    monkeypatch.delenv("IMGSEARCH_DOWNLOAD_ALLOW")
    assert Settings().downloads().allow == ()


@pytest.mark.parametrize("value", ["10.0.0.1/8", "intranet", "10.0.0.0/33"])
def test_a_bad_network_is_one_line_naming_the_setting(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("IMGSEARCH_DOWNLOAD_ALLOW", f"127.0.0.1,{value}")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert describe_invalid(caught.value) == (
        f"invalid settings: IMGSEARCH_DOWNLOAD_ALLOW item 2 {value!r}: "
        "value is not a valid IPv4 or IPv6 network"
    )
