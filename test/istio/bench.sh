#!/usr/bin/env bash
# Figure 2 of `make bench`: Istio's own injection webhook handler (test/istio: istio.io/istio's
# pkg/kube/inject with the default profile's templates and values) against spire-mesh-injector's
# handler, on the same pods (test/fixtures/benchpod, written by test/bench/benchpods: the typical
# post-Istio pod and its 64 KB enlargement; Istio gets each with its injection taken off). Both
# are measured through the same layer, their HTTP handlers, with a request and response built by
# httptest (BenchmarkIstioInjection; ours, with its registration step, BenchmarkAdmissionHTTP).
# Both benchmark binaries are built first, then run one after the other, round by round, so that
# both see the same machine; the ratio of the medians is reported.
#
#   test/istio/bench.sh [RESULTS_DIR]     (ROUNDS=8 by default)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/bench-results}
rounds=${ROUNDS:-8}
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$root"
go run ./test/bench/benchpods "$tmp/pods"
go test -c -o "$tmp/webhook.test" ./webhook
(cd test/istio && go test -c -o "$tmp/istio.test" ./istioinject)
: >"$out/istio.txt"
: >"$out/istio-ours.txt"
for _ in $(seq "$rounds"); do
  (cd test/istio/istioinject && SMI_BENCH_PODS="$tmp/pods" "$tmp/istio.test" -test.run '^$' \
    -test.bench '^BenchmarkIstioInjection$' -test.benchmem -test.count 1) >>"$out/istio.txt"
  (cd webhook && "$tmp/webhook.test" -test.run '^$' -test.bench '^BenchmarkAdmissionHTTP$' \
    -test.benchmem -test.count 1) >>"$out/istio-ours.txt"
done
go run ./test/bench/benchratio -istio "$out/istio.txt" "$out/istio-ours.txt"
