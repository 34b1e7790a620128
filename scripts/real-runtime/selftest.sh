#!/usr/bin/env bash
# End-to-end check of build.sh, start.sh and stop.sh, and an example of what
# a test does with them:
#
#   scripts/real-runtime/selftest.sh [bridge|palisade|all]   (default: all)
#
# bridge:   Debian's bridge + host-local plugins (a bridge that lives only in
#           the node namespace, 10.99.0.0/24): two sandboxes, their
#           addresses and network namespaces, a TCP exchange between them,
#           StopPodSandbox releasing the addresses (CNI DEL ran).
# palisade: palisade-cni (+ portmap) with `palisade agent --dir` in the node
#           namespace: sandboxes of pods in the manifests get an address and
#           follow the policy, one with a hostPort answers through portmap, a
#           pod the agent does not know is refused (fail closed) and leaves
#           nothing behind. PALISADE_BIN_DIR (default target/release of this
#           checkout) holds palisade and palisade-cni; they are copied first.
#
# Everything runs in network namespaces made here (rr<pid>-*), removed at the
# end with everything else. Prints PASS/FAIL lines and timings on stderr;
# exit 1 if any check failed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODE="${1:-all}"
case "$MODE" in bridge | palisade | all) ;; *) echo "usage: $0 [bridge|palisade|all]" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "selftest: needs root" >&2; exit 1; }

OUT=$("$HERE/build.sh" | tail -n1)
CRI="$OUT/cri"
TAG="rr$$"
WORK=$(mktemp -d "/tmp/palisade-rr-selftest.XXXXXX")
failures=0
netnses=()
agent_pid=""
rts=()

say() { echo "selftest: $*" >&2; }
pass() { say "PASS: $*"; }
fail() { say "FAIL: $*"; failures=$((failures + 1)); }
check() { # description command...
  local what="$1"
  shift
  local out
  if out=$("$@" 2>&1); then
    pass "$what"
  else
    fail "$what"
    [ -z "$out" ] || say "  output: $out"
  fi
}
now() { date +%s.%N; }
since() { awk "BEGIN{printf \"%.3f\", $(now) - $1}"; }
field() { sed -n 's/.*"'"$1"'":"\([^"]*\)".*/\1/p'; }

