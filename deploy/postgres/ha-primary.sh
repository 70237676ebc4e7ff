#!/bin/bash
# The primary of compose's `ha` profile, on its first start only: the official postgres image runs
# the scripts of /docker-entrypoint-initdb.d once, after initdb, with a temporary server, then
# starts the real one. This lets the standby replicate over the network (the image's own pg_hba
# line, `host all all all scram-sha-256`, does not cover replication connections), and makes every
# commit wait until the standby has it (synchronous replication; SPEC §14, docs/scaling.md). Set
# with ALTER SYSTEM, so it applies from the real server's start: the temporary one would otherwise
# wait for a standby that cannot exist yet.
set -e
echo "host replication ${POSTGRES_USER} all scram-sha-256" >> "${PGDATA}/pg_hba.conf"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB}" \
    -c "ALTER SYSTEM SET synchronous_standby_names = '*'"
