#!/usr/bin/env bash
# Compares development-broker stores side by side (issue 13): for each
# candidate "name=nisshi-binary=storage-url", on a fresh store:
#   1. produce MESSAGES (default 500,000; 300 bytes, acks=all, idempotent) in
#      five chunks, so a store that slows down as the topic fills shows it;
#   2. fetch them all with one group (join time and fetch rate), commit;
#   3. join a fresh group three times (time to the first message);
#   4. produce 100,000 more at 10,000/s and SIGKILL the broker two seconds in, restart
#      it on the same store, let the producer finish (it retries), then
#      check that every acknowledged message is there and that the group of
#      step 2 still has its committed offset.
# Prints one JSON object per candidate and writes bench/broker-compare.json.
# Needs posctl (target/release or PROFILE) and PostgreSQL for postgres://.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${COMPARE_PORT:-19093}
brokers=127.0.0.1:$port
messages=${MESSAGES:-500000}
chunk=$((messages / 5))
posctl=target/${PROFILE:-release}/posctl
work=${COMPARE_DIR:-.run/broker-compare}
psql_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
mkdir -p "$work" bench
results=()

reachable() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start_broker() { # binary storage dir
  (cd "$3" && { nohup "$1" broker --listener-url "tcp://$brokers" \
      --advertised-listener-url "tcp://$brokers" --storage-engine "$2" \
      >>broker.log 2>&1 & echo $! >pid; })
  for _ in $(seq 1 300); do reachable && return 0; sleep 0.1; done
  echo "broker did not start: $3/broker.log" >&2; tail -20 "$3/broker.log" >&2; return 1
}

kill_broker() { # dir
  local pid; pid=$(cat "$1/pid")
  kill -9 "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  for _ in $(seq 1 100); do reachable || break; sleep 0.05; done
}

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

for candidate in "$@"; do
  name=${candidate%%=*}; rest=${candidate#*=}
  binary=${rest%%=*}; storage=${rest#*=}
  dir=$work/$name
  rm -rf "$dir"; mkdir -p "$dir"
  if [[ $storage == postgres* ]]; then
    db=${storage##*/}
    psql -q "$psql_url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
  fi
  echo "== $name ($storage)" >&2
  start_broker "$binary" "$storage" "$dir"
  bench="$posctl broker-bench --brokers $brokers"
  chunks=()
  for i in 0 1 2 3 4; do
    out=$(timeout 1200 $bench produce --topic compare --messages "$chunk" --first $((i * chunk)) \
          --acked-file "$dir/acked" --message-timeout-ms 120000)
    echo "  produce chunk $i: $out" >&2
    chunks+=("$(field "$out" produce_per_s)")
  done
  fetched=$(timeout 1200 $bench fetch --topic compare --group reader --messages "$messages")
  echo "  fetch: $fetched" >&2
  joins=()
  for i in 1 2 3; do
    out=$(timeout 300 $bench fetch --topic compare --group "joiner-$i" --messages 1)
    joins+=("$(field "$out" join_ms)")
  done
  echo "  group joins (ms): ${joins[*]}" >&2
  # Paced at 10,000/s, so the kill lands mid-run on every store.
  timeout 600 $bench produce --topic compare --messages 100000 --first "$messages" --rate 10000 \
      --acked-file "$dir/acked" --message-timeout-ms 120000 >"$dir/killed-produce.json" &
  producer=$!
  sleep 2
  kill_broker "$dir"
  start_broker "$binary" "$storage" "$dir"
  wait "$producer" || true
  echo "  produce across the kill: $(cat "$dir/killed-produce.json")" >&2
  verified=$(timeout 1200 $bench verify --topic compare --acked-file "$dir/acked" --group reader)
  echo "  verify: $verified" >&2
  kill_broker "$dir"
  results+=("$(python3 - "$name" "$storage" "$fetched" "$verified" "$(cat "$dir/killed-produce.json")" \
      "${chunks[*]}" "${joins[*]}" "$messages" <<'EOF'
import json, sys
name, storage, fetched, verified, killed, chunks, joins, messages = sys.argv[1:]
fetched, verified, killed = json.loads(fetched), json.loads(verified), json.loads(killed)
joins = sorted(int(j) for j in joins.split())
print(json.dumps({
    "store": name, "storage": storage,
    "produce_per_s_by_fifth": [int(c) for c in chunks.split()],
    "fetch_per_s": fetched["fetch_per_s"], "first_join_ms": fetched["join_ms"],
    "fetched": fetched["read"], "group_join_ms_median": joins[1],
    "acked_across_kill": killed["acked"], "failed_across_kill": killed["failed"],
    "acked_total": verified["acked"], "missing_acked": verified["missing_acked"],
    "committed_after_kill": verified["committed"], "committed_expected": int(messages),
}))
EOF
)")
  echo "${results[-1]}"
done
printf '[%s]\n' "$(IFS=,; echo "${results[*]}")" >bench/broker-compare.json
