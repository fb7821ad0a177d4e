#!/usr/bin/env bash
# Citus for a PostgreSQL install, from the first source that is there (`make citus`: the embedded
# server's, under .venv; docs/scaling.md):
#   1. the citus extension already installed in that PostgreSQL: nothing to do;
#   2. the source tarball at TARBALL (our machines and CI: ../shared/vendor/);
#   3. a download of the tagged source from URL, checked against SHA256 (a machine with internet).
# When none can be had, it writes the reason to UNAVAILABLE and exits 0: the Citus tests then say
# so in one line and are not run (IMGSEARCH_REQUIRE_CITUS=1, as .ci/run sets, turns that into a
# failure). A download whose checksum differs is an error, never a fallback.
#   deploy/citus/build.sh TARBALL PGINSTALL BUILD_DIR URL SHA256 UNAVAILABLE
set -euo pipefail
tarball=$1
pginstall=$2
build=$3
url=$4
sha256=$5
unavailable=$6
pg_config="$pginstall/bin/pg_config"

rm -f "$unavailable"
if [ -f "$pginstall/lib/citus.so" ] && [ -f "$pginstall/share/extension/citus.control" ]; then
    echo "citus: already installed in $pginstall"
    exit 0
fi

if [ ! -f "$tarball" ]; then
    downloaded="$(dirname "$build")/$(basename "$url")"
    echo "citus: no source at $tarball; downloading $url"
    if ! error=$(curl -fsSL --connect-timeout 10 --max-time 600 -o "$downloaded.part" "$url" 2>&1); then
        rm -f "$downloaded.part"
        reason="Citus is not installed in the embedded server, there is no source at $tarball, and its download failed (${error:-no answer})"
        echo "$reason" > "$unavailable"
        echo "citus: $reason; the Citus tests will not run" >&2
        exit 0
    fi
    got=$(sha256sum "$downloaded.part" | cut -d' ' -f1)
    if [ "$got" != "$sha256" ]; then
        rm -f "$downloaded.part"
        echo "citus: the download of $url has sha256 $got, expected $sha256: refusing to build it" >&2
        exit 1
    fi
    mv "$downloaded.part" "$downloaded"
    tarball=$downloaded
fi

rm -rf "$build"
mkdir -p "$build"
echo "citus: unpacking $(basename "$tarball")"
tar -xzf "$tarball" -C "$build" --strip-components=1
cd "$build"
echo "citus: configuring against $("$pg_config" --version) (log: $build/configure.log)"
./configure PG_CONFIG="$pg_config" --without-libcurl --without-lz4 --without-zstd > configure.log 2>&1 \
    || { tail -20 configure.log >&2; exit 1; }
# the server was built with clang: its stored CFLAGS carry a flag gcc rejects, so ours replace them
echo "citus: compiling, about 5 minutes on 2 cores (log: $build/make.log)"
make -j"$(nproc)" CFLAGS="-O2 -fPIC -fvisibility=hidden -std=gnu99 -fno-strict-aliasing -fwrapv \
    -fexcess-precision=standard -Wno-format-truncation -Wno-stringop-truncation" > make.log 2>&1 \
    || { tail -30 make.log >&2; exit 1; }
make install PG_CONFIG="$pg_config" > install.log 2>&1 || { tail -20 install.log >&2; exit 1; }
echo "citus: installed in $pginstall"
