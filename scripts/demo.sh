#!/usr/bin/env bash
# `make demo`: starts the broker (if none answers) and `switchd all`, sends a
# handful of real sales over mutual TLS with posctl, resolves an orphan (with
# the merchant's webhook and the terminal's message), resolves two late QR
# payments (S3) by each merchant's policy, closes batches and pays the
# merchants, shows the journal rows in PostgreSQL and the events
# read back from Kafka, then stops what it started. Exits non-zero if any step does not behave as shown.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/${PROFILE:-debug}
posctl="$bin/posctl --certs-dir ${RUN_DIR:-.run}/certs"
psql_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
run_id=$(date +%s)
export SWITCH__DATABASE__SCHEMA_PREFIX=demo_
export SWITCH__KAFKA__TOPIC_PREFIX="demo-$run_id."
export SWITCH__TELEMETRY__LOG_LEVEL=info
# A short acknowledgement window so the orphan is visible within seconds.
export SWITCH__REVERSAL_HANDLER__ACK_WINDOW_MS=3000
# Merchant 2's terminals settle by batch upload: a long window, so the
# batch close, not the deadline, resolves its unacknowledged sale.
export SWITCH__REVERSAL_HANDLER__MERCHANTS__MERCHANT0000002__ACK_WINDOW_MS=600000
# QR (S3): the terminal stops waiting after 1.5 s and the shopper pays 4 s
# after the pay call, so the platform's word comes after the terminal gave
# up. `switchd all` runs the QR platform simulator and points it at the
# switch's notification receiver by itself.
export SWITCH__AUTHORIZATION__QR__TERMINAL_WAIT_MS=1500
export SWITCH__AUTHORIZATION__QR__QUERY_INTERVAL_MS=1000
export SWITCH__QR_SIMULATOR__LATE_DELAY_MS=4000
qr_code=134567890123456789
# Windows close when the demo says so, and payout files go under .run.
export SWITCH__SETTLEMENT__SCHEDULER_ENABLED=false
export SWITCH__SETTLEMENT__PAYOUT_DIR="${RUN_DIR:-.run}/demo-payouts"
# Merchant 1's webhook endpoint: posctl plays the merchant's server.
webhook_address=127.0.0.1:18085
webhook_secret=demo-webhook-secret-merchant-1
webhook_log="${RUN_DIR:-.run}/demo-webhooks.log"
# Merchant 2's endpoint (its QR orphans are confirmed, not refunded).
webhook_address_2=127.0.0.1:18087
webhook_secret_2=demo-webhook-secret-merchant-2
webhook_log_2="${RUN_DIR:-.run}/demo-webhooks-2.log"
iso_address=127.0.0.1:18583
mkdir -p "${RUN_DIR:-.run}"
export SWITCH_CONFIG="${RUN_DIR:-.run}/demo-switchd.toml"
cat >"$SWITCH_CONFIG" <<TOML
[notifier.retry]
initial_delay_ms = 200
max_delay_ms = 2000

[[notifier.endpoints]]
merchant_id = "MERCHANT0000001"
url = "http://$webhook_address/webhooks"
secret = "$webhook_secret"

[[notifier.endpoints]]
merchant_id = "MERCHANT0000002"
url = "http://$webhook_address_2/webhooks"
secret = "$webhook_secret_2"

# A QR payment the terminal never showed: merchant 2 hands goods over first
# and keeps it; merchant 1 (the default, reverse) has it refunded.
[authorization.qr.merchant_policies]
MERCHANT0000002 = "confirm"

# Terminals that speak ISO 8583 (1987 ASCII) over TLS with their certificate.
[[gateway.iso_listeners]]
listen = "$iso_address"
profile = "ascii_1987"
TOML
today=$(date -u +%F)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

started_broker=0
webhook_pid=
webhook_pid_2=
cleanup() {
  scripts/stack.sh down >/dev/null || true
  if [[ -n $webhook_pid ]]; then kill "$webhook_pid" 2>/dev/null || true; fi
  if [[ -n $webhook_pid_2 ]]; then kill "$webhook_pid_2" 2>/dev/null || true; fi
  if [[ $started_broker == 1 ]]; then scripts/broker.sh stop >/dev/null || true; fi
}
trap cleanup EXIT

