#!/bin/sh
# Run by the image's entrypoint when it makes a node's data directory (deploy/citus/Dockerfile).
set -e
# the catalog's database: Citus first, then pgvector (imgsearch migrate adds the rest)
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE EXTENSION IF NOT EXISTS citus;
CREATE EXTENSION IF NOT EXISTS vector;
SQL
# Citus reaches the shards as the role that runs a statement (imgsearch's roles too): the nodes of
# this compose network let each other in without a password. Elsewhere, give every role a
# password and list them in pg_dist_authinfo instead.
sed -i '1i host all all samenet trust' "$PGDATA/pg_hba.conf"
