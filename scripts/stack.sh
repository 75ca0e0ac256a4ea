#!/usr/bin/env bash
# Starts or stops `switchd all` (issuer simulator, QR platform simulator,
# authorization with its QR notification receiver, terminal gateway,
# reversal handler, settlement batcher, notifier) in the background, logging to .run/switchd.log.
set -euo pipefail
cmd=${1:?usage: stack.sh up|down}
run_dir=${RUN_DIR:-.run}
bin=target/${PROFILE:-debug}/switchd
pid_file=$run_dir/switchd.pid
log=$run_dir/switchd.log

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

case "$cmd" in
up)
  mkdir -p "$run_dir"
  if [[ -f $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "stack: switchd already running (pid $(cat "$pid_file"))"
    exit 0
  fi
  # The service ports lie in Linux's ephemeral range: right after a burst of
  # outgoing connections (the webhook benchmark makes thousands), one of
  # them can still be held by a client socket in TIME_WAIT for up to 60 s.
  # Such a start is retried rather than failed.
  for attempt in $(seq 1 40); do
    nohup "$bin" all >"$log" 2>&1 &
    echo $! >"$pid_file"
    for _ in $(seq 1 150); do
      if port_open 50051 && port_open 50052 && port_open 50053 && port_open 50054 && port_open 50055 && port_open 50070 && port_open 50080 && port_open 50081; then
        echo "stack: switchd all is up (pid $(cat "$pid_file"), log $log)"
        echo "       terminal gateway https://localhost:50051 (mTLS, terminal CA); internal, mTLS with the service CA: authorization :50052, reversal handler :50053, settlement :50054, notifier :50055, issuer simulator :50070"
        echo "       QR platform simulator https://localhost:50080 (dev server certificate), notifying authorization's receiver https://127.0.0.1:50081/qr/notify"
        exit 0
      fi
      if ! kill -0 "$(cat "$pid_file")" 2>/dev/null; then
        if grep -q "Address already in use" "$log" && [[ $attempt -lt 40 ]]; then
          [[ $attempt == 1 ]] && echo "stack: $(grep -m1 'Address already in use' "$log"); waiting for it to be released..." >&2
          sleep 2
          continue 2
        fi
        echo "stack: switchd exited during start-up:" >&2
        tail -20 "$log" >&2
        exit 1
      fi
      sleep 0.2
    done
    echo "stack: switchd did not open its ports in 30 s; see $log" >&2
    exit 1
  done
  ;;
down)
  if [[ -f $pid_file ]]; then
    pid=$(cat "$pid_file")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pid_file"
    echo "stack: switchd stopped"
  fi
  ;;
*)
  echo "usage: stack.sh up|down" >&2
  exit 2
  ;;
esac
