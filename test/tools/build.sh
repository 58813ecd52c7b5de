#!/usr/bin/env bash
# Builds the real components the tests run against (kube-apiserver, etcd, kubectl, and later SPIRE and
# spire-controller-manager) from the Go module proxy only, into a cache folder named by version, so a
# later run reuses them. Nothing is downloaded from anywhere but the module proxy.
#
#   test/tools/build.sh kube      # prints the folder holding kube-apiserver, etcd, kubectl
#   test/tools/build.sh spire     # prints the folder holding spire-server, spire-agent, spiffe-csi-driver
#   test/tools/build.sh scm       # prints the folder holding spire-controller-manager
#   test/tools/build.sh promtool  # prints the folder holding promtool (Prometheus' rule unit tests)
#   test/tools/build.sh lint      # prints the folder holding staticcheck, govulncheck and vulndb/, Go's
#                                 # vulnerability database built offline from golang.org/x/vulndb's data
#   test/tools/build.sh istio     # prints the folder holding istio-injector (Istio's own injection, from
#                                 # the separate module test/istio) and Istio's SPIRE sample configuration
#
# The cache root is $SMI_TOOLS_CACHE (default ~/.cache/spire-mesh-injector/tools).
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.35.4}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
SPIRE_VERSION=${SPIRE_VERSION:-1.13.3}
CSI_VERSION=${CSI_VERSION:-0.2.6}
SCM_VERSION=${SCM_VERSION:-0.6.4}
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-0.316.0}  # the Go module of Prometheus v3.16
STATICCHECK_VERSION=${STATICCHECK_VERSION:-0.8.2}   # honnef.co/go/tools
GOVULNCHECK_VERSION=${GOVULNCHECK_VERSION:-1.9.0}   # golang.org/x/vuln
VULNDB_VERSION=${VULNDB_VERSION:-v0.0.0-20261105234957-e22db6528018}  # golang.org/x/vulndb: the OSV data
CACHE=${SMI_TOOLS_CACHE:-$HOME/.cache/spire-mesh-injector/tools}

log() { printf 'build.sh: %s\n' "$*" >&2; }

