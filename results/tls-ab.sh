#!/usr/bin/env bash
# Interleaved A/B of two (server, client) binary pairs over TLS: heartbeat p1 and p16 steady
# state (100 connections, 4 s) and full handshakes (3 s); servers pinned to CPU 0, client CPU 1.
set -uo pipefail
A_S=$1; A_C=$2; B_S=$3; B_C=$4; ROUNDS=${5:-4}
D=$(mktemp -d); trap 'rm -rf $D' EXIT
$A_S gen-cert --dir $D/pki >/dev/null
one() { # server client label order
  local s=$1 c=$2 label=$3
  taskset -c 0 $s --name ab-$$ --port 0 -w 1 --durability none --tls-cert $D/pki/cert.pem --tls-key $D/pki/key.pem > $D/out 2>$D/err & local sp=$!
  for _ in $(seq 100); do grep -q "listening on" $D/out && break; sleep 0.05; done
  local port=$(grep -o '127.0.0.1:[0-9]*' $D/out | cut -d: -f2)
  for p in 1 16; do
    local r=$(taskset -c 1 $c run --port $port --tls --tls-ca $D/pki/ca.pem --mix heartbeat --pipeline $p --connections 100 --threads 1 --duration 4 --warmup 1 2>&1 | awk '/^total/{print $4}')
    echo "$label heartbeat-p$p $r"
  done
  local h=$($c handshakes --port $port --tls --tls-ca $D/pki/ca.pem --client-cpus 1 --duration 3 --warmup 0 | awk '{print $1}')
  echo "$label handshakes $h"
  kill $sp; wait $sp
}
for r in $(seq $ROUNDS); do
  if [ $((r % 2)) = 1 ]; then one $A_S $A_C A; one $B_S $B_C B; else one $B_S $B_C B; one $A_S $A_C A; fi
done
