#!/usr/bin/env bash
# Stops what scripts/real-runtime/start.sh started in DIR and leaves nothing
# behind: no process, no mount, no cgroup. DIR itself stays (rm -rf works
# afterwards). Safe to run again, and after a failed start.
#
#   scripts/real-runtime/stop.sh DIR
#
# 1. While containerd answers: StopPodSandbox and RemovePodSandbox for every
#    sandbox (so the CNI plugins get their DEL), SANDBOX_TIMEOUT s each
#    (default 30). STOP_SANDBOXES=0 skips this.
# 2. SIGTERM to containerd, SIGKILL after STOP_TIMEOUT s (default 10).
# 3. SIGKILL to every process left in the instance's cgroups (shims, pause
#    processes, plugins) and to any containerd-shim of DIR's socket.
# 4. Unmounts everything at or below DIR (the sandboxes' network
#    namespaces), removes the instance's cgroups.
# Exit 1 if something could not be cleaned up (it says what on stderr).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
[ -d "$1" ] || exit 0
DIR=$(cd "$1" && pwd)
SOCK="$DIR/containerd.sock"
CACHE="${PALISADE_CACHE:-/var/cache/palisade}"
CRI="$CACHE/real-runtime/cri"
STOP_TIMEOUT="${STOP_TIMEOUT:-10}"
SANDBOX_TIMEOUT="${SANDBOX_TIMEOUT:-30}"
log() { echo "real-runtime stop: $*" >&2; }
rc=0

# alive PID NAME: PID runs (not a zombie) and its program is NAME.
alive() {
  local argv0
  argv0=$(head -z -n1 "/proc/$1/cmdline" 2>/dev/null | tr -d '\0') || return 1
  [ "${argv0##*/}" = "$2" ] || return 1
  [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

pid=""
if [ -s "$DIR/containerd.pid" ]; then
  pid=$(cat "$DIR/containerd.pid")
  case "$pid" in '' | *[!0-9]*) log "bad pid in $DIR/containerd.pid"; pid="" ;; esac
fi

# --- 1. sandboxes, through the CRI ----------------------------------------------
if [ "${STOP_SANDBOXES:-1}" != 0 ] && [ -n "$pid" ] && alive "$pid" containerd && [ -S "$SOCK" ] && [ -x "$CRI" ]; then
  if list=$("$CRI" list --socket "$SOCK" --timeout 10 2>&1); then
    while IFS= read -r id; do
      [ -n "$id" ] || continue
      "$CRI" stopp --socket "$SOCK" --timeout "$SANDBOX_TIMEOUT" "$id" >/dev/null ||
        log "StopPodSandbox $id failed"
      "$CRI" rmp --socket "$SOCK" --timeout "$SANDBOX_TIMEOUT" "$id" >/dev/null ||
        log "RemovePodSandbox $id failed"
    done < <(grep -o '"id":"[0-9a-f]*"' <<<"$list" | cut -d'"' -f4)
  else
    log "cannot list sandboxes: $list"
  fi
fi

# --- 2. containerd --------------------------------------------------------------------
if [ -n "$pid" ] && alive "$pid" containerd; then
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((STOP_TIMEOUT * 10))); do
    alive "$pid" containerd || break
    sleep 0.1
  done
  if alive "$pid" containerd; then
    log "containerd $pid did not exit in $STOP_TIMEOUT s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
fi

# --- 3. everything else of the instance --------------------------------------------------
cgroups=()
if [ -s "$DIR/cgroups" ]; then
  while IFS= read -r d; do
    case "${d##*/}" in
      palisade-rr-*) [ -d "$d" ] && cgroups+=("$d") ;;
      *) log "not an instance cgroup, left alone: $d" ;;
    esac
  done <"$DIR/cgroups"
fi
# Shims of this instance, also when the cgroups are unknown (a failed start).
shims() {
  local p args
  for p in /proc/[0-9]*; do
    args=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
    case "$args" in
      *containerd-shim*" -address $SOCK "*) echo "${p#/proc/}" ;;
      "containerd --config $DIR/config.toml "*) echo "${p#/proc/}" ;;
    esac
  done
}
members() {
  { [ "${#cgroups[@]}" -eq 0 ] || find "${cgroups[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null; } || true
  shims
}
left=""
for _ in $(seq 1 100); do
  left=$(members | sort -u | tr '\n' ' ')
  [ -n "${left// /}" ] || break
  # shellcheck disable=SC2086 # a list of pids
  kill -KILL $left 2>/dev/null || true
  sleep 0.1
done
if [ -n "${left// /}" ]; then
  log "processes still running: $left"
  rc=1
fi

# --- 4. mounts and cgroups ----------------------------------------------------------
under_dir() {
  local mp
  while read -r _ _ _ _ mp _; do
    mp=$(printf '%b' "$mp")
    case "$mp" in "$DIR" | "$DIR"/*) echo "$mp" ;; esac
  done </proc/self/mountinfo | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}
for _ in 1 2 3; do
  mps=$(under_dir)
  [ -n "$mps" ] || break
  while IFS= read -r mp; do
    umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
  done <<<"$mps"
done
mps=$(under_dir)
if [ -n "$mps" ]; then
  log "still mounted: $mps"
  rc=1
fi

for d in "${cgroups[@]}"; do
  for _ in $(seq 1 50); do
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ -d "$d" ] || break
    sleep 0.1
  done
  if [ -d "$d" ]; then
    log "cannot remove cgroup $d"
    rc=1
  fi
done
exit "$rc"
