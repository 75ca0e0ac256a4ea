#!/usr/bin/env bash
# `make bench`: the full stack (release build, `switchd all`) under
# `posctl bench` at concurrency 16 and 64, and in the same run pgbench with
# a one-row INSERT at the same concurrency as the ceiling the journal's
# PostgreSQL allows. Writes bench/results.json and prints a summary.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/${PROFILE:-release}
posctl="$bin/posctl --certs-dir ${RUN_DIR:-.run}/certs"
psql_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
duration=${BENCH_DURATION:-20s}
pg_seconds=${BENCH_PG_SECONDS:-10}
out_dir=bench
mkdir -p "$out_dir"
run_id=$(date +%s)
export PROFILE=${PROFILE:-release}
export SWITCH__DATABASE__SCHEMA_PREFIX=bench_
export SWITCH__KAFKA__TOPIC_PREFIX="bench-$run_id."
export SWITCH__TELEMETRY__LOG_LEVEL=warn

trap 'scripts/stack.sh down >/dev/null || true' EXIT
psql -q "$psql_url" -c "DROP SCHEMA IF EXISTS bench_authorization CASCADE" >/dev/null
scripts/stack.sh up

# Warm up connections, the JIT-free paths and the RRN block allocator.
$posctl bench --concurrency 8 --requests 500 --json >/dev/null

results=()
for concurrency in 16 64; do
  echo "posctl bench: concurrency $concurrency for $duration..." >&2
  # A fresh journal per run, so no STAN of this run meets one of the last.
  psql -q "$psql_url" -c "TRUNCATE bench_authorization.authorizations, bench_authorization.authorization_transitions, bench_authorization.outbox" >/dev/null
  json=$($posctl bench --concurrency "$concurrency" --duration "$duration" --json)
  echo "$json" >"$out_dir/posctl-c$concurrency.json"
  results+=("\"posctl_c$concurrency\": $json")
done

# The ceiling: one durable single-row INSERT per transaction, the same
# synchronous_commit as the journal, at the same concurrency.
psql -q "$psql_url" -c "DROP TABLE IF EXISTS bench_pg_ceiling; CREATE TABLE bench_pg_ceiling (id bigserial primary key, payload text not null, created_at timestamptz not null default now())" >/dev/null
echo "INSERT INTO bench_pg_ceiling (payload) VALUES ('x');" >"$out_dir/pgbench-insert.sql"
for concurrency in 16 64; do
  echo "pgbench: one-row INSERT, $concurrency clients for ${pg_seconds}s..." >&2
  tps=$(pgbench -n -c "$concurrency" -j 2 -T "$pg_seconds" -f "$out_dir/pgbench-insert.sql" "$psql_url" 2>/dev/null \
        | awk '/^tps = / {print $3; exit}')
  results+=("\"pgbench_insert_c$concurrency\": {\"tps\": ${tps:-null}}")
done
psql -q "$psql_url" -c "DROP TABLE IF EXISTS bench_pg_ceiling" >/dev/null

{
  echo "{"
  echo "  \"machine\": \"$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB\","
  echo "  \"date\": \"$(date -u +%FT%TZ)\","
  (IFS=$',\n'; echo "  ${results[*]}")
  echo "}"
} | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin), indent=2))' >"$out_dir/results.json"

python3 - "$out_dir/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"\nBenchmark ({r['machine']}, {r['date']})")
print(f"{'load':<28}{'throughput/s':>14}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}")
for c in (16, 64):
    p = r[f"posctl_c{c}"]
    print(f"{'posctl bench, c=' + str(c):<28}{p['throughput_per_s']:>14.0f}{p['p50_ms']:>9.1f}{p['p90_ms']:>9.1f}{p['p99_ms']:>9.1f}{p['max_ms']:>9.1f}{p['errors']:>8}")
for c in (16, 64):
    t = r[f"pgbench_insert_c{c}"]["tps"]
    print(f"{'pgbench 1-row INSERT, c=' + str(c):<28}{t:>14.0f}")
PY
