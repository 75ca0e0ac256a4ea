#!/usr/bin/env bash
# Runs a command with a Kafka-protocol broker reachable at KAFKA_BROKERS:
# starts the development broker if none answers, and stops it afterwards
# only if this script started it.
set -euo pipefail
here=$(dirname "$0")
started=0
if ! "$here/broker.sh" status >/dev/null 2>&1; then
  "$here/broker.sh" start
  started=1
fi
status=0
"$@" || status=$?
if [[ $started == 1 ]]; then "$here/broker.sh" stop; fi
exit $status
