#!/usr/bin/env bash
# Run once by the postgres image when it creates its data directory (docker-entrypoint-initdb.d):
# the service's runtime role, which logs in with PAYMENTS_DATABASE_RUNTIME_PASSWORD and owns
# nothing. `payments db upgrade` (the compose file's `migrate`, connected as the owner) grants it
# its privileges (migration 0010). On a data directory made before this script existed, create
# it by hand once: CREATE ROLE payments_runtime LOGIN PASSWORD '...';
set -euo pipefail
: "${PAYMENTS_DATABASE_RUNTIME_PASSWORD:?set PAYMENTS_DATABASE_RUNTIME_PASSWORD}"
# The password goes in as a psql variable (:'password' quotes it), never into the SQL text.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v password="$PAYMENTS_DATABASE_RUNTIME_PASSWORD" <<'SQL'
CREATE ROLE payments_runtime LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'password';
SQL
