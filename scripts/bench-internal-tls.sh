#!/usr/bin/env bash
# What mutual TLS between the services costs (ADR 27): `posctl bench` at
# concurrency 64 against `switchd all` (release) with every internal hop on
# mutual TLS, then with `internal_tls.plaintext_for_lab`, back to back,
# alternating the order each round, ROUNDS rounds (default 3). Each run
# starts from empty schemas, warms up like `make bench`, and appends its
# result to bench/internal-tls.jsonl; prints min/median/max per mode.
# BENCH_SCOPE=sale-path measures only the hops a sale crosses (gateway →
# authorization → issuer simulator, three `switchd` processes) with no
# broker and no consumers: the events wait in authorization's outbox.
# Otherwise (the default, `all`), run it like `make bench` runs bench.sh
# (a fresh in-memory broker):
#   make build certs PROFILE=release
#   PROFILE=release KAFKA_BROKERS=127.0.0.1:19092 BROKER_DIR=.run/bench-broker \
#     BROKER_STORAGE=memory://nisshi/ scripts/with-broker.sh scripts/bench-internal-tls.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/${PROFILE:-release}
posctl="$bin/posctl --certs-dir ${RUN_DIR:-.run}/certs"
psql_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
duration=${BENCH_DURATION:-20s}
rounds=${ROUNDS:-3}
out=bench/internal-tls.jsonl
mkdir -p bench
run_id=$(date +%s)
export PROFILE=${PROFILE:-release}
export SWITCH__DATABASE__SCHEMA_PREFIX=benchtls_
export SWITCH__TELEMETRY__LOG_LEVEL=warn
export SWITCH__KAFKA__BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
# As in bench.sh: no orphans mid-run, no per-terminal limits.
export SWITCH__REVERSAL_HANDLER__ACK_WINDOW_MS=86400000
export SWITCH__GATEWAY__RATE_LIMIT__PER_SECOND=1000000
export SWITCH__GATEWAY__RATE_LIMIT__BURST=1000000
export SWITCH__GATEWAY__MAX_CONCURRENT_STREAMS=1024

plaintext_env=(
  SWITCH__INTERNAL_TLS__PLAINTEXT_FOR_LAB=true
  SWITCH__AUTHORIZATION__ISSUER_ENDPOINT=http://127.0.0.1:50070
  SWITCH__GATEWAY__AUTHORIZATION_ENDPOINT=http://127.0.0.1:50052
  SWITCH__GATEWAY__SETTLEMENT_ENDPOINT=http://127.0.0.1:50054
  SWITCH__REVERSAL_HANDLER__AUTHORIZATION_ENDPOINT=http://127.0.0.1:50052
  SWITCH__SETTLEMENT__AUTHORIZATION_ENDPOINT=http://127.0.0.1:50052
)

scope=${BENCH_SCOPE:-all}
pids=()
start_stack() {
  if [[ $scope == all ]]; then scripts/stack.sh up >/dev/null; return; fi
  mkdir -p "${RUN_DIR:-.run}"
  for service in issuer-simulator authorization gateway; do
    "$bin/switchd" "$service" >>"${RUN_DIR:-.run}/bench-internal-tls-$service.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 300); do
    (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/50052) 2>/dev/null && return
    sleep 0.1
  done
  echo "the sale path did not open its ports" >&2; exit 1
}
stop_stack() {
  if [[ $scope == all ]]; then scripts/stack.sh down >/dev/null || true; return; fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap stop_stack EXIT
if [[ $scope != all ]]; then export SWITCH__KAFKA__BROKERS=127.0.0.1:1; fi

one_run() {
  local mode=$1 round=$2
  for service in authorization terminal_gateway reversal_handler settlement_batcher notifier; do
    psql -q "$psql_url" -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS benchtls_$service CASCADE" >/dev/null
  done
  export SWITCH__KAFKA__TOPIC_PREFIX="benchtls-$run_id-$round-$mode."
  if [[ $mode == plaintext ]]; then
    for setting in "${plaintext_env[@]}"; do export "${setting?}"; done
  else
    for setting in "${plaintext_env[@]}"; do unset "${setting%%=*}"; done
  fi
  start_stack
  $posctl bench --concurrency 8 --requests 500 --ack --stan-start 900001 --json >/dev/null
  for _ in $(seq 1 300); do
    [[ $scope == all ]] || break
    tracked=$(psql -tA "$psql_url" -c "SELECT count(*) FROM benchtls_reversal_handler.approvals" 2>/dev/null || echo 0)
    ledgered=$(psql -tA "$psql_url" -c "SELECT count(*) FROM benchtls_settlement_batcher.transactions" 2>/dev/null || echo 0)
    [[ ${tracked:-0} -ge 500 && ${ledgered:-0} -ge 500 ]] && break
    sleep 0.1
  done
  echo "round $round, $mode: posctl bench c=64 for $duration..." >&2
  json=$($posctl bench --concurrency 64 --duration "$duration" --terminals TERM0001,TERM0002 \
         --stan-start 1 --json)
  python3 -c 'import json,sys; d=json.loads(sys.argv[4]); d.update(run=sys.argv[1], mode=sys.argv[2], round=int(sys.argv[3]), scope=sys.argv[5]); print(json.dumps(d))' \
    "$run_id" "$mode" "$round" "$json" "$scope" >>"$out"
  stop_stack
}

for round in $(seq 1 "$rounds"); do
  if (( round % 2 )); then order=(mtls plaintext); else order=(plaintext mtls); fi
  for mode in "${order[@]}"; do one_run "$mode" "$round"; done
done

python3 - "$out" "$run_id" <<'PY'
import json, statistics, sys
rows = [row for row in map(json.loads, open(sys.argv[1])) if row.get("run") == sys.argv[2]]
for mode in ("plaintext", "mtls"):
    runs = [r for r in rows if r["mode"] == mode]
    tput = sorted(r["throughput_per_s"] for r in runs)
    p99 = sorted(r["p99_ms"] for r in runs)
    errors = sum(r["errors"] for r in runs)
    print(f"{mode:>9}: throughput/s min {tput[0]:.0f} median {statistics.median(tput):.0f} max {tput[-1]:.0f};"
          f" p99 ms min {p99[0]:.1f} median {statistics.median(p99):.1f} max {p99[-1]:.1f}; errors {errors}")
plain = statistics.median(r["throughput_per_s"] for r in rows if r["mode"] == "plaintext")
mtls = statistics.median(r["throughput_per_s"] for r in rows if r["mode"] == "mtls")
print(f"median throughput with mutual TLS: {100 * (mtls - plain) / plain:+.1f}% against plaintext")
PY
