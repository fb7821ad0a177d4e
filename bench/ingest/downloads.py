"""What checking the address of each image download costs: ``Downloads.fetch`` (resolve the host,
check every address, connect to a permitted one, check redirects) against ``urllib.request.urlopen``
as workers downloaded before (with the same percent-encoding of the URL), on the same image from a
local HTTP server, interleaved, one run.

    .venv/bin/python bench/ingest/downloads.py --fetches 400

The server is on 127.0.0.1, so ``Downloads`` is given ``allow=127.0.0.1/32``; a name (``localhost``)
adds DNS resolution to both sides. The body is a 77 KB PNG, about a product photo's size. A local
download takes ~1 ms; one from another host takes tens to hundreds, so the difference measured here
is the most the check can add.

The figure it produces: docs/benchmarks.md, "Image downloads".
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from imgsearch.ingest.downloads import Downloads, _ascii_url
from tests.helpers import image_bytes, serve_files


def plain(url: str) -> bytes:
    with urllib.request.urlopen(_ascii_url(url), timeout=20) as response:
        data: bytes = response.read()
    return data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fetches", type=int, default=400, help="downloads per method and host")
    args = parser.parse_args()

    policy = Downloads(allow=(ipaddress.ip_network("127.0.0.1/32"),))
    body = image_bytes(0, size=(160, 160), fmt="PNG")
    with tempfile.TemporaryDirectory() as root, serve_files(Path(root)) as server:
        (server.root / "photo.png").write_bytes(body)
        port = server.url.rsplit(":", 1)[1]
        print(f"body {len(body)} bytes; {args.fetches} fetches per method and host", file=sys.stderr)
        print("| host | urlopen p50 ms | Downloads.fetch p50 ms | ratio |")
        print("|---|---|---|---|")
        for host in ("127.0.0.1", "localhost"):
            url = f"http://{host}:{port}/photo.png"
            methods: dict[str, Callable[[str], bytes]] = {"urlopen": plain, "fetch": policy.fetch}
            times: dict[str, list[float]] = {name: [] for name in methods}
            for name, method in methods.items():  # warm up
                assert method(url) == body, name
            for i in range(args.fetches):
                order = list(methods.items()) if i % 2 == 0 else list(methods.items())[::-1]
                for name, method in order:
                    start = time.perf_counter()
                    method(url)
                    times[name].append(time.perf_counter() - start)
            before, after = (statistics.median(times[name]) * 1000 for name in ("urlopen", "fetch"))
            print(f"| {host} | {before:.3f} | {after:.3f} | {after / before:.2f}x |")


if __name__ == "__main__":
    main()
