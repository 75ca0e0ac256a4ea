#!/usr/bin/env bash
# `make bench`: the full stack (release build, `switchd all`) under
# `posctl bench` at concurrency 16 and 64, the same load as QR payments
# (`posctl bench --qr`, paid at once) with late ones beside it whose
# merchant webhooks are timed from the platform's paid time, and in the same run pgbench with
# a one-row INSERT at the same concurrency as the ceiling the journal's
# PostgreSQL allows; the same sales as ISO 8583 0200s over the gateway's
# ISO TLS listeners (`posctl bench --iso`, both profiles); then the
# settlement run (100,000 transactions, 1,000 merchants), webhook
# deliveries, and the ISO 8583 codec (criterion, beside the i8583 crate and
# pyiso8583). Writes bench/results.json and prints a summary.
# BENCH_EDGE_ONLY=1 stops after the gRPC and ISO edge runs and the codec;
# BENCH_QR_ONLY=1 after the card and QR gRPC runs.
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
export SWITCH__KAFKA__BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
# The development broker holds an empty fetch by sleeping half the wait
# left, then looking again: at librdkafka's 500 ms a quiet partition's next
# event reached a consumer up to 250 ms late, a wait Kafka (which answers a
# held fetch when a message arrives) does not have. 20 ms bounds it to 10.
export SWITCH__KAFKA__FETCH_WAIT_MAX_MS=20
# Throughput runs send sales nobody acknowledges: give them a day, so they
# do not turn into orphans mid-run. The orphan run uses MERCHANT0000002's
# terminals, whose deadline is 2 s.
export SWITCH__REVERSAL_HANDLER__ACK_WINDOW_MS=86400000
export SWITCH__REVERSAL_HANDLER__MERCHANTS__MERCHANT0000002__ACK_WINDOW_MS=2000
# One load generator poses as two terminals, each far faster than a real
# one: lift the per-terminal rate limit and streams per connection, which
# exist to stop a flood, not to measure one.
export SWITCH__GATEWAY__RATE_LIMIT__PER_SECOND=1000000
export SWITCH__GATEWAY__RATE_LIMIT__BURST=1000000
export SWITCH__GATEWAY__MAX_CONCURRENT_STREAMS=1024
# An ISO 8583 connection carries one message at a time from one terminal:
# 64 workers over two terminals hold 32 connections each.
export SWITCH__GATEWAY__MAX_CONNECTIONS_PER_TERMINAL=1024
# QR: a terminal waits 5 s (a loaded ack still lands in time) and the
# late shopper pays after 6 s, after it stopped waiting; the switch's own
# query comes at 5 s and 10 s, so the platform's notification is what
# tells it. Merchant 1 keeps such a payment (`confirm`), and its endpoint
# is posctl's, which times each webhook.
export SWITCH__AUTHORIZATION__QR__TERMINAL_WAIT_MS=5000
export SWITCH__AUTHORIZATION__QR__QUERY_INTERVAL_MS=5000
export SWITCH__QR_SIMULATOR__LATE_DELAY_MS=6000
qr_webhook=127.0.0.1:18086
qr_webhook_secret=bench-webhook-secret-merchant-1
# The ISO 8583 listeners beside the gRPC edge, one per profile.
iso_ascii=127.0.0.1:18583
iso_cup=127.0.0.1:18584
mkdir -p "${RUN_DIR:-.run}"
export SWITCH_CONFIG="${RUN_DIR:-.run}/bench-switchd.toml"
cat >"$SWITCH_CONFIG" <<TOML
[[gateway.iso_listeners]]
listen = "$iso_ascii"
profile = "ascii_1987"

[[gateway.iso_listeners]]
listen = "$iso_cup"
profile = "cup_pos"

# Merchant 1's endpoint: only its late QR payments are told of (its card
# sales in these runs are neither orphans nor paid out).
[[notifier.endpoints]]
merchant_id = "MERCHANT0000001"
url = "http://$qr_webhook/webhooks"
secret = "$qr_webhook_secret"