# moddir prints the module cache folder of module@version, downloading it through the proxy if needed.
moddir() {
  (cd "$(mktemp -d)" && GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
}

# scratch_module creates a throw-away module in $1 whose go.sum is seeded from the upstream module's own
# go.sum (some checksum-database look-ups are refused here; upstream's sums are the same hashes).
scratch_module() {
  local dir=$1 upstream=$2
  mkdir -p "$dir"
  printf 'module smi.local/tools\n\ngo 1.25.0\n' >"$dir/go.mod"
  cp "$upstream/go.sum" "$dir/go.sum"
  chmod u+w "$dir/go.sum"
}

build_kube() {
  local out="$CACHE/kube-$KUBE_VERSION-etcd-$ETCD_VERSION"
  if [[ -x $out/kube-apiserver && -x $out/etcd && -x $out/kubectl ]]; then
    echo "$out"; return
  fi
  log "building kube-apiserver and kubectl v$KUBE_VERSION, etcd v$ETCD_VERSION into $out (about 7 minutes cold)"
  local work; work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN

  # kube-apiserver and kubectl: k8s.io/kubernetes replaces each staging repo with a local folder; a
  # module that requires it must re-point every one of them at the published v0.<minor>.<patch>.
  local kdir; kdir=$(moddir "k8s.io/kubernetes@v$KUBE_VERSION")
  scratch_module "$work/kube" "$kdir"
  local staging="v0.${KUBE_VERSION#1.}"
  {
    echo
    grep -E '^godebug ' "$kdir/go.mod" || true
    echo "require k8s.io/kubernetes v$KUBE_VERSION"
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 '"$staging"'#p' "$kdir/go.mod"
    echo ")"
  } >>"$work/kube/go.mod"
  (cd "$work/kube" && GOFLAGS=-mod=mod go mod download k8s.io/kubernetes >/dev/null &&
    GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitVersion=v$KUBE_VERSION" \
      -o "$work/bin/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl)

  # etcd: same method; its server module replaces its sibling modules with local folders.
  local edir; edir=$(moddir "go.etcd.io/etcd/server/v3@v$ETCD_VERSION")
  scratch_module "$work/etcd" "$edir"
  {
    echo
    echo "require go.etcd.io/etcd/server/v3 v$ETCD_VERSION"
    echo "replace ("
    for m in api/v3 client/pkg/v3 client/v3 pkg/v3; do echo "	go.etcd.io/etcd/$m => go.etcd.io/etcd/$m v$ETCD_VERSION"; done
    echo ")"
  } >>"$work/etcd/go.mod"
  (cd "$work/etcd" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/bin/etcd" go.etcd.io/etcd/server/v3)

  mkdir -p "$out.tmp"
  cp "$work/bin/kube-apiserver" "$work/bin/kubectl" "$work/bin/etcd" "$out.tmp/"
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "$out"
}

# build_module builds packages of one published module from a scratch module seeded with that
# module's own go.sum. $1: output folder, $2: module@version, $3: CGO_ENABLED, rest: packages.
build_module() {
  local out=$1 modver=$2 cgo=$3; shift 3
  local work; work=$(mktemp -d)
  local dir; dir=$(GONOSUMDB=${modver%@*} moddir "$modver")
  scratch_module "$work" "$dir"
  printf '\nrequire %s %s\n' "${modver%@*}" "${modver#*@}" >>"$work/go.mod"
  (cd "$work" && GONOSUMDB=${modver%@*} GOFLAGS=-mod=mod go mod download "${modver%@*}" &&
    GONOSUMDB=${modver%@*} GOFLAGS=-mod=mod CGO_ENABLED=$cgo go build -trimpath -ldflags "-s -w" -o "$out/" "$@")
  local rc=$?
  rm -rf "$work"
  return $rc
}

build_spire() {
  local out="$CACHE/spire-$SPIRE_VERSION-csi-$CSI_VERSION"
  if [[ -x $out/spire-server && -x $out/spire-agent && -x $out/spiffe-csi-driver ]]; then
    echo "$out"; return
  fi
  log "building spire-server and spire-agent v$SPIRE_VERSION (cgo sqlite) and spiffe-csi-driver v$CSI_VERSION into $out (about 10 minutes cold)"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  build_module "$out.tmp" "github.com/spiffe/spire@v$SPIRE_VERSION" 1 \
    github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
  build_module "$out.tmp" "github.com/spiffe/spiffe-csi@v$CSI_VERSION" 0 \
    github.com/spiffe/spiffe-csi/cmd/spiffe-csi-driver
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "$out"
}

build_scm() {
  local out="$CACHE/spire-controller-manager-$SCM_VERSION"
  if [[ -x $out/spire-controller-manager ]]; then
    echo "$out"; return
  fi
  log "building spire-controller-manager v$SCM_VERSION into $out"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  build_module "$out.tmp" "github.com/spiffe/spire-controller-manager@v$SCM_VERSION" 0 github.com/spiffe/spire-controller-manager/cmd
  mv "$out.tmp/cmd" "$out.tmp/spire-controller-manager"
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "$out"
}

build_promtool() {
  local out="$CACHE/promtool-$PROMETHEUS_VERSION"
  if [[ -x $out/promtool ]]; then
    echo "$out"; return
  fi
  log "building promtool (github.com/prometheus/prometheus v$PROMETHEUS_VERSION) into $out"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  build_module "$out.tmp" "github.com/prometheus/prometheus@v$PROMETHEUS_VERSION" 0 github.com/prometheus/prometheus/cmd/promtool
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "$out"
}

# build_istio builds test/istio's istio-injector: Istio's own pkg/kube/inject behind a webhook server and
# kube-inject. The folder is named by Istio's version and a hash of that module's sources, so a change to
# them rebuilds it. Istio's SPIRE sample configuration is copied from Istio's module next to it.
build_istio() {
  local root; root=$(cd "$(dirname "$0")/../.." && pwd)
  local mod="$root/test/istio"
  local version; version=$(sed -n 's#^[[:space:]]*istio.io/istio \(v[^ ]*\).*#\1#p' "$mod/go.mod")
  local sum; sum=$(cd "$mod" && find . -name '*.go' ! -name '*_test.go' -print0 | sort -z |
    xargs -0 cat go.mod go.sum | sha256sum | cut -c1-12)
  local out="$CACHE/istio-injector-${version##*-}-$sum"
  if [[ -x $out/istio-injector && -f $out/istio-spire-config.yaml ]]; then
    echo "$out"; return
  fi
  log "building istio-injector (istio.io/istio $version) into $out (about 4 minutes cold)"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  (cd "$mod" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp/istio-injector" ./cmd/istio-injector)
  local idir; idir=$(cd "$mod" && go list -m -f '{{.Dir}}' istio.io/istio)
  cp "$idir/samples/security/spire/istio-spire-config.yaml" "$out.tmp/"
  chmod u+w "$out.tmp/istio-spire-config.yaml"
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "$out"
}

# build_lint builds staticcheck and govulncheck, and the vulnerability database govulncheck reads
# with -db file://: vuln.go.dev is not reachable here, but the same OSV records are published in the
# golang.org/x/vulndb module, whose indexdb command writes them in the database's layout. The folder
# is named by the three versions; pinning the database's version makes the check repeatable.
build_lint() {
  local out="$CACHE/lint-staticcheck-$STATICCHECK_VERSION-govulncheck-$GOVULNCHECK_VERSION-vulndb-${VULNDB_VERSION##*-}"
  if [[ -x $out/staticcheck && -x $out/govulncheck && -f $out/vulndb/index/db.json ]]; then
    echo "$out"; return
  fi
  log "building staticcheck v$STATICCHECK_VERSION, govulncheck v$GOVULNCHECK_VERSION and the vulnerability database ($VULNDB_VERSION) into $out"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  build_module "$out.tmp" "honnef.co/go/tools@v$STATICCHECK_VERSION" 0 honnef.co/go/tools/cmd/staticcheck
  build_module "$out.tmp" "golang.org/x/vuln@v$GOVULNCHECK_VERSION" 0 golang.org/x/vuln/cmd/govulncheck
  build_module "$out.tmp" "golang.org/x/vulndb@$VULNDB_VERSION" 0 golang.org/x/vulndb/cmd/indexdb
  local data; data=$(GONOSUMDB=golang.org/x/vulndb moddir "golang.org/x/vulndb@$VULNDB_VERSION")
  "$out.tmp/indexdb" -vulns "$data/data/osv" -out "$out.tmp/vulndb"
  rm -f "$out.tmp/indexdb"
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "$out"
}

case ${1:-} in
  kube) build_kube ;;
  spire) build_spire ;;
  scm) build_scm ;;
  promtool) build_promtool ;;
  istio) build_istio ;;
  lint) build_lint ;;
  *) echo "usage: $0 kube|spire|scm|promtool|istio|lint" >&2; exit 2 ;;
esac
