#!/usr/bin/env bash
# Builds the real components the tests run against (kube-apiserver, etcd, kubectl, and later SPIRE and
# spire-controller-manager) from the Go module proxy only, into a cache folder named by version, so a
# later run reuses them. Nothing is downloaded from anywhere but the module proxy.
#
#   test/tools/build.sh kube      # prints the folder holding kube-apiserver, etcd, kubectl
#
# The cache root is $SMI_TOOLS_CACHE (default ~/.cache/spire-mesh-injector/tools).
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.35.4}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
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

case ${1:-} in
  kube) build_kube ;;
  *) echo "usage: $0 kube" >&2; exit 2 ;;
esac
