#!/usr/bin/env bash
# Builds a real kube-apiserver v1.20.2 from Debian 12's `kubernetes` source
# package, with Go 1.19 from Debian, and puts Debian's etcd beside it, all in a
# cache outside the checkout:
#
#   ${PALISADE_CACHE:-/var/cache/palisade}/kube-apiserver-v1.20.2/kube-apiserver
#   ${PALISADE_CACHE:-/var/cache/palisade}/kube-apiserver-v1.20.2/etcd
#
# Safe to run again: when both binaries are there and answer --version it
# exits at once. The last line on stdout is the kube-apiserver path; all
# progress goes to stderr. Needs root on a fresh machine (apt-get); uses
# Debian's package registry only. See shared/REAL-APISERVER.md for why each
# step is here.
set -euo pipefail

K8S_VERSION=v1.20.2
CACHE="${PALISADE_CACHE:-/var/cache/palisade}"
OUT="$CACHE/kube-apiserver-$K8S_VERSION"
BIN="$OUT/kube-apiserver"
ETCD="$OUT/etcd"

log() { echo "real-apiserver build: $*" >&2; }
die() { echo "real-apiserver build: ERROR: $*" >&2; exit 1; }

ready() {
  [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1 &&
    [ -x "$ETCD" ] && "$ETCD" --version >/dev/null 2>&1
}

if ready; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$OUT" || die "cannot create $OUT (set PALISADE_CACHE to a writable folder)"
# One build at a time; a second caller waits and then finds the binary.
exec 9>"$OUT/.lock"
if ! flock -w 1800 9; then die "another build holds $OUT/.lock for more than 30 min"; fi
if ready; then
  echo "$BIN"
  exit 0
fi

start_ts=$(date +%s)

# --- system tools -------------------------------------------------------
need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v dpkg-source >/dev/null 2>&1 || need+=(dpkg-dev)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v patch >/dev/null 2>&1 || need+=(patch)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "missing ${need[*]}; run as root or install them"
  log "apt-get install ${need[*]}"
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
    die "apt-get install ${need[*]} failed"
fi

# --- a private apt configuration ----------------------------------------
# Binary and source indexes for bookworm main in $OUT/apt, so the machine's
# own sources and lists stay untouched (and no service gets installed: the
# .debs are only unpacked with dpkg -x).
APT="$OUT/apt"
mkdir -p "$APT/sources.list.d" "$APT/lists/partial" "$APT/cache/archives/partial" "$OUT/debs"
: >"$APT/sources.list"
cat >"$APT/sources.list.d/bookworm.sources" <<'EOF'
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
APT_OPTS=(
  -o "Dir::Etc::SourceList=$APT/sources.list"
  -o "Dir::Etc::SourceParts=$APT/sources.list.d"
  -o "Dir::State::Lists=$APT/lists"
  -o "Dir::Cache=$APT/cache"
  -o "APT::Sandbox::User=root"
)
apt_update_done=0
apt_update() {
  log "apt-get update (private lists in $APT)"
  apt-get "${APT_OPTS[@]}" update -qq >&2 || die "apt-get update (private config) failed"
  apt_update_done=1
}
if ! compgen -G "$APT/lists/*_Sources*" >/dev/null || ! compgen -G "$APT/lists/*_Packages*" >/dev/null; then
  apt_update
fi

# Download a binary package and unpack it under $OUT/root (dpkg -x).
unpack_deb() {
  local pkg="$1" deb
  if ! compgen -G "$OUT/debs/${pkg}_*.deb" >/dev/null; then
    log "apt-get download $pkg"
    if ! (cd "$OUT/debs" && apt-get "${APT_OPTS[@]}" download "$pkg" >&2); then
      [ "$apt_update_done" -eq 1 ] && die "apt-get download $pkg failed"
      apt_update
      (cd "$OUT/debs" && apt-get "${APT_OPTS[@]}" download "$pkg" >&2) ||
        die "apt-get download $pkg failed"
    fi
  fi
  deb=$(compgen -G "$OUT/debs/${pkg}_*.deb" | head -n1)
  dpkg -x "$deb" "$OUT/root" || die "dpkg -x $deb failed"
}

# --- etcd ---------------------------------------------------------------
if ! { [ -x "$ETCD" ] && "$ETCD" --version >/dev/null 2>&1; }; then
  unpack_deb etcd-server
  ln -sf root/usr/bin/etcd "$ETCD"
  "$ETCD" --version >/dev/null 2>&1 || die "etcd from etcd-server does not run"
  log "etcd: $("$ETCD" --version | head -n1)"
fi

# --- Go 1.19 and reflect2 v1.0.2 ----------------------------------------
GOROOT="$OUT/root/usr/lib/go-1.19"
if ! [ -x "$GOROOT/bin/go" ] || ! [ -d "$OUT/root/usr/share/go-1.19/src/runtime" ]; then
  unpack_deb golang-1.19-src
  unpack_deb golang-1.19-go
fi
REFLECT2="$OUT/root/usr/share/gocode/src/github.com/modern-go/reflect2"
[ -f "$REFLECT2/reflect2.go" ] || unpack_deb golang-github-modern-go-reflect2-dev
[ -f "$REFLECT2/reflect2.go" ] || die "golang-github-modern-go-reflect2-dev has no reflect2.go"

export GOROOT
export PATH="$GOROOT/bin:$PATH"
export GOPATH="$OUT/gopath"
export GOCACHE="$OUT/gocache"
export GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=
"$GOROOT/bin/go" version >/dev/null 2>&1 || die "Go from golang-1.19-go does not run ($GOROOT)"
log "$(go version)"

# --- the kubernetes source ----------------------------------------------
SRC="$GOPATH/src/k8s.io/kubernetes"
if ! [ -f "$SRC/.palisade-prepared" ]; then
  rm -rf "$SRC" "$OUT/source"
  mkdir -p "$OUT/source" "$(dirname "$SRC")"
  log "apt-get source --download-only kubernetes (about 34 MB)"
  if ! (cd "$OUT/source" && apt-get "${APT_OPTS[@]}" source --download-only kubernetes >&2); then
    [ "$apt_update_done" -eq 1 ] && die "apt-get source kubernetes failed"
    apt_update
    (cd "$OUT/source" && apt-get "${APT_OPTS[@]}" source --download-only kubernetes >&2) ||
      die "apt-get source kubernetes failed"
  fi
  dsc=$(compgen -G "$OUT/source/kubernetes_*.dsc" | head -n1) || die "apt-get source left no kubernetes_*.dsc"
  case "$dsc" in
    *1.20.2*) ;;
    *) die "unexpected kubernetes source version: $dsc (expected 1.20.5+really1.20.2)" ;;
  esac
  log "dpkg-source -x $(basename "$dsc")"
  dpkg-source --no-check -x "$dsc" "$SRC" >&2 || die "dpkg-source -x $dsc failed"
  [ -d "$SRC/vendor/k8s.io/kube-openapi" ] || die "$SRC has no vendor/ tree"

  # The vendored reflect2 v1.0.1 crashes with Go >= 1.18: use Debian's v1.0.2.
  rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
  mkdir -p "$SRC/vendor/github.com/modern-go/reflect2"
  cp -a "$REFLECT2/." "$SRC/vendor/github.com/modern-go/reflect2/"
  find "$SRC/vendor/github.com/modern-go/reflect2" -name '*_test.go' -delete
  touch "$SRC/.palisade-prepared"
