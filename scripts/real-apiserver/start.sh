#!/usr/bin/env bash
# Starts a real etcd and kube-apiserver v1.20.2 on 127.0.0.1 for tests.
#
#   scripts/real-apiserver/start.sh DIR
#
# DIR must be empty or absent. On success (exit 0) the API server answers
# /readyz and DIR holds:
#   kubeconfig          admin (CN=admin, O=system:masters) client cert, CA data
#   env                 APISERVER_URL, APISERVER_PORT, ETCD_PORT (shell syntax)
#   apiserver.sh        starts kube-apiserver again with the same arguments, in
#                       the background, writing a new apiserver.pid; with
#                       --wait it also waits for /readyz (READY_TIMEOUT s)
#   apiserver.pid, etcd.pid, apiserver.log, etcd.log, audit.log, pki/, etcd/
# Stop both with scripts/real-apiserver/stop.sh DIR.
#
# Env: APISERVER_PORT, ETCD_PORT (default: free loopback ports), READY_TIMEOUT
# (default 60 s), APISERVER_EXTRA_ARGS (extra kube-apiserver flags, split on
# spaces), KUBE_APISERVER_BIN, ETCD_BIN (default: the binaries build.sh puts in
# ${PALISADE_CACHE:-/var/cache/palisade}/kube-apiserver-v1.20.2/).
# Nothing listens on any address but 127.0.0.1. No controllers run.
set -euo pipefail

die() { echo "real-apiserver start: ERROR: $*" >&2; exit 1; }
log() { echo "real-apiserver start: $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 DIR"
mkdir -p "$1" || die "cannot create $1"
DIR=$(cd "$1" && pwd)
[ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty"

CACHE="${PALISADE_CACHE:-/var/cache/palisade}"
APISERVER_BIN="${KUBE_APISERVER_BIN:-$CACHE/kube-apiserver-v1.20.2/kube-apiserver}"
ETCD_BIN="${ETCD_BIN:-$CACHE/kube-apiserver-v1.20.2/etcd}"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -x "$APISERVER_BIN" ] || die "no kube-apiserver at $APISERVER_BIN; run $HERE/build.sh first"
[ -x "$ETCD_BIN" ] || die "no etcd at $ETCD_BIN; run $HERE/build.sh first"
command -v openssl >/dev/null || die "openssl is missing (apt-get install openssl)"
command -v curl >/dev/null || die "curl is missing (apt-get install curl)"
READY_TIMEOUT="${READY_TIMEOUT:-60}"

# --- ports ----------------------------------------------------------------
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
taken=" "
pick_port() {
  local p
  for _ in $(seq 1 200); do
    # Below the kernel's ephemeral range (32768-60999), so no outgoing
    # connection holds it by chance.
    p=$((20000 + RANDOM % 12000))
    case "$taken" in *" $p "*) continue ;; esac
    if ! port_in_use "$p"; then
      taken+="$p "
      echo "$p"
      return 0
    fi
  done
  die "found no free loopback port"
}
ETCD_PORT="${ETCD_PORT:-$(pick_port)}"
taken+="$ETCD_PORT "
ETCD_PEER_PORT="${ETCD_PEER_PORT:-$(pick_port)}"
taken+="$ETCD_PEER_PORT "
APISERVER_PORT="${APISERVER_PORT:-$(pick_port)}"
for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$APISERVER_PORT"; do
  ! port_in_use "$p" || die "127.0.0.1:$p is already in use"
done