[authorization.qr.merchant_policies]
MERCHANT0000001 = "confirm"
TOML
edge_only=${BENCH_EDGE_ONLY:-0}
qr_only=${BENCH_QR_ONLY:-0}
orphan_sales=${BENCH_ORPHAN_SALES:-10000}
orphan_rate=${BENCH_ORPHAN_RATE:-400}

trap 'scripts/stack.sh down >/dev/null || true' EXIT
# Every service starts from an empty schema: a terminal + STAN + date left
# by an earlier run would be answered as a duplicate by authorization and
# would collide with a different transaction in the other services' records.
for service in authorization terminal_gateway reversal_handler settlement_batcher notifier; do
  psql -q "$psql_url" -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS bench_$service CASCADE" >/dev/null
done
scripts/stack.sh up

# Warm up connections and the RRN block allocator (acknowledged: no orphans).
# Each run below has its own STAN range on its terminals, so no sale of one
# run is a retry of another's.
$posctl bench --concurrency 8 --requests 500 --ack --stan-start 900001 --json >/dev/null
# Measure from the moment the consumers (whose group join takes seconds on
# the development broker) have caught up with the warm-up, so no run pays
# for another's backlog.
for _ in $(seq 1 300); do
  tracked=$(psql -tA "$psql_url" -c "SELECT count(*) FROM bench_reversal_handler.approvals" 2>/dev/null || echo 0)
  ledgered=$(psql -tA "$psql_url" -c "SELECT count(*) FROM bench_settlement_batcher.transactions" 2>/dev/null || echo 0)
  [[ ${tracked:-0} -ge 500 && ${ledgered:-0} -ge 500 ]] && break
  sleep 0.1
done

results=()

stan_start=1
for concurrency in 16 64; do
  echo "posctl bench: concurrency $concurrency for $duration..." >&2
  json=$($posctl bench --concurrency "$concurrency" --duration "$duration" --terminals TERM0001,TERM0002 \
         --stan-start "$stan_start" --json)
  stan_start=400001
  echo "$json" >"$out_dir/posctl-c$concurrency.json"
  results+=("\"posctl_c$concurrency\": $json")
done

# The same closed loop as QR payments (consumer-presented, paid at once,
# acknowledged like a terminal that printed the receipt), with 4 late
# payments a second on TERM0002 whose webhooks are timed (issue 15: QR
# throughput at least half the card path's; platform's word -> merchant's
# webhook p99 at most 1 s). QR payments have STANs of their own
# (qr_payments): 100001.. and 500001.. for the load, 800001.. and 850001..
# for the late ones. The card runs again with --ack beside them, like for
# like, in card STANs no other run uses (350001.., 950001..).
for run in "16 350001" "64 950001"; do
  read -r concurrency ack_stan <<<"$run"
  echo "posctl bench --ack: concurrency $concurrency for $duration..." >&2
  json=$($posctl bench --ack --concurrency "$concurrency" --duration "$duration" --terminals TERM0001,TERM0002 \
         --stan-start "$ack_stan" --json)
  echo "$json" >"$out_dir/posctl-ack-c$concurrency.json"
  results+=("\"posctl_ack_c$concurrency\": $json")
done
qr_runs=("16 100001 800001" "64 500001 850001")
for run in "${qr_runs[@]}"; do
  read -r concurrency qr_stan late_stan <<<"$run"
  echo "posctl bench --qr: concurrency $concurrency for $duration, late payments on TERM0002..." >&2
  json=$($posctl bench --qr --ack --concurrency "$concurrency" --duration "$duration" --terminals TERM0001,TERM0002 \
         --stan-start "$qr_stan" --late-terminal TERM0002 --late-stan-start "$late_stan" --late-interval 250ms \
         --webhook-listen "$qr_webhook" --webhook-secret "$qr_webhook_secret" --json)
  echo "$json" >"$out_dir/posctl-qr-c$concurrency.json"
  results+=("\"posctl_qr_c$concurrency\": $json")