step "Starting the Kafka-protocol broker and switchd all"
if ! scripts/broker.sh status >/dev/null 2>&1; then
  scripts/broker.sh start
  started_broker=1
else
  echo "broker: using the one already at ${KAFKA_BROKERS:-127.0.0.1:9092}"
fi
# A clean journal for the demo (its own schema; nothing else is touched).
psql -q "$psql_url" -c "SET client_min_messages = warning; DROP SCHEMA IF EXISTS demo_authorization CASCADE; DROP SCHEMA IF EXISTS demo_reversal_handler CASCADE; DROP SCHEMA IF EXISTS demo_settlement_batcher CASCADE; DROP SCHEMA IF EXISTS demo_notifier CASCADE; DROP SCHEMA IF EXISTS demo_terminal_gateway CASCADE; DROP SCHEMA IF EXISTS demo_qr_simulator CASCADE" >/dev/null
rm -rf "$SWITCH__SETTLEMENT__PAYOUT_DIR"
scripts/stack.sh up
# The merchant's webhook endpoint, verifying every signature.
$posctl --json webhooks listen --address "$webhook_address" --secret "$webhook_secret" >"$webhook_log" 2>&1 &
webhook_pid=$!
$posctl --json webhooks listen --address "$webhook_address_2" --secret "$webhook_secret_2" >"$webhook_log_2" 2>&1 &
webhook_pid_2=$!

step "1. An approved sale from terminal TERM0001 (EUR 10.50); posctl acknowledges it like a terminal that printed its receipt, which confirms it"
$posctl sale --amount 1050 --currency EUR --pan 4111111111111111 --stan 100001 --date "$today"

step "2. A declined sale (the issuer simulator declines amounts ending in 51: insufficient funds)"
$posctl sale --amount 2051 --currency EUR --pan 5555555555554444 --stan 100002 --date "$today"

step "3. The terminal retries sale 1 (same STAN): the original answer, no second authorization"
$posctl sale --amount 1050 --currency EUR --pan 4111111111111111 --stan 100001 --date "$today"

step "4. The same STAN with another amount is a modified request and is refused"
if $posctl sale --amount 1060 --currency EUR --pan 4111111111111111 --stan 100001 --date "$today"; then
  echo "demo: a modified replay was accepted" >&2
  exit 1
fi

step "5. Bad input names the field and writes nothing (a PAN failing the Luhn check)"
if $posctl sale --amount 1000 --currency EUR --pan 4111111111111112 --stan 100003 --date "$today"; then
  echo "demo: an invalid PAN was accepted" >&2
  exit 1
fi

step "6. The terminal asks for sale 2's authoritative status"
$posctl inquiry --stan 100002 --date "$today"

step "7. A terminal certificate for TERM0002 cannot speak for TERM0001"
if $posctl --terminal TERM0002 --claim TERM0001 inquiry --stan 100001 --date "$today"; then
  echo "demo: a terminal spoke for another" >&2
  exit 1
fi

step "8. S1: the issuer approves, but the terminal never shows the result (no acknowledgement)"
$posctl sale --no-ack --amount 4200 --currency EUR --pan 4012888888881881 --stan 100008 --date "$today"
echo
echo "Waiting for the acknowledgement deadline (3 s here): the reversal handler finds the orphan,"
echo "authorization reverses it at the issuer and repeats until the issuer acknowledges..."
for _ in $(seq 1 60); do
  if $posctl --json inquiry --stan 100008 --date "$today" 2>/dev/null | grep -q '"status": *"REVERSED"'; then
    break
  fi
  sleep 0.5
done
$posctl inquiry --stan 100008 --date "$today"
echo
echo "The merchant's endpoint receives a signed webhook (posctl webhooks listen verified the signature):"
for _ in $(seq 1 60); do
  grep -q '"payment.reversed"' "$webhook_log" && break
  sleep 0.5
done
if ! grep '"payment.reversed"' "$webhook_log" | grep '"stan":"100008"' | grep -q '"signature_valid":true'; then
  echo "demo: no validly signed payment.reversed webhook for STAN 100008" >&2
  cat "$webhook_log" >&2
  exit 1