# --- certificates -----------------------------------------------------------
PKI="$DIR/pki"
mkdir -p "$PKI"
(
  cd "$PKI"
  o() { openssl "$@" 2>>openssl.log || die "openssl $1 failed (see $PKI/openssl.log)"; }
  key() { o genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1"; }
  key ca.key
  o req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=palisade-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -addext "subjectKeyIdentifier=hash" -out ca.crt
  sign() { # name subj extensions
    key "$1.key"
    o req -new -key "$1.key" -subj "$2" -out "$1.csr"
    printf '%s\n' "$3" >"$1.ext"
    o x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
      -days 3650 -extfile "$1.ext" -out "$1.crt"
    rm -f "$1.csr"
  }
  sign apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
authorityKeyIdentifier=keyid"
  sign admin "/O=system:masters/CN=admin" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid"
  key sa.key
  o pkey -in sa.key -pubout -out sa.pub
  chmod 600 ./*.key
)

b64() { base64 -w0 <"$1"; }
cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: real-apiserver
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$PKI/admin.crt")
    client-key-data: $(b64 "$PKI/admin.key")
contexts:
- name: real-apiserver
  context:
    cluster: real-apiserver
    user: admin
current-context: real-apiserver
EOF
chmod 600 "$DIR/kubeconfig"
cat >"$DIR/env" <<EOF
APISERVER_URL=https://127.0.0.1:$APISERVER_PORT
APISERVER_PORT=$APISERVER_PORT
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
EOF

# If anything below fails, stop what was started.
started_ok=0
cleanup() {
  if [ "$started_ok" -ne 1 ]; then
    "$HERE/stop.sh" "$DIR" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# --- etcd -------------------------------------------------------------------
t0=$(date +%s.%N)
setsid "$ETCD_BIN" \
  --name=default \
  --data-dir="$DIR/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="default=http://127.0.0.1:$ETCD_PEER_PORT" \
  --logger=zap --log-outputs=stderr --log-level=warn \
  </dev/null >"$DIR/etcd.log" 2>&1 &
echo $! >"$DIR/etcd.pid"
etcd_pid=$!
ok=0
for _ in $(seq 1 200); do
  kill -0 "$etcd_pid" 2>/dev/null || { tail -n 20 "$DIR/etcd.log" >&2; die "etcd exited (see $DIR/etcd.log)"; }
  if curl -fsS --max-time 1 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; then
    ok=1
    break
  fi
  sleep 0.1
done
[ "$ok" -eq 1 ] || die "etcd not healthy after 20 s (see $DIR/etcd.log)"

# --- kube-apiserver ---------------------------------------------------------
cat >"$PKI/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
EOF

# shellcheck disable=SC2054 # commas inside flag values
args=(
  --etcd-servers="http://127.0.0.1:$ETCD_PORT"
  --bind-address=127.0.0.1
  --advertise-address=127.0.0.1
  --secure-port="$APISERVER_PORT"
  --insecure-port=0
  --tls-cert-file="$PKI/apiserver.crt"
  --tls-private-key-file="$PKI/apiserver.key"
  --client-ca-file="$PKI/ca.crt"
  --authorization-mode=Node,RBAC
  --anonymous-auth=false
  --enable-admission-plugins=NodeRestriction
  # ServiceAccount needs the token controller's `default` account in each
  # namespace; the webhooks would need webhook servers.
  --disable-admission-plugins=ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionWebhook
  --service-account-issuer=https://kubernetes.default.svc.cluster.local
  --service-account-signing-key-file="$PKI/sa.key"
  --service-account-key-file="$PKI/sa.pub"
  --service-cluster-ip-range=10.96.0.0/16
  # 127.0.0.1 is not a valid endpoint address: keep the `kubernetes`
  # Service without endpoints instead of failing to write them forever.
  --endpoint-reconciler-type=none
  --allow-privileged=true
  --profiling=false
  --audit-policy-file="$PKI/audit-policy.yaml"
  --audit-log-path="$DIR/audit.log"
  --audit-log-maxbackup=1
  --audit-log-maxsize=100
)
# shellcheck disable=SC2206
extra=(${APISERVER_EXTRA_ARGS:-})

q() { printf '%q ' "$@"; }
cat >"$DIR/apiserver.sh" <<EOF
#!/usr/bin/env bash
# Starts the kube-apiserver of this test cluster again, with the arguments
# start.sh used, in the background (log appended to apiserver.log), and writes
# a new apiserver.pid. With --wait, also waits for /readyz (READY_TIMEOUT, $READY_TIMEOUT s).
set -euo pipefail
DIR=$(q "$DIR")
cd "\$DIR"
if [ -s apiserver.pid ]; then
  old=\$(cat apiserver.pid)
  # A killed server may take a moment to exit and free the port.
  for _ in \$(seq 1 300); do
    [ -d "/proc/\$old" ] && grep -q kube-apiserver "/proc/\$old/cmdline" 2>/dev/null || break
    [ "\$(awk '{print \$3}' "/proc/\$old/stat" 2>/dev/null)" = Z ] && break
    sleep 0.1
  done
  if [ -d "/proc/\$old" ] && grep -q kube-apiserver "/proc/\$old/cmdline" 2>/dev/null &&
    [ "\$(awk '{print \$3}' "/proc/\$old/stat" 2>/dev/null)" != Z ]; then
    echo "apiserver.sh: kube-apiserver \$old is still running; stop it first" >&2
    exit 1
  fi
fi
echo "=== apiserver.sh: kube-apiserver started at \$(date -Is)" >>apiserver.log
setsid $(q "$APISERVER_BIN" "${args[@]}" "${extra[@]}")</dev/null >>apiserver.log 2>&1 &
echo \$! >apiserver.pid
if [ "\${1:-}" = --wait ]; then
  deadline=\$((\$(date +%s) + \${READY_TIMEOUT:-$READY_TIMEOUT}))
  pid=\$(cat apiserver.pid)
  while :; do
    if curl -fsS --max-time 2 --cacert pki/ca.crt --cert pki/admin.crt --key pki/admin.key \\
      "https://127.0.0.1:$APISERVER_PORT/readyz" 2>/dev/null | grep -qx ok; then
      exit 0
    fi
    kill -0 "\$pid" 2>/dev/null || { echo "apiserver.sh: kube-apiserver exited (see \$DIR/apiserver.log)" >&2; exit 1; }
    [ "\$(date +%s)" -lt "\$deadline" ] || { echo "apiserver.sh: /readyz not ok in time" >&2; exit 1; }
    sleep 0.1
  done
fi
EOF
chmod +x "$DIR/apiserver.sh"
: >"$DIR/apiserver.log"

t1=$(date +%s.%N)
"$DIR/apiserver.sh" || die "could not start kube-apiserver"
pid=$(cat "$DIR/apiserver.pid")
deadline=$(($(date +%s) + READY_TIMEOUT))
while :; do
  if curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" 2>/dev/null | grep -qx ok; then
    break
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    tail -n 30 "$DIR/apiserver.log" >&2
    die "kube-apiserver exited (see $DIR/apiserver.log)"
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    tail -n 30 "$DIR/apiserver.log" >&2
    die "kube-apiserver /readyz not ok after $READY_TIMEOUT s (see $DIR/apiserver.log)"
  fi
  sleep 0.1
done
t2=$(date +%s.%N)
started_ok=1
log "ready at https://127.0.0.1:$APISERVER_PORT (etcd $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s, kube-apiserver $(awk "BEGIN{printf \"%.1f\", $t2 - $t1}") s); kubeconfig: $DIR/kubeconfig"
