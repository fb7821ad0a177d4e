#!/bin/sh
# A hot standby of the "postgres" service: copied once with pg_basebackup (-R: it follows the
# primary by streaming replication), then started read-only. Runs as root in the pgvector image
# and drops to the postgres user, as the image's own entrypoint does.
set -e
mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until gosu postgres pg_isready -h "$PRIMARY_HOST" -U "$POSTGRES_USER" -d postgres; do sleep 2; done
    gosu postgres env PGPASSWORD="$POSTGRES_PASSWORD" pg_basebackup -h "$PRIMARY_HOST" -U "$POSTGRES_USER" \
        -D "$PGDATA" -R -X stream -c fast
fi
exec gosu postgres postgres -c hot_standby=on -c hot_standby_feedback=on
