#!/usr/bin/env bash
# Build Citus from its source tarball against a PostgreSQL install and install it there
# (`make citus`: the embedded server's, under .venv; docs/scaling.md).
#   deploy/citus/build.sh TARBALL PGINSTALL BUILD_DIR
set -euo pipefail
tarball=$1
pginstall=$2
build=$3
pg_config="$pginstall/bin/pg_config"

if [ ! -f "$tarball" ]; then
    echo "no Citus source at $tarball (see ../shared/vendor/README.md)" >&2
    exit 2
fi
if [ -f "$pginstall/lib/citus.so" ] && [ -f "$pginstall/share/extension/citus.control" ]; then
    echo "citus: already installed in $pginstall"
    exit 0
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
