#!/bin/sh
# Run once by the pgvector image's entrypoint when it initialises the primary's data directory:
# streaming standbys (docker compose --profile replica) connect with the database's login.
set -e
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
