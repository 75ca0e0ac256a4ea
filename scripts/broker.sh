#!/usr/bin/env bash
# Starts or stops the development Kafka-protocol broker (nisshi, formerly
# Tansu) unless a broker already answers at KAFKA_BROKERS. The broker keeps
# its data in a PostgreSQL database of its own (BROKER_STORAGE, created on
# start), so it survives its own restart; nothing in the switch depends on
# that (the outbox republishes).
set -euo pipefail

cmd=${1:?usage: broker.sh start|stop|status}
nisshi=${NISSHI:?NISSHI must point at the nisshi binary}
brokers=${KAFKA_BROKERS:-127.0.0.1:9092}
first=${brokers%%,*}
host=${first%:*}
port=${first##*:}
run_dir=${BROKER_DIR:-${RUN_DIR:-.run}/broker}
# postgres://…/DATABASE (survives broker restarts; the default),
# sqlite://FILE (relative to run_dir) or memory://nisshi/ (fresh each
# start; the benchmark uses it).
storage=${BROKER_STORAGE:-postgres://postgres@127.0.0.1:5432/nisshi?sslmode=disable}
pid_file=$run_dir/nisshi.pid

reachable() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

case "$cmd" in
start)
  if reachable; then
    echo "broker: using the broker already listening at $host:$port"
    exit 0
  fi
  mkdir -p "$run_dir"
  if [[ $storage == postgres* ]]; then
    database=${storage%%\?*}
    database=${database##*/}
    admin_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
    if [[ -z $(psql -tA "$admin_url" -c "SELECT 1 FROM pg_database WHERE datname = '$database'") ]]; then
      psql -q "$admin_url" -c "CREATE DATABASE \"$database\""
    fi
  fi
  # The sqlite path is relative to the broker's working directory.
  (cd "$run_dir" && { nohup "$nisshi" broker \
      --listener-url "tcp://$host:$port" \
      --advertised-listener-url "tcp://$host:$port" \
      --storage-engine "$storage" >broker.log 2>&1 & echo $! >nisshi.pid; })
  for _ in $(seq 1 100); do
    if reachable; then
      echo "broker: nisshi started at $host:$port (pid $(cat "$pid_file"), log $run_dir/broker.log)"
      exit 0
    fi
    sleep 0.2
  done
  echo "broker: nisshi did not start; see $run_dir/broker.log" >&2
  tail -20 "$run_dir/broker.log" >&2 || true
  exit 1
  ;;
stop)
  if [[ -f $pid_file ]]; then
    pid=$(cat "$pid_file")
    kill "$pid" 2>/dev/null || true
    # nisshi may ignore SIGTERM for a while; it is crash-safe, so SIGKILL.
    for _ in $(seq 1 15); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pid_file"
    for _ in $(seq 1 50); do reachable || break; sleep 0.1; done
    echo "broker: stopped"
  fi
  ;;
status)
  if reachable; then echo "broker: up at $host:$port"; else echo "broker: down"; exit 1; fi
  ;;
*)
  echo "usage: broker.sh start|stop|status" >&2
  exit 2
  ;;
esac