fi
grep '"payment.reversed"' "$webhook_log" | grep '"stan":"100008"' | head -1 | python3 -m json.tool
echo
echo "TERM0001, which was offline while this happened, subscribes and gets its backlog (and acknowledges it):"
$posctl watch --count 1 --idle-timeout 30s

step "9. S4: the terminal timed out and asks to reverse (sent twice: one reversal)"
$posctl sale --no-ack --amount 1500 --currency EUR --pan 4111111111111111 --stan 100009 --date "$today"
$posctl reverse --stan 100009 --date "$today"
$posctl reverse --stan 100009 --date "$today"

step "10. A reversal for a transaction the switch never saw: answered and recorded"
$posctl reverse --stan 100010 --date "$today"

# Waits until the settlement batcher has heard of a sale (its consumer may
# still be joining its group right after start-up).
wait_for_settlement() {
  local terminal=$1 stan=$2
  for _ in $(seq 1 120); do
    if $posctl --terminal "$terminal" settlement status --stan "$stan" --date "$today" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  echo "demo: the settlement batcher never saw STAN $stan" >&2
  exit 1
}

step "11. S5: TERM0001 closes its batch: 1 sale of EUR 10.50 completed, 1 reversal of EUR 15.00 asked for"
wait_for_settlement TERM0001 100001
wait_for_settlement TERM0001 100009
$posctl close-batch --batch 000001 --totals EUR:1:1050:1:1500

step "12. TERM0003's receipt printed but its acknowledgement was lost; its batch close is out of balance, so it uploads"
$posctl --terminal TERM0003 sale --no-ack --amount 2500 --currency EUR --pan 5555555555554444 --stan 200001 --date "$today"
wait_for_settlement TERM0003 200001
$posctl --terminal TERM0003 close-batch --batch 000001 --totals EUR:1:2500:0:0 || true
$posctl --terminal TERM0003 upload-batch --batch 000001 --sale "200001:$today:2500:EUR"

step "13. The merchants' windows close: confirmed sales paid net of the 0.60% fee, payout files written"
$posctl settlement run
echo
echo "CSV payout file:"
cat "$SWITCH__SETTLEMENT__PAYOUT_DIR"/payouts-*.csv
echo
$posctl settlement status --stan 100001 --date "$today"
$posctl settlement status --stan 100008 --date "$today"

step "14. ISO 8583 over TLS (TERM0002, the gateway's ISO listener): an echo, a sale and its completion advice, an S1 orphan, and a reversal sent twice"
$posctl --terminal TERM0002 iso --address "$iso_address" echo
$posctl --terminal TERM0002 iso --address "$iso_address" sale --amount 1250 --pan 4111111111111111 --stan 300001
$posctl --terminal TERM0002 iso --address "$iso_address" sale --no-ack --amount 3300 --pan 4111111111111111 --stan 300002
$posctl --terminal TERM0002 iso --address "$iso_address" sale --no-ack --amount 700 --pan 5555555555554444 --stan 300003
$posctl --terminal TERM0002 iso --address "$iso_address" reverse --stan 300003
$posctl --terminal TERM0002 iso --address "$iso_address" reverse --stan 300003 --repeat
echo "Waiting for the ISO orphan's acknowledgement deadline (3 s) to reverse it..."
for _ in $(seq 1 60); do
  if $posctl --terminal TERM0002 --json inquiry --stan 300002 --date "$today" 2>/dev/null | grep -q '"status": *"REVERSED"'; then
    break
  fi
  sleep 0.5
done
$posctl --terminal TERM0002 inquiry --stan 300002 --date "$today"