done

if [[ $qr_only != 1 ]]; then
# The same closed loop as ISO 8583 0200s over TLS, each worker its own
# connection. Each run has its own STAN range on TERM0001/TERM0002, apart
# from the gRPC runs' (1.., 400001..) and the warm-up's (900001..): 150,000
# STANs per terminal is far more than 20 s of sales on this machine.
iso_runs=("ascii1987 $iso_ascii 16 200001" "ascii1987 $iso_ascii 64 600001" "cup-pos $iso_cup 64 750001")
for run in "${iso_runs[@]}"; do
  read -r profile address concurrency iso_stan <<<"$run"
  echo "posctl bench --iso ($profile): concurrency $concurrency for $duration..." >&2
  json=$($posctl bench --iso "$address" --iso-profile "$profile" --concurrency "$concurrency" --duration "$duration" \
         --terminals TERM0001,TERM0002 --stan-start "$iso_stan" --json)
  name="posctl_iso_${profile//-/_}_c$concurrency"
  echo "$json" >"$out_dir/$name.json"
  results+=("\"$name\": $json")
done

# The codec alone: criterion (this codec and the i8583 crate on the same
# bytes) and pyiso8583 encoding and decoding the same 0200.
echo "iso8583 codec: criterion pack/unpack of a 0200, beside i8583..." >&2
rm -rf target/criterion/pack_0200 target/criterion/unpack_0200
cargo bench -q -p iso8583 --bench codec >"$out_dir/iso8583-criterion.txt" 2>&1
codec=$(python3 - <<'PY'
import glob, json
figures = {}
for path in glob.glob("target/criterion/*_0200/**/new/benchmark.json", recursive=True):
    full_id = json.load(open(path))["full_id"]
    estimates = json.load(open(path.replace("benchmark.json", "estimates.json")))
    figures[full_id] = round(estimates["median"]["point_estimate"], 1)
print(json.dumps(dict(sorted(figures.items()))))
PY
)
results+=("\"iso8583_codec_median_ns\": $codec")
echo "pyiso8583: encode/decode of the same 0200..." >&2
pyiso=$("${PYISO8583_PYTHON:?run make pyiso}" scripts/pyiso-bench.py)
results+=("\"pyiso8583\": $pyiso")
fi

if [[ $edge_only != 1 && $qr_only != 1 ]]; then

# The reversal handler tracks every approval above; orphans are timed only
# once it has caught up with all of them (and joined its group, which takes
# seconds on the development broker).
approved_so_far=$(python3 -c "
import glob, json
runs = ['$out_dir/posctl-c16.json', '$out_dir/posctl-c64.json', '$out_dir/posctl-ack-c16.json', '$out_dir/posctl-ack-c64.json'] + glob.glob('$out_dir/posctl_iso_*.json')
print(500 + sum(json.load(open(run))['approved'] for run in runs))")
echo "waiting for the reversal handler to catch up with $approved_so_far approvals..." >&2
for _ in $(seq 1 900); do
  seen=$(psql -tA "$psql_url" -c "SELECT count(*) FROM bench_reversal_handler.approvals" 2>/dev/null || echo 0)
  [[ ${seen:-0} -ge $approved_so_far ]] && break
  sleep 0.2
done

# Orphans: sales of which 10% are never acknowledged (responses "dropped"
# before the terminal showed them). Measure, per orphan, the time from its
# acknowledgement deadline to the first reversal attempt sent to the issuer,
# and to the issuer's acknowledgement of the reversal.
echo "posctl bench: $orphan_sales sales at $orphan_rate/s on TERM0003/TERM0004, 90% acknowledged..." >&2
orphan_bench=$($posctl bench --rate "$orphan_rate" --requests "$orphan_sales" --terminals TERM0003,TERM0004 --ack-percent 90 \
               --stan-start 1 --json)
echo "$orphan_bench" >"$out_dir/posctl-orphans.json"
expected_orphans=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d['approved'] - d['acknowledged'])" "$orphan_bench")
echo "waiting for $expected_orphans orphans to be reversed..." >&2
for _ in $(seq 1 600); do
  reversed=$(psql -tA "$psql_url" -c "SELECT count(*) FROM bench_authorization.reversals WHERE status = 'acknowledged'")
  [[ $reversed -ge $expected_orphans ]] && break
  sleep 0.2
