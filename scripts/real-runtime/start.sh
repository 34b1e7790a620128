#!/usr/bin/env bash
# Starts a private containerd (Debian 12's 1.6, with its CRI plugin) inside an
# existing network namespace that plays the node, so that the CNI plugins it
# runs for pod sandboxes touch only that namespace.
#
#   scripts/real-runtime/start.sh DIR NODE_NETNS CNI_BIN_DIR CNI_CONF_DIR
#
# DIR must be empty or absent. NODE_NETNS is a name made with `ip netns add`
# (or a path to a network namespace file). CNI_BIN_DIR must hold `loopback`
# (containerd always runs it) besides the plugins the config names; put the
# conflist into CNI_CONF_DIR before starting (start.sh then waits until the
# CRI plugin reports the network ready).
#
# On success (exit 0) the CRI socket answers and the sandbox image
# palisade.invalid/pause:1 is imported. The last stdout line is the socket
# path. DIR holds:
#   containerd.sock   the CRI (and containerd) gRPC socket
#   containerd.pid    containerd's pid; containerd.log its log
#   env               shell syntax: CONTAINERD_SOCK, CONTAINERD_PID, CRI (the
#                     client), NODE_NETNS, NETNS_DIR, CGROUP_NAME
#   state/io.containerd.grpc.v1.cri/netns/  (NETNS_DIR) where containerd mounts
#                     the sandboxes' network namespaces; it is shared with the
#                     machine, so the paths `cri inspectp` reports work from
#                     outside too (nsenter --net=PATH)
#   cgroups           the instance's cgroup folders, one a line
#   config.toml, root/, state/, run/, runc/, cni/, opt/
# Stop with scripts/real-runtime/stop.sh DIR (kills everything, unmounts).
#
# How: the containerd process is moved into a cgroup of its own
# (palisade-rr-*, below this process's cgroup in each hierarchy), then enters
# NODE_NETNS and new mount and cgroup namespaces. There it mounts a sysfs of
# the node namespace (as `ip netns exec` does), a tmpfs on /sys/fs/cgroup with
# this machine's cgroup hierarchies again (`ip netns exec` drops them; runc
# needs them), its own /run/containerd (shim sockets: DIR/run) and
# /var/lib/cni (the CNI result cache: DIR/cni), and keeps only NETNS_DIR
# shared with the machine. Every other path looks the same inside as outside
# (an agent socket or IPAM folder anywhere but under /run/containerd or
# /var/lib/cni works). Sandboxes get cgroups <instance>/k8s.io/<id>.
#
# Changes outside DIR: lo is set up in NODE_NETNS (the CRI stream server
# listens on its 127.0.0.1), and the empty folders /run/containerd and
# /var/lib/cni are created as mount points if missing, and left.
#
# Env: READY_TIMEOUT (s, default 30), CONTAINERD_LOG_LEVEL (default info),
# PALISADE_CACHE (where build.sh put cri and pause.tar).
set -euo pipefail

die() { echo "real-runtime start: ERROR: $*" >&2; exit 1; }
log() { echo "real-runtime start: $*" >&2; }