# The order id of a QR payment, by terminal and STAN.
qr_order_of() {
  $posctl --terminal "$1" --json qr status --stan "$2" --date "$today" | python3 -c 'import json,sys; print(json.load(sys.stdin)["order_id"])'
}
# Waits until a QR payment reaches `state`.
wait_for_qr_state() {
  local terminal=$1 stan=$2 state=$3
  for _ in $(seq 1 60); do
    if $posctl --terminal "$terminal" --json qr status --stan "$stan" --date "$today" 2>/dev/null | grep -q "\"state\": *\"$state\""; then
      return 0
    fi
    sleep 0.5
  done
  echo "demo: QR payment $terminal/$stan never became $state" >&2
  $posctl --terminal "$terminal" qr status --stan "$stan" --date "$today" >&2 || true
  exit 1
}
# Waits for the validly signed webhook of `kind` naming QR order `order` in `log`.
wait_for_qr_webhook() {
  local log=$1 kind=$2 order=$3
  for _ in $(seq 1 60); do
    grep "\"$kind\"" "$log" | grep "\"order_id\":\"$order\"" | grep -q '"signature_valid":true' && break
    sleep 0.5
  done
  if ! grep "\"$kind\"" "$log" | grep "\"order_id\":\"$order\"" | grep -q '"signature_valid":true'; then
    echo "demo: no validly signed $kind webhook for QR order $order" >&2
    cat "$log" >&2
    exit 1
  fi
  grep "\"$kind\"" "$log" | grep "\"order_id\":\"$order\"" | head -1 | python3 -m json.tool
}
# Shows the terminal's next pushed message and checks its kind names the order.
expect_push() {
  local terminal=$1 kind=$2 order=$3 pushed
  pushed=$($posctl --terminal "$terminal" --json watch --count 1 --idle-timeout 30s)
  echo "$pushed"
  if ! grep -q "\"$kind\"" <<<"$pushed" || ! grep -q "$order" <<<"$pushed"; then
    echo "demo: expected a $kind message for QR order $order on $terminal" >&2
    exit 1
  fi
}

step "15. S3 under a confirm policy: TERM0003 (merchant 2) starts a QR payment, the shopper confirms 4 s later, after the terminal stopped waiting (1.5 s) and printed nothing"
$posctl --terminal TERM0003 qr pay --no-ack --code "$qr_code" --amount 1220 --stan 400001 --date "$today"
order_confirmed=$(qr_order_of TERM0003 400001)
echo
echo "The platform notifies the switch when the shopper pays; merchant 2's policy keeps the payment (confirmed, evidence policy)..."
wait_for_qr_state TERM0003 400001 confirmed
$posctl --terminal TERM0003 qr status --stan 400001 --date "$today"
echo
echo "Merchant 2's endpoint receives payment.confirmed:"
wait_for_qr_webhook "$webhook_log_2" payment.confirmed "$order_confirmed"
echo
echo "TERM0003 is told to print the receipt it never printed:"
expect_push TERM0003 reprint_receipt "$order_confirmed"

step "16. S3 under the reverse policy: TERM0001 (merchant 1) the same; the switch refunds it at the platform"
$posctl qr pay --no-ack --code "$qr_code" --amount 1320 --stan 400002 --date "$today"
order_refunded=$(qr_order_of TERM0001 400002)
echo
echo "The shopper pays after the terminal gave up; merchant 1's policy gives the money back (a refund at the platform)..."
wait_for_qr_state TERM0001 400002 refunded
$posctl qr status --stan 400002 --date "$today"
echo
echo "Merchant 1's endpoint receives payment.reversed:"
wait_for_qr_webhook "$webhook_log" payment.reversed "$order_refunded"
echo
echo "TERM0001 is told to void any receipt of it:"
expect_push TERM0001 void_receipt "$order_refunded"
echo
echo "The QR platform's ledger (GET /control/ledger/ORDER on the simulator): charged and refunded in full"
ledger=$(curl -sS --fail --cacert "${RUN_DIR:-.run}/certs/ca.pem" "https://localhost:50080/control/ledger/$order_refunded")
python3 -m json.tool <<<"$ledger"
if ! python3 -c 'import json,sys; e=json.loads(sys.argv[1]); sys.exit(0 if e["charged"] == 1320 and e["refunded"] == 1320 else 1)' "$ledger"; then
  echo "demo: the platform did not refund QR order $order_refunded in full" >&2
  exit 1