cleanup() {
  set +e
  for rt in "${rts[@]}"; do "$HERE/stop.sh" "$rt"; done
  if [ -n "$agent_pid" ]; then kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null; fi
  for ns in "${netnses[@]}"; do ip netns del "$ns" 2>/dev/null; done
  if grep -q "$WORK" /proc/self/mountinfo; then
    say "mounts left under $WORK:"
    grep "$WORK" /proc/self/mountinfo >&2
    exit 1
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

new_netns() { # NAME: makes $TAG-NAME, sets NETNS to it
  NETNS="$TAG-$1"
  ip netns add "$NETNS"
  netnses+=("$NETNS")
}

# runp NAME NS UID [cri flags...]: prints the sandbox id; stderr to $WORK/runp-NAME.err
runp() {
  local name="$1" ns="$2" uid="$3" t0 out
  shift 3
  t0=$(now)
  if out=$("$CRI" runp --socket "$SOCK" --name "$name" --namespace "$ns" --uid "$uid" "$@" 2>"$WORK/runp-$name.err"); then
    say "RunPodSandbox $ns/$name: $(since "$t0") s"
    field id <<<"$out"
  else
    say "RunPodSandbox $ns/$name failed after $(since "$t0") s: $(cat "$WORK/runp-$name.err")"
    return 1
  fi
}

# tcp_exchange SERVER_NETNS CLIENT_NETNS IP PORT [LISTEN_PORT]: a line each
# way with busybox nc (the server listens on LISTEN_PORT, default PORT).
tcp_exchange() {
  local server="$1" client="$2" ip="$3" port="$4" listen="${5:-$4}" got
  timeout 8 nsenter --net="$server" busybox sh -c "echo pong | busybox nc -l -p $listen" >"$WORK/server.out" 2>&1 &
  local spid=$!
  sleep 0.3
  got=$(timeout 5 nsenter --net="$client" busybox sh -c "echo ping | busybox nc -w 2 $ip $port" 2>/dev/null) || true
  [ "$got" = pong ] || echo "$client -> $ip:$port: got '$got'; server: $(cat "$WORK/server.out")"
  if [ "$got" = pong ]; then
    wait "$spid" 2>/dev/null || true
    return 0
  fi
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  return 1
}

no_tcp_exchange() { ! tcp_exchange "$@"; }

leftovers_ok() { # RT_DIR: nothing of the runtime is left
  local rt="$1" n
  n=$(grep -c "$rt" /proc/self/mountinfo || true)
  [ "$n" -eq 0 ] || { say "mounts left: $n"; return 1; }
  if [ -s "$rt/cgroups" ]; then
    while IFS= read -r d; do
      [ ! -d "$d" ] || { say "cgroup left: $d"; return 1; }
    done <"$rt/cgroups"
  fi
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -e "-address $rt/containerd.sock" -e "--config $rt/config.toml"; then
      say "process left: ${p#/proc/}"
      return 1
    fi
  done
}

# --- bridge ------------------------------------------------------------------------
selftest_bridge() {
  say "=== bridge + host-local"
  local node rt conf a b ia ib ipa ipb nsa nsb t0
  new_netns bnode
  node=$NETNS
  conf="$WORK/bridge-conf"
  mkdir -p "$conf"
  cat >"$conf/10-bridge.conflist" <<EOF
{"cniVersion":"1.0.0","name":"rrbridge","plugins":[{"type":"bridge","bridge":"rrbr0","isGateway":true,"ipMasq":false,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.99.0.0/24"}]],"dataDir":"$WORK/bridge-ipam"}}]}
EOF
  rt="$WORK/bridge-rt"
  rts+=("$rt")
  t0=$(now)
  SOCK=$("$HERE/start.sh" "$rt" "$node" /usr/lib/cni "$conf" | tail -n1)
  say "start.sh: $(since "$t0") s"
  check "version answers" "$CRI" version --socket "$SOCK"
  a=$(runp pod-a default uid-a) || { fail "runp pod-a"; return; }
  b=$(runp pod-b default uid-b) || { fail "runp pod-b"; return; }
  ia=$("$CRI" inspectp --socket "$SOCK" "$a")
  ib=$("$CRI" inspectp --socket "$SOCK" "$b")
  say "pod-a: $ia"
  say "pod-b: $ib"
  ipa=$(field ip <<<"$ia")
  ipb=$(field ip <<<"$ib")
  nsa=$(field netns <<<"$ia")
  nsb=$(field netns <<<"$ib")
  check "both sandboxes are ready" grep -q SANDBOX_READY <<<"$ia$ib"
  check "addresses from host-local ($ipa, $ipb)" test -n "$ipa" -a -n "$ipb" -a "$ipa" != "$ipb"
  check "the netns paths work from outside" nsenter --net="$nsa" true
  check "pod-a's eth0 has $ipa" sh -c "nsenter --net='$nsa' ip -br addr show eth0 | grep -q '$ipa/24'"
  check "pod-a -> pod-b:8080 (TCP)" tcp_exchange "$nsb" "$nsa" "$ipb" 8080
  check "host-local holds 2 addresses" test -e "$WORK/bridge-ipam/rrbridge/$ipa" -a -e "$WORK/bridge-ipam/rrbridge/$ipb"
  t0=$(now)
  "$CRI" stopp --socket "$SOCK" "$a" >/dev/null && "$CRI" rmp --socket "$SOCK" "$a" >/dev/null
  say "StopPodSandbox+RemovePodSandbox: $(since "$t0") s"
  "$CRI" stopp --socket "$SOCK" "$b" >/dev/null && "$CRI" rmp --socket "$SOCK" "$b" >/dev/null
  check "CNI DEL released the addresses" test ! -e "$WORK/bridge-ipam/rrbridge/$ipa" -a ! -e "$WORK/bridge-ipam/rrbridge/$ipb"
  check "the sandboxes' netns are gone" test ! -e "$nsa" -a ! -e "$nsb"
  check "no sandbox left" test "$("$CRI" list --socket "$SOCK")" = "[]"
  t0=$(now)
  check "stop.sh" "$HERE/stop.sh" "$rt"
  say "stop.sh: $(since "$t0") s"
  check "nothing left of the runtime" leftovers_ok "$rt"
}

# --- palisade -------------------------------------------------------------------------
selftest_palisade() {
  say "=== palisade-cni + portmap, palisade agent --dir"
  local src="${PALISADE_BIN_DIR:-$HERE/../../target/release}"
  if ! [ -x "$src/palisade" ] || ! [ -x "$src/palisade-cni" ]; then
    fail "no palisade binaries in $src"
    return
  fi
  local bin="$WORK/bin" cnibin="$WORK/cni-bin" conf="$WORK/pal-conf" man="$WORK/manifests" node rt
  mkdir -p "$bin" "$cnibin" "$conf" "$man"
  # Copies: a cargo build elsewhere may replace target/release meanwhile.
  cp "$src/palisade" "$src/palisade-cni" "$bin/"
  # The plugin through a wrapper that records each call (containerd's error
  # carries the plugin's message but not its code).
  cat >"$cnibin/palisade-cni" <<EOF
#!/bin/sh
out=\$("$bin/palisade-cni")
rc=\$?
printf '%s rc=%s id=%s args=%s out=%s\n' "\$CNI_COMMAND" "\$rc" "\$CNI_CONTAINERID" "\$CNI_ARGS" "\$out" >>"$WORK/cni-calls.log"
printf '%s\n' "\$out"
exit \$rc
EOF
  chmod +x "$cnibin/palisade-cni"
  ln -s /usr/lib/cni/loopback "$cnibin/loopback"
  ln -s /usr/lib/cni/portmap "$cnibin/portmap"
  new_netns pnode
  node=$NETNS
  # What a node has and palisade's IPv4 path needs (shared/REAL-RUNTIME.md):
  # forwarding, and a route covering the pods' gateway 169.254.1.1 through
  # a non-pod link (a veth pair with both ends in the node stands in for
  # the uplink; nothing leaves the namespace).
  ip netns exec "$node" sh -e -c '
    ip link set lo up
    sysctl -qw net.ipv4.ip_forward=1
    ip link add uplink type veth peer name uplink-end
    ip link set uplink up
    ip link set uplink-end up
    ip addr add 192.168.251.1/24 dev uplink
    ip route add default via 192.168.251.2 dev uplink onlink'
  cat >"$man/cluster.yaml" <<'EOF'
apiVersion: v1
kind: Namespace
metadata: {name: rr}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDR: 10.251.0.0/24, podCIDRs: [10.251.0.0/24]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: rr, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{containerPort: 8080, hostPort: 18080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: rr, labels: {app: db}}
spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{containerPort: 5432}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: rr, labels: {app: other}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: rr}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
EOF
  local sock="$WORK/agent.sock"
  ip netns exec "$node" "$bin/palisade" agent --dir "$man" --socket "$sock" --node-name n1 \
    --state-file "$WORK/agent-state.json" --metrics-addr 127.0.0.1:9471 --poll-ms 50 \
    </dev/null >"$WORK/agent.log" 2>&1 &
  agent_pid=$!
  for _ in $(seq 1 100); do
    [ -S "$sock" ] && break
    sleep 0.1
  done
  [ -S "$sock" ] || { fail "the agent did not open $sock"; tail "$WORK/agent.log" >&2; return; }
  cat >"$conf/10-palisade.conflist" <<EOF
{"cniVersion":"1.0.0","name":"podnet","plugins":[
 {"type":"palisade-cni","ipam":{"ranges":["10.251.0.0/24"],"dataDir":"$WORK/pal-ipam"},"agentSocket":"$sock","agentTimeoutMs":5000},
 {"type":"portmap","capabilities":{"portMappings":true}}]}
EOF
  rt="$WORK/pal-rt"
  rts+=("$rt")
  local t0
  t0=$(now)
  SOCK=$("$HERE/start.sh" "$rt" "$node" "$cnibin" "$conf" | tail -n1)
  say "start.sh: $(since "$t0") s"
  local web db other iw id io ipw ipd ipo nsw nsd nso
  web=$(runp web rr uid-web --port 18080:8080) || { fail "runp web: $(cat "$WORK/runp-web.err")"; return; }
  db=$(runp db rr uid-db) || { fail "runp db"; return; }
  other=$(runp other rr uid-other) || { fail "runp other"; return; }
  iw=$("$CRI" inspectp --socket "$SOCK" "$web")
  id=$("$CRI" inspectp --socket "$SOCK" "$db")
  io=$("$CRI" inspectp --socket "$SOCK" "$other")
  say "web: $iw"
  ipw=$(field ip <<<"$iw")
  ipd=$(field ip <<<"$id")
  ipo=$(field ip <<<"$io")
  nsw=$(field netns <<<"$iw")
  nsd=$(field netns <<<"$id")
  nso=$(field netns <<<"$io")
  check "addresses from the configured range ($ipw $ipd $ipo)" sh -c "echo '$ipw $ipd $ipo' | grep -Eq '^10\.251\.0\.[0-9]+ 10\.251\.0\.[0-9]+ 10\.251\.0\.[0-9]+$'"
  check "the agent confirmed 3 pods" test "$(grep -c 'pod confirmed' "$WORK/agent.log")" -ge 3
  check "web -> db:5432 allowed" tcp_exchange "$nsd" "$nsw" "$ipd" 5432
  check "other -> db:5432 denied" no_tcp_exchange "$nsd" "$nso" "$ipd" 5432
  check "other -> web:8080 allowed (web is not isolated)" tcp_exchange "$nsw" "$nso" "$ipw" 8080
  check "node 192.168.251.1:18080 -> web:8080 (hostPort through portmap)" \
    tcp_exchange "$nsw" "/run/netns/$node" 192.168.251.1 18080 8080

  # A pod the agent's manifests do not have: refused, fail closed.
  local links_before ipam_before err
  links_before=$(ip -n "$node" -br link | wc -l)
  ipam_before=$(find "$WORK/pal-ipam" -type f | wc -l)
  t0=$(now)
  if "$CRI" runp --socket "$SOCK" --name ghost --namespace rr --uid uid-ghost >/dev/null 2>"$WORK/ghost.err"; then
    fail "runp ghost succeeded"
  else
    err=$(cat "$WORK/ghost.err")
    say "RunPodSandbox rr/ghost refused after $(since "$t0") s: $err"
    check "the refusal is the plugin's fail-closed error" grep -q "not confirmed" <<<"$err"
  fi
  check "its ADD failed with code 101" grep -Eq '^ADD rc=1 .*K8S_POD_NAME=ghost.*"code":101' "$WORK/cni-calls.log"
  check "and was followed by a DEL" grep -Eq '^DEL rc=0 .*K8S_POD_NAME=ghost' "$WORK/cni-calls.log"
  check "the refused pod left no link" test "$(ip -n "$node" -br link | wc -l)" -eq "$links_before"
  check "the refused pod left no address" test "$(find "$WORK/pal-ipam" -type f | wc -l)" -eq "$ipam_before"
  check "the refused pod left no sandbox" test "$("$CRI" list --socket "$SOCK" | grep -o '"id"' | wc -l)" -eq 3
  check "the refused pod left no netns" test "$(find "$rt/state/io.containerd.grpc.v1.cri/netns" -mindepth 1 | wc -l)" -eq 3

  for s in "$web" "$db" "$other"; do
    if ! "$CRI" stopp --socket "$SOCK" "$s" >/dev/null || ! "$CRI" rmp --socket "$SOCK" "$s" >/dev/null; then
      fail "stopp/rmp $s"
    fi
  done
  check "DEL removed every pod link" sh -c "! ip -n '$node' -br link | grep -q '^pal'"
  check "DEL released every address" test "$(find "$WORK/pal-ipam" -type f -name '10.*' | wc -l)" -eq 0
  say "CNI calls (command, exit code, container, CNI_ARGS, answer):"
  cut -c1-300 "$WORK/cni-calls.log" >&2
  check "stop.sh" "$HERE/stop.sh" "$rt"
  check "nothing left of the runtime" leftovers_ok "$rt"
  kill "$agent_pid" 2>/dev/null || true
  wait "$agent_pid" 2>/dev/null || true
  agent_pid=""
}

case "$MODE" in
  bridge) selftest_bridge ;;
  palisade) selftest_palisade ;;
  all)
    selftest_bridge
    selftest_palisade
    ;;
esac
if [ "$failures" -eq 0 ]; then say "all checks passed"; else say "$failures check(s) failed"; fi
[ "$failures" -eq 0 ]