done
orphans=$(psql -tA "$psql_url" -c "
  SELECT json_build_object(
    'orphans', count(*),
    'reversed', count(r.acknowledged_at),
    'sent_p50_ms', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.first_sent_at - h.deadline_at) * 1000)::numeric, 1),
    'sent_p99_ms', round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM r.first_sent_at - h.deadline_at) * 1000)::numeric, 1),
    'acknowledged_p50_ms', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.acknowledged_at - h.deadline_at) * 1000)::numeric, 1),
    'acknowledged_p99_ms', round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM r.acknowledged_at - h.deadline_at) * 1000)::numeric, 1))
  FROM bench_authorization.reversals r
  JOIN bench_reversal_handler.approvals h USING (transaction_id)
  WHERE r.reason = 'no_terminal_acknowledgement'")
results+=("\"orphans\": $orphans")
results+=("\"orphan_sales\": $orphan_bench")

# The switch stops first: its services' connection pools and the pgbench
# clients together would pass PostgreSQL's max_connections (100).
scripts/stack.sh down >/dev/null
# The ceiling: one durable single-row INSERT per transaction, the same
# synchronous_commit as the journal, at the same concurrency.
psql -q "$psql_url" -c "DROP TABLE IF EXISTS bench_pg_ceiling; CREATE TABLE bench_pg_ceiling (id bigserial primary key, payload text not null, created_at timestamptz not null default now())" >/dev/null
echo "INSERT INTO bench_pg_ceiling (payload) VALUES ('x');" >"$out_dir/pgbench-insert.sql"
for concurrency in 16 64; do
  echo "pgbench: one-row INSERT, $concurrency clients for ${pg_seconds}s..." >&2
  tps=$(pgbench -n -c "$concurrency" -j 2 -T "$pg_seconds" -f "$out_dir/pgbench-insert.sql" "$psql_url" 2>/dev/null \
        | awk '/^tps = / {print $3; exit}' || true)
  results+=("\"pgbench_insert_c$concurrency\": {\"tps\": ${tps:-null}}")
done
psql -q "$psql_url" -c "DROP TABLE IF EXISTS bench_pg_ceiling" >/dev/null

# Settlement: close one window of 100,000 confirmed approvals for 1,000
# merchants (plus held and reversed ones) and write its payout files.
echo "settlement: closing a window of 100,000 transactions for 1,000 merchants (3 rounds)..." >&2
settlement=$(cargo bench -q -p settlement-batcher --bench settlement_run 2>/dev/null | tail -1)
results+=("\"settlement_run\": $settlement")
# Webhooks: deliveries/s to a local endpoint, and what one endpoint taking
# 5 s per request costs 50 fast ones.
echo "notifier: webhook deliveries to a local HTTP server..." >&2
mapfile -t deliveries < <(cargo bench -q -p notifier --bench deliveries 2>/dev/null | grep '^{')
results+=("\"webhooks_one_endpoint\": ${deliveries[0]}")
results+=("\"webhooks_fifty_endpoints\": ${deliveries[1]}")
results+=("\"webhooks_with_a_slow_endpoint\": ${deliveries[2]}")
fi

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
    p = r.get(f"posctl_ack_c{c}")
    if p is None:
        continue
    print(f"{'posctl bench --ack, c=' + str(c):<28}{p['throughput_per_s']:>14.0f}{p['p50_ms']:>9.1f}{p['p90_ms']:>9.1f}{p['p99_ms']:>9.1f}{p['max_ms']:>9.1f}{p['errors']:>8}")