[ $# -eq 4 ] || die "usage: $0 DIR NODE_NETNS CNI_BIN_DIR CNI_CONF_DIR"
[ "$(id -u)" -eq 0 ] || die "needs root"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE="${PALISADE_CACHE:-/var/cache/palisade}"
CRI="$CACHE/real-runtime/cri"
PAUSE="$CACHE/real-runtime/pause.tar"
PAUSE_REF="palisade.invalid/pause:1"
READY_TIMEOUT="${READY_TIMEOUT:-30}"
LOG_LEVEL="${CONTAINERD_LOG_LEVEL:-info}"

mkdir -p "$1" || die "cannot create $1"
DIR=$(cd "$1" && pwd)
[ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty"
case "$DIR" in *[[:space:]\"\\]*) die "DIR must not contain spaces, quotes or backslashes: $DIR" ;; esac
SOCK="$DIR/containerd.sock"
# sun_path holds 107 bytes; the ttrpc socket adds ".ttrpc".
[ "${#SOCK}" -le 100 ] || die "DIR is too long for a unix socket path: $SOCK"

case "$2" in
  */*) NETNS_FILE="$2" ;;
  *) NETNS_FILE="/run/netns/$2" ;;
esac
[ -e "$NETNS_FILE" ] || die "no network namespace $NETNS_FILE (create it with ip netns add)"
[ "$(stat -f -c %T "$NETNS_FILE" 2>/dev/null)" = nsfs ] || die "$NETNS_FILE is not a namespace mount"
[ "$(readlink /proc/self/ns/net)" != "$(nsenter --net="$NETNS_FILE" readlink /proc/self/ns/net)" ] ||
  die "$NETNS_FILE is this machine's own network namespace"
[ -d "$3" ] || die "no CNI bin dir $3"
[ -d "$4" ] || die "no CNI conf dir $4"
CNI_BIN=$(cd "$3" && pwd)
CNI_CONF=$(cd "$4" && pwd)
[ -x "$CNI_BIN/loopback" ] || die "$CNI_BIN has no loopback plugin (containerd runs it for every sandbox; copy /usr/lib/cni/loopback)"
for b in containerd ctr runc nsenter unshare mount umount ip; do
  command -v "$b" >/dev/null 2>&1 || die "$b is missing; run $HERE/build.sh"
done
{ [ -x "$CRI" ] && [ -s "$PAUSE" ]; } || die "no $CRI or $PAUSE; run $HERE/build.sh"

# The CRI plugin's stream server listens on 127.0.0.1 of the node namespace
# (it exits "cannot assign requested address" while lo is down).
nsenter --net="$NETNS_FILE" ip link set lo up || die "cannot set lo up in $NETNS_FILE"

# --- cgroups ------------------------------------------------------------------
# This machine's hierarchies (mountinfo: mount point, root, fs type, super
# options) and this process's place in each (/proc/self/cgroup).
CGROUP_NAME="palisade-rr-$$-$(date +%s%N | tail -c 7)"
cg_lines=() # "kind mountpoint opts instance-dir"
V2_ONLY=0
while read -r _ _ _ root mp rest; do
  fstype=${rest#* - }
  fstype=${fstype%% *}
  super=${rest##* }
  case "$fstype" in cgroup | cgroup2) ;; *) continue ;; esac
  case "$mp" in *\\*) die "cgroup mount point with an escaped character: $mp" ;; esac
  if [ "$fstype" = cgroup2 ]; then
    own=$(awk -F: '$1 == "0" && $2 == "" { print $3 }' /proc/self/cgroup)
    opts=""
    [ "$mp" = /sys/fs/cgroup ] && V2_ONLY=1
  else
    # The /proc/self/cgroup line whose controller list is in the super options.
    own="" opts=""
    while IFS=: read -r _ ctrls path; do
      [ -n "$ctrls" ] || continue
      first=${ctrls%%,*}
      case ",$super," in *",$first,"*)
        own=$path
        opts=$ctrls
        ;;
      esac
    done </proc/self/cgroup
    [ -n "$opts" ] || die "cannot tell which cgroup of $mp this process is in"
  fi
  [ -n "$own" ] || die "no cgroup of this process for $mp"
  if [ "$root" = / ]; then
    rel=$own
  else
    case "$own/" in "$root"/*) rel=${own#"$root"} ;; *) die "this process's cgroup $own is outside the mount $mp (root $root)" ;; esac
  fi
  inst="$mp${rel%/}/$CGROUP_NAME"
  inst=${inst//\/\//\/}
  cg_lines+=("$fstype $mp ${opts:--} $inst")
done </proc/self/mountinfo
[ "${#cg_lines[@]}" -gt 0 ] || die "no cgroup hierarchy is mounted"

# If anything below fails, stop what was started.
started_ok=0
cleanup() {
  if [ "$started_ok" -ne 1 ]; then
    "$HERE/stop.sh" "$DIR" >&2 || true
  fi
}
trap cleanup EXIT

: >"$DIR/cgroups"
for l in "${cg_lines[@]}"; do
  read -r fstype mp opts inst <<<"$l"
  mkdir "$inst" || die "cannot create cgroup $inst"
  echo "$inst" >>"$DIR/cgroups"
  parent=$(dirname "$inst")
  # A new cpuset cgroup starts without CPUs and memory nodes.
  for f in cpuset.cpus cpuset.mems; do
    if [ -f "$inst/$f" ] && [ -z "$(tr -d '\n' <"$inst/$f")" ]; then
      cat "$parent/$f" >"$inst/$f" || die "cannot copy $parent/$f"
    fi
  done
  if [ "$fstype" = cgroup2 ] && [ "$V2_ONLY" -eq 1 ]; then
    # Pods need controllers below the instance: give it every one offered.
    read -ra ctrls <"$inst/cgroup.controllers"
    for c in "${ctrls[@]}"; do
      echo "+$c" >"$inst/cgroup.subtree_control" 2>/dev/null || log "cannot enable cgroup v2 controller $c"
    done
  fi
done

# --- folders and config -----------------------------------------------------------
NETNS_DIR="$DIR/state/io.containerd.grpc.v1.cri/netns"
mkdir -p "$DIR/root" "$DIR/state" "$DIR/run" "$DIR/runc" "$DIR/cni" "$DIR/opt" "$NETNS_DIR"
# NETNS_DIR in a peer group of its own: the network namespaces containerd
# mounts there (inside its own mount namespace) appear here too.
mount --bind "$NETNS_DIR" "$NETNS_DIR"
mount --make-private "$NETNS_DIR"
mount --make-shared "$NETNS_DIR"
# Mount points inside containerd's mount namespace. They are created empty
# on this machine (as on any node) and never removed: another instance may use
# them.
mkdir -p /run/containerd /var/lib/cni

cat >"$DIR/config.toml" <<EOF
# Written by scripts/real-runtime/start.sh
version = 2
root = "$DIR/root"
state = "$DIR/state"
oom_score = 0
required_plugins = ["io.containerd.grpc.v1.cri"]
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
  level = "$LOG_LEVEL"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_REF"
  # This VM refuses a negative oom_score_adj.
  restrict_oom_score_adj = true
  # Never load an AppArmor profile into this machine's kernel.
  disable_apparmor = true
  enable_selinux = false
  # The sandboxes' network namespaces go to <state>/io.containerd.grpc.v1.cri/netns
  # (not /var/run/netns), which start.sh shares with the machine.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$CNI_CONF"
    max_conf_num = 1
    conf_template = ""
EOF

# --- the process tree ---------------------------------------------------------------
# inner.sh runs in the node's network namespace and new mount and cgroup
# namespaces, then becomes containerd.
mounts=""
for l in "${cg_lines[@]}"; do
  read -r fstype mp opts _ <<<"$l"
  mounts+="$fstype $mp $opts"$'\n'
done
links=""
if [ "$V2_ONLY" -eq 0 ]; then
  for f in /sys/fs/cgroup/*; do
    [ -L "$f" ] && links+="$(readlink "$f") $f"$'\n'
  done
fi
cat >"$DIR/inner.sh" <<EOF
#!/usr/bin/env bash
# Written by scripts/real-runtime/start.sh: runs as the future containerd
# process in the node's network namespace, in new mount and cgroup namespaces.
set -euo pipefail
NETNS_DIR=$NETNS_DIR
V2_ONLY=$V2_ONLY
DIR=$DIR
EOF
cat >>"$DIR/inner.sh" <<'EOF'
die() { echo "inner.sh: ERROR: $*" >&2; exit 1; }
# 1. Nothing done in here may reach the machine: every shared mount but
#    NETNS_DIR becomes a slave (receives, never sends).
shared_mounts() {
  while read -r _ _ _ _ mp rest; do
    opt=${rest%% - *}
    case " $opt " in *" shared:"*) [ "$mp" = "$NETNS_DIR" ] || printf '%b\n' "$mp" ;; esac
  done </proc/self/mountinfo
}
while IFS= read -r mp; do
  mount --make-slave "$mp" || die "cannot make $mp a slave mount"
done < <(shared_mounts)
left=$(shared_mounts)
[ -z "$left" ] || die "still shared with the machine: $left"
# 2. A sysfs of this network namespace, as ip netns exec mounts it.
umount -l /sys
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
# 3. The cgroup hierarchies again; in this cgroup namespace their root is
#    the instance's cgroup.
if [ "$V2_ONLY" -eq 1 ]; then
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
  # No processes in the namespace root, so that it can pass controllers on.
  mkdir /sys/fs/cgroup/containerd
  echo $$ >/sys/fs/cgroup/containerd/cgroup.procs
else
  mount -t tmpfs -o nosuid,nodev,noexec,mode=755 cgroup /sys/fs/cgroup
  while read -r fstype mp opts; do
    [ -n "$fstype" ] || continue
    mkdir -p "$mp"
    if [ "$fstype" = cgroup2 ]; then
      mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$mp"
    else
      mount -t cgroup -o "nosuid,nodev,noexec,$opts" cgroup "$mp"
    fi
  done <"$DIR/inner.mounts"
  while read -r target link; do
    [ -n "$target" ] && ln -s "$target" "$link"
  done <"$DIR/inner.links"
fi
# 4. containerd's fixed paths, made private to this instance.
mount --bind "$DIR/run" /run/containerd
mount --bind "$DIR/cni" /var/lib/cni
echo $$ >"$DIR/containerd.pid"
exec containerd --config "$DIR/config.toml"
EOF
printf '%s' "$mounts" >"$DIR/inner.mounts"
printf '%s' "$links" >"$DIR/inner.links"
chmod +x "$DIR/inner.sh"

t0=$(date +%s.%N)
: >"$DIR/containerd.log"
# The child joins the instance's cgroups first (the cgroup namespace's root
# is the cgroup it is in when it unshares).
# shellcheck disable=SC2016 # expanded by the child
setsid bash -c '
  while IFS= read -r d; do echo $$ >"$d/cgroup.procs"; done <"$1/cgroups"
  exec nsenter --net="$2" -- unshare --mount --cgroup --propagation unchanged -- "$1/inner.sh"
' launch "$DIR" "$NETNS_FILE" </dev/null >>"$DIR/containerd.log" 2>&1 &
launcher=$!

pid=""
deadline=$(($(date +%s) + READY_TIMEOUT))
while :; do
  if [ -z "$pid" ] && [ -s "$DIR/containerd.pid" ]; then pid=$(cat "$DIR/containerd.pid"); fi
  if [ -n "$pid" ] && [ -S "$SOCK" ] && "$CRI" version --socket "$SOCK" --timeout 2 >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "${pid:-$launcher}" 2>/dev/null; then
    tail -n 30 "$DIR/containerd.log" >&2
    die "containerd exited (see $DIR/containerd.log)"
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    tail -n 30 "$DIR/containerd.log" >&2
    die "the CRI socket did not answer in $READY_TIMEOUT s (see $DIR/containerd.log)"
  fi
  sleep 0.05
done
t1=$(date +%s.%N)

ctr --address "$SOCK" -n k8s.io images import --no-unpack=false "$PAUSE" >"$DIR/import.log" 2>&1 ||
  { cat "$DIR/import.log" >&2; die "ctr images import $PAUSE failed"; }
images=$(ctr --address "$SOCK" -n k8s.io images ls -q) || die "ctr images ls failed"
grep -qx "$PAUSE_REF" <<<"$images" || die "$PAUSE_REF is not in the image store after the import"
t2=$(date +%s.%N)

# With a CNI config in place, wait until the CRI plugin has loaded it.
if compgen -G "$CNI_CONF/*.conf" >/dev/null || compgen -G "$CNI_CONF/*.conflist" >/dev/null ||
  compgen -G "$CNI_CONF/*.json" >/dev/null; then
  while :; do
    st=$("$CRI" status --socket "$SOCK" --timeout 2 2>/dev/null) || st=""
    case "$st" in *'"type":"NetworkReady","status":true'*) break ;; esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
      "$CRI" status --socket "$SOCK" --timeout 2 >&2 || true
      die "the CRI plugin did not report NetworkReady in $READY_TIMEOUT s (is the conflist in $CNI_CONF valid?)"
    fi
    sleep 0.05
  done
else
  log "note: $CNI_CONF has no CNI config yet: RunPodSandbox fails until one is there"
fi

# The CRI plugin fails after the socket is up when its stream server cannot
# listen: make sure containerd is still there.
if ! kill -0 "$pid" 2>/dev/null; then
  tail -n 30 "$DIR/containerd.log" >&2
  die "containerd exited (see $DIR/containerd.log)"
fi

cat >"$DIR/env" <<EOF
CONTAINERD_SOCK=$SOCK
CONTAINERD_PID=$pid
CRI=$CRI
NODE_NETNS=$NETNS_FILE
NETNS_DIR=$NETNS_DIR
CGROUP_NAME=$CGROUP_NAME
EOF
started_ok=1
log "containerd $pid ready in $(awk "BEGIN{printf \"%.2f\", $t1 - $t0}") s, pause image imported in $(awk "BEGIN{printf \"%.2f\", $t2 - $t1}") s; node netns $NETNS_FILE"
echo "$SOCK"
