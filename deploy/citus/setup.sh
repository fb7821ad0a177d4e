#!/bin/sh
# `docker compose --profile citus`: the coordinator learns its workers (once; running it again
# changes nothing), then `imgsearch migrate` there makes the catalog and distributes it.
set -e
export PGHOST="$COORDINATOR" PGUSER="$POSTGRES_USER" PGPASSWORD="$POSTGRES_PASSWORD" PGDATABASE="$POSTGRES_DB"
psql -v ON_ERROR_STOP=1 -c "SELECT citus_set_coordinator_host('$COORDINATOR', 5432)"
for worker in $WORKERS; do
    psql -v ON_ERROR_STOP=1 -c "SELECT citus_add_node('$worker', 5432)"
done
psql -c "SELECT nodename, nodeport, noderole FROM pg_dist_node ORDER BY nodeid"