for c in (16, 64):
    p = r.get(f"posctl_qr_c{c}")
    if p is None:
        continue
    print(f"{'posctl bench --qr --ack, c=' + str(c):<28}{p['throughput_per_s']:>14.0f}{p['p50_ms']:>9.1f}{p['p90_ms']:>9.1f}{p['p99_ms']:>9.1f}{p['max_ms']:>9.1f}{p['errors']:>8}")
for key, p in r.items():
    if key.startswith("posctl_iso_"):
        label = f"ISO {p['edge'].split()[-1]} c={p['concurrency']}"
        print(f"{label:<28}{p['throughput_per_s']:>14.0f}{p['p50_ms']:>9.1f}{p['p90_ms']:>9.1f}{p['p99_ms']:>9.1f}{p['max_ms']:>9.1f}{p['errors']:>8}")
for c in (16, 64):
    p = r.get(f"posctl_qr_c{c}")
    if p is None:
        continue
    n = p["notification_to_webhook"]
    ratio = p["throughput_per_s"] / r[f"posctl_ack_c{c}"]["throughput_per_s"]
    bare = p["throughput_per_s"] / r[f"posctl_c{c}"]["throughput_per_s"]
    print(f"QR c={c}: {ratio:.2f}x the acknowledged card path's throughput ({bare:.2f}x the unacknowledged; target >= 0.5); {n['late_payments']} late payments,"
          f" {n['webhooks']} webhooks ({n['missing']} missing), paid -> webhook p50 {n['p50_ms']} ms,"
          f" p99 {n['p99_ms']} ms, max {n['max_ms']} ms (target p99 <= {n['target_p99_ms']} ms)")
if "iso8583_codec_median_ns" not in r:
    sys.exit(0)
codec, py = r["iso8583_codec_median_ns"], r["pyiso8583"]
print("\nISO 8583 codec, 0200 sale of 15 fields, median ns per operation:")
for key, ns in codec.items():
    print(f"  {key:<52}{ns:>10.0f}")
print(f"  {'pyiso8583 encode (default_ascii)':<52}{py['encode_ns']:>10.0f}")
print(f"  {'pyiso8583 decode (default_ascii)':<52}{py['decode_ns']:>10.0f}")
if "orphans" not in r:
    sys.exit(0)
for c in (16, 64):
    t = r[f"pgbench_insert_c{c}"]["tps"]
    print(f"{'pgbench 1-row INSERT, c=' + str(c):<28}{t:>14.0f}")
o = r["orphans"]
print(f"\nOrphans: {o['orphans']} of {r['orphan_sales']['requests']} sales at {r['orphan_sales']['rate']}/s never acknowledged, {o['reversed']} reversed")
print(f"  deadline -> reversal sent to issuer:   p50 {o['sent_p50_ms']} ms, p99 {o['sent_p99_ms']} ms")
print(f"  deadline -> reversal acknowledged:     p50 {o['acknowledged_p50_ms']} ms, p99 {o['acknowledged_p99_ms']} ms")
s = r["settlement_run"]
print(f"\nSettlement: {s['transactions']} transactions, {s['merchants']} merchants: median {s['median_ms']} ms (min {s['min_ms']}, max {s['max_ms']})")
w1, w50, ws = r["webhooks_one_endpoint"], r["webhooks_fifty_endpoints"], r["webhooks_with_a_slow_endpoint"]
print(f"Webhooks: one endpoint {w1['deliveries_per_s']}/s (p99 {w1['p99_ms']} ms); 50 endpoints {w50['deliveries_per_s']}/s;"
      f" with a 5 s endpoint among them {ws['deliveries_per_s']}/s ({ws.get('fast_throughput_change_pct')}%)")
PY
