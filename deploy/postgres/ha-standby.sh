#!/bin/bash
# The standby of compose's `ha` profile. On its first start (an empty data directory), a copy of
# the primary: pg_basebackup -R writes standby.signal and primary_conninfo, so the server follows
# the primary as a hot standby. Then the official image's own entrypoint runs PostgreSQL on it
# (it leaves a data directory that already holds a cluster as it is).
#
# synchronous_standby_names is emptied on the command line (which wins over postgresql.auto.conf,
# copied from the primary with its '*'): promoted, this server must not wait for a standby of its
# own that it does not have. Promote it with: docker compose exec -u postgres postgres-standby pg_ctl promote
set -euo pipefail
: "${PRIMARY_HOST:?set PRIMARY_HOST, the primary to copy}"
if [ ! -s "${PGDATA}/PG_VERSION" ]; then
    mkdir -p "${PGDATA}"
    chown postgres:postgres "${PGDATA}"
    chmod 700 "${PGDATA}"
    until gosu postgres pg_isready --quiet --host "${PRIMARY_HOST}" --username "${POSTGRES_USER}"; do
        sleep 1
    done
    # PGPASSWORD is the primary's POSTGRES_PASSWORD (compose.yaml).
    gosu postgres pg_basebackup --host "${PRIMARY_HOST}" --username "${POSTGRES_USER}" \
        --pgdata "${PGDATA}" --write-recovery-conf --wal-method stream --checkpoint fast
fi
exec docker-entrypoint.sh postgres -c hot_standby=on -c synchronous_standby_names=
