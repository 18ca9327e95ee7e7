#!/usr/bin/env bash
# Starts (or stops) what the tests need on this machine: PostgreSQL 15 with pgcrypto, the moto
# server (KMS and S3) and Redis. Everything listens on 127.0.0.1 only. State lives under
# .ci-state/.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="$PWD/.ci-state"
PGPORT="${GLC_PG_PORT:-55432}"
KMSPORT="${GLC_KMS_PORT:-5055}"
REDISPORT="${GLC_REDIS_PORT:-6390}"
PYTHON="${PYTHON:-.venv/bin/python}"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"

start_pg() {
  if [ -z "$PGBIN" ]; then echo "services: PostgreSQL is not installed" >&2; return 1; fi
  if pg_isready -h 127.0.0.1 -p "$PGPORT" -q 2>/dev/null; then return 0; fi
  mkdir -p "$STATE"
  PGDATA="$STATE/pg"
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    rm -rf "$PGDATA"; mkdir -p "$PGDATA"; chown postgres: "$PGDATA"
    runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
  fi
  chown -R postgres: "$PGDATA"
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/log" -w -t 30 \
    -o "-p $PGPORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
  psql -h 127.0.0.1 -p "$PGPORT" -U postgres -tc "SELECT 1 FROM pg_database WHERE datname='greenlang_test'" \
    | grep -q 1 || psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qc 'CREATE DATABASE greenlang_test'
  psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d greenlang_test -qc 'CREATE EXTENSION IF NOT EXISTS pgcrypto'
}

start_kms() {
  mkdir -p "$STATE"
  if curl -fs -o /dev/null "http://127.0.0.1:$KMSPORT/moto-api/" 2>/dev/null; then return 0; fi
  nohup "$PYTHON" tests/kms_server.py --port "$KMSPORT" >"$STATE/kms.log" 2>&1 &
  echo $! >"$STATE/kms.pid"
  for _ in $(seq 1 100); do
    if curl -fs -o /dev/null "http://127.0.0.1:$KMSPORT/moto-api/" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "services: the moto KMS server did not start; log:" >&2; cat "$STATE/kms.log" >&2; return 1
}

start_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "services: redis-server is not installed" >&2; return 1
  fi
  if redis-cli -p "$REDISPORT" ping >/dev/null 2>&1; then return 0; fi
  mkdir -p "$STATE/redis"
  # Our own instance (Debian may run a system one on 6379): no persistence, loopback only.
  redis-server --port "$REDISPORT" --bind 127.0.0.1 --daemonize yes --save '' --appendonly no \
    --pidfile "$STATE/redis/redis.pid" --dir "$STATE/redis" --logfile "$STATE/redis/redis.log"
  for _ in $(seq 1 50); do
    if redis-cli -p "$REDISPORT" ping >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "services: redis did not start; log:" >&2; cat "$STATE/redis/redis.log" >&2; return 1
}

stop_all() {
  if [ -f "$STATE/redis/redis.pid" ]; then
    kill "$(cat "$STATE/redis/redis.pid")" 2>/dev/null || true; rm -f "$STATE/redis/redis.pid"
  fi
  if [ -f "$STATE/kms.pid" ]; then kill "$(cat "$STATE/kms.pid")" 2>/dev/null || true; rm -f "$STATE/kms.pid"; fi
  if [ -n "$PGBIN" ] && [ -f "$STATE/pg/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$STATE/pg" -m fast stop >/dev/null 2>&1 || true
  fi
}

case "${1:-start}" in
  start) start_pg; start_kms; start_redis
         echo "export GLC_PG_URL=postgresql+psycopg://postgres@127.0.0.1:$PGPORT/greenlang_test"
         echo "export GLC_KMS_ENDPOINT=http://127.0.0.1:$KMSPORT"
         echo "export GLC_REDIS_URL=redis://127.0.0.1:$REDISPORT/0" ;;
  stop) stop_all ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