fi
kept=$(curl -sS --fail --cacert "${RUN_DIR:-.run}/certs/ca.pem" "https://localhost:50080/control/ledger/$order_confirmed")
if ! python3 -c 'import json,sys; e=json.loads(sys.argv[1]); sys.exit(0 if e["charged"] == 1220 and e["refunded"] == 0 else 1)' "$kept"; then
  echo "demo: the platform's ledger does not keep QR order $order_confirmed charged: $kept" >&2
  exit 1
fi
echo "(order $order_confirmed, confirmed: charged 1220, refunded 0)"

step "The journal in PostgreSQL (schema demo_authorization): no full card number, ever"
psql "$psql_url" -P pager=off -c "
  SELECT terminal_id, stan, rrn, masked_pan, amount_minor, currency, state,
         response_code AS rc, approval_code, acknowledged_at IS NOT NULL AS acked,
         coalesce(reversal_reason, confirmation_evidence) AS why
    FROM demo_authorization.authorizations ORDER BY created_at"
psql "$psql_url" -P pager=off -c "
  SELECT a.stan, r.reason, r.status, r.attempts, r.acknowledged_at - r.requested_at AS took
    FROM demo_authorization.reversals r JOIN demo_authorization.authorizations a USING (transaction_id)"
psql "$psql_url" -P pager=off -c "
  SELECT a.stan, t.from_state, t.to_state, t.event
    FROM demo_authorization.authorization_transitions t
    JOIN demo_authorization.authorizations a USING (transaction_id)
   ORDER BY t.id"

psql "$psql_url" -P pager=off -c "
  SELECT terminal_id, stan, order_id, amount_minor, currency, orphan_policy, state,
         platform_txn_id IS NOT NULL AS paid, terminal_gave_up, acknowledged_at IS NOT NULL AS acked,
         coalesce(confirmation_evidence, refund_reason) AS why
    FROM demo_authorization.qr_payments ORDER BY created_at"
psql "$psql_url" -P pager=off -c "
  SELECT p.terminal_id, p.stan, t.from_state, t.to_state, t.event, t.command
    FROM demo_authorization.qr_transitions t
    JOIN demo_authorization.qr_payments p USING (transaction_id)
   ORDER BY t.id"

step "The events on Kafka (topic ${SWITCH__KAFKA__TOPIC_PREFIX}authorization-events), read back with posctl events"
$posctl events --topic-prefix "$SWITCH__KAFKA__TOPIC_PREFIX" --idle-timeout 3s

states=$(psql -tA "$psql_url" -c "SELECT string_agg(stan || ':' || state, ' ' ORDER BY stan) FROM demo_authorization.authorizations")
expected="100001:confirmed 100002:declined 100008:reversed 100009:reversed 200001:confirmed 300001:confirmed 300002:reversed 300003:reversed"
if [[ $states != "$expected" ]]; then
  echo "demo: expected journal states '$expected', found '$states'" >&2
  exit 1
fi
qr_states=$(psql -tA "$psql_url" -c "SELECT string_agg(terminal_id || '/' || stan || ':' || state, ' ' ORDER BY stan) FROM demo_authorization.qr_payments")
if [[ $qr_states != "TERM0003/400001:confirmed TERM0001/400002:refunded" ]]; then
  echo "demo: expected QR states 'TERM0003/400001:confirmed TERM0001/400002:refunded', found '$qr_states'" >&2
  exit 1
fi
paid=$(psql -tA "$psql_url" -c "SELECT string_agg(stan, ' ' ORDER BY stan) FROM demo_settlement_batcher.transactions WHERE window_id IS NOT NULL")
if [[ $paid != "100001 200001" ]]; then
  echo "demo: expected sales 100001 and 200001 paid, found '$paid'" >&2
  exit 1
fi
step "Done: sale 1 confirmed by its receipt, sale 2 declined, the S1 orphan reversed at its deadline (merchant told by a signed webhook, terminal told to void its receipt), the S4 sale reversed once at the terminal's request, TERM0003's sale confirmed by its batch upload, and both confirmed sales paid; two QR payments the shopper confirmed after the terminal gave up (S3), one kept and reprinted under a confirm policy, one refunded at the platform and voided under reverse; over ISO 8583, a sale confirmed by its completion advice, an orphan reversed at its deadline and a terminal reversal made once. Stopping."