fi

cd "$SRC"

# --- pkg/generated/openapi ----------------------------------------------
# As upstream's build/root/Makefile.generated_files does: every directory
# with a +k8s:openapi-gen= tag is an input.
OPENAPI_PKG=pkg/generated/openapi
if ! [ -f "$OPENAPI_PKG/zz_generated.openapi.go" ] || ! [ -f "$OUT/.openapi-generated" ]; then
  log "building openapi-gen"
  go build -o "$OUT/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen ||
    die "building openapi-gen failed"
  log "generating $OPENAPI_PKG"
  # ALL_K8S_TAG_FILES (staging/src named as vendor/, the rest of vendor/ not
  # searched), less code-generator and sample-apiserver (KUBE_OPENAPI_TAG_FILES).
  inputs=$(
    find -H . \( -path './_*' -o -path './.*' -o -path ./vendor -o -path ./debian \) -prune \
      -o -type f -name '*.go' -print |
      sed 's|^\./staging/src|vendor|; s|^\./||' |
      grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' |
      xargs grep -l --color=never '^// *+k8s:' |
      xargs grep -l --color=never '+k8s:openapi-gen=' |
      xargs -n1 dirname | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' |
      paste -sd, -
  ) || true
  [ -n "$inputs" ] || die "found no +k8s:openapi-gen= packages"
  mkdir -p "$OUT/openapi-report"
  "$OUT/openapi-gen" \
    --logtostderr \
    -i "$inputs" \
    -p "k8s.io/kubernetes/$OPENAPI_PKG" \
    -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
    -r "$OUT/openapi-report/violations.report" >"$OUT/openapi-gen.log" 2>&1 ||
    die "openapi-gen failed; see $OUT/openapi-gen.log"
  [ -f "$OPENAPI_PKG/zz_generated.openapi.go" ] || die "openapi-gen wrote no $OPENAPI_PKG/zz_generated.openapi.go"
  if ! diff -q "$OUT/openapi-report/violations.report" api/api-rules/violation_exceptions.list >/dev/null; then
    log "note: openapi violations report differs from api/api-rules/violation_exceptions.list"
  fi
  touch "$OUT/.openapi-generated"
fi

# --- kube-apiserver -----------------------------------------------------
VPKG=k8s.io/kubernetes/vendor/k8s.io/component-base/version
CPKG=k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version
ldflags="-s -w"
for p in "$VPKG" "$CPKG"; do
  ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=20"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  ldflags+=" -X $p.gitCommit=faecb196815e248d3ecfb03c680a4507229c2a56"
done
log "go build ./cmd/kube-apiserver (about 150 s on 2 cores from a cold cache)"
go build -ldflags "$ldflags" -o "$BIN.tmp" ./cmd/kube-apiserver || die "go build ./cmd/kube-apiserver failed"
"$BIN.tmp" --version >/dev/null 2>&1 || die "the built kube-apiserver does not run"
mv -f "$BIN.tmp" "$BIN"

log "$("$BIN" --version), $("$ETCD" --version | head -n1), in $(($(date +%s) - start_ts)) s"
echo "$BIN"
