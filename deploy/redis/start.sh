#!/bin/sh
# The broker's users, one per role (README "Security model"), written from the passwords in the
# environment to an ACL file only redis can read, then redis-server started with it. `default`
# is off: every client logs in as its role. Each rule was worked out against a real Redis 7 with
# real Celery/kombu producers and consumers (ACL LOG empty):
# - worker: consumes, publishes (its own tasks, other modules' callback queues, task events);
#   every key, but no admin or dangerous command (CONFIG, ACL, FLUSHALL, SHUTDOWN, KEYS...) and
#   only the task-event channels: remote control (the pidbox) is off and unreachable. Its gossip
#   PSUBSCRIBEs `/0.celeryev/worker.*`, and Redis matches a subscribed pattern literally against
#   the allowed ones, so that pattern is listed itself (without it the worker died at start;
#   tests/e2e/test_broker_users.py starts one under these rules).
# - beat, webhook: only publish the service's queues (and read their lengths): LPUSH, LLEN and
#   the bindings kombu declares. They cannot read or take a message. The webhook also keeps the
#   per-client rate limits (flask-limiter, under `LIMITS:`): a selector of its own, so what it
#   may do there (read, write, run limits' scripts) reaches no queue. Beat likewise keeps its
#   schedule and lock under `redbeat:` (celery-redbeat, scheduler/redis_lock.py: hashes, a
#   sorted set, a set, a SET NX lock renewed and released by redis-py's Lua scripts); the
#   commands of those scripts (GET, PEXPIRE, DEL) are checked too, so they are listed.
# - modules (the calling modules): only LPUSH onto payments/topups/celery and read the bindings.
#   No LLEN, LRANGE or pop (a message carries its sender's token), no binding writes (which
#   could copy every message into a queue the module reads), no internal queue.
# - flower: task and worker events, queue lengths; it may publish on the pidbox (its wake-up
#   call), which no worker listens to.
set -eu
umask 077
acl=${REDIS_ACL_FILE:-/tmp/users.acl}  # a test points it elsewhere
cat > "$acl" <<ACL
user default off
user worker on >${REDIS_WORKER_PASSWORD} ~* resetchannels &/0.celeryev/* &/0.celeryev/worker.* +@all -@dangerous
user beat on >${REDIS_BEAT_PASSWORD} resetchannels ~webhooks* ~payments* ~topups* ~outbox* ~celery* ~_kombu.binding* -@all +ping +lpush +llen +smembers +sadd +multi +exec (~redbeat:* -@all +get +set +del +pexpire +hget +hset +hsetnx +zadd +zrangebyscore +zrank +zrem +smembers +sadd +srem +evalsha +script|load +multi +exec)
user webhook on >${REDIS_WEBHOOK_PASSWORD} resetchannels ~webhooks* ~payments* ~topups* ~outbox* ~celery* ~_kombu.binding* -@all +ping +lpush +llen +smembers +sadd +multi +exec (~LIMITS:* -@all +@read +@write +@scripting -@dangerous)
user modules on >${REDIS_MODULES_PASSWORD} resetchannels %W~payments* %W~topups* %W~celery* %R~_kombu.binding.* -@all +ping +lpush +smembers
user flower on >${REDIS_FLOWER_PASSWORD} resetchannels &/0.celeryev/* &/0.celery.pidbox* %R~* ~_kombu.binding* ~celeryev* -@all +ping +llen +smembers +sadd +srem +zadd +zrangebyscore +zrem +time +multi +exec +evalsha +eval +script|load +script|exists +subscribe +psubscribe +unsubscribe +punsubscribe +publish +del
ACL
exec redis-server --appendonly yes --aclfile "$acl" "$@"
