#!/usr/bin/env bash
# The tests need PostgreSQL and Redis on 127.0.0.1. Start them if they are installed but
# stopped; fail with a clear message if they are missing.
set -u
PG_PORT=${PAYMENTS_TEST_PG_PORT:-5432}
REDIS_PORT=${PAYMENTS_TEST_REDIS_PORT:-6379}

wait_for() {  # wait_for NAME COMMAND...: poll for up to 30 s
  local name=$1; shift
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "ensure-services: $name did not come up on 127.0.0.1" >&2; return 1
}

if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1; then
    echo "ensure-services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || exit 1
  else
    echo "ensure-services: PostgreSQL is not running on 127.0.0.1:$PG_PORT and is not installed" \
         "(Debian: apt install postgresql; trust auth for user postgres)" >&2
    exit 1
  fi
fi

if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  if command -v redis-server >/dev/null; then
    echo "ensure-services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for Redis redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping || exit 1
  else
    echo "ensure-services: Redis is not running on 127.0.0.1:$REDIS_PORT and is not installed" \
         "(Debian: apt install redis-server)" >&2
    exit 1
  fi
fi

# The card pages' browser tests (tests/e2e/test_card_pages.py) drive Debian's Chromium with its
# chromedriver: installed here when missing and we may (root with apt); no browser download.
if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "ensure-services: installing chromium and chromium-driver"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null || exit 1
  else
    echo "ensure-services: /usr/bin/chromium and /usr/bin/chromedriver are missing; the browser tests" \
         "will fail (Debian: apt install chromium chromium-driver)" >&2
  fi
fi
