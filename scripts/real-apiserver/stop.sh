#!/usr/bin/env bash
# Stops the kube-apiserver and etcd that start.sh started in DIR, by their pid
# files only, and waits for them to exit (SIGTERM, then SIGKILL after
# STOP_TIMEOUT s, default 20). Safe to run again; leaves DIR in place.
#
#   scripts/real-apiserver/stop.sh DIR
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR="$1"
STOP_TIMEOUT="${STOP_TIMEOUT:-20}"

# alive PID NAME: PID runs (not a zombie) and its program is NAME, so a
# recycled pid is never signalled.
alive() {
  local argv0
  argv0=$(head -z -n1 "/proc/$1/cmdline" 2>/dev/null | tr -d '\0') || return 1
  [ "${argv0##*/}" = "$2" ] || return 1
  [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

stop_one() { # pidfile name
  local file="$DIR/$1" name="$2" pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  case "$pid" in '' | *[!0-9]*) echo "stop.sh: bad pid in $file" >&2; return 1 ;; esac
  alive "$pid" "$name" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((STOP_TIMEOUT * 10))); do
    alive "$pid" "$name" || return 0
    sleep 0.1
  done
  echo "stop.sh: $name $pid did not exit in ${STOP_TIMEOUT} s; SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    alive "$pid" "$name" || return 0
    sleep 0.1
  done
  echo "stop.sh: $name $pid still running" >&2
  return 1
}

rc=0
stop_one apiserver.pid kube-apiserver || rc=1
stop_one etcd.pid etcd || rc=1
exit "$rc"
