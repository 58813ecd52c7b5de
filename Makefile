# spire-mesh-injector — the README's commands run through here.
SHELL := /usr/bin/env bash
GO ?= go
VERSION ?= v0.1.0
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X github.com/spire-mesh-injector/spire-mesh-injector/version.Version=$(VERSION) \
           -X github.com/spire-mesh-injector/spire-mesh-injector/version.Commit=$(COMMIT)
# How long each fuzz target runs in `make test` (brief) and `make fuzz` (longer).
FUZZTIME ?= 10s
FUZZTIME_LONG ?= 5m
# Each as package:target.
FUZZ_TARGETS := inject:FuzzChainShapes inject:FuzzChainJSON jsonenc:FuzzAppendString
# The steps of `make bench`, one per figure of docs/performance.md, in figure order.
BENCH_STEPS := bench-handler bench-istio bench-load bench-steady bench-scale bench-helper

TOOLS := test/fixtures/tools/build.sh

.PHONY: all build image test lint unit fuzz-brief fuzz bench $(BENCH_STEPS) example demo tools node e2e-node clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/spire-mesh-injector ./cmd/spiffe-jwt-helper

## image: the project's image — the Dockerfile's final stage: both binaries, non-root — as an OCI
## image tarball, bin/spire-mesh-injector-image.tar, without Docker or a registry (tools/image).
## Load it with `ctr -n k8s.io images import`, `podman load` or `docker load`.
IMAGE ?= ghcr.io/spire-mesh-injector/spire-mesh-injector:$(VERSION)
image: build
	$(GO) run ./tools/image -dockerfile Dockerfile -context bin -ref $(IMAGE) -o bin/spire-mesh-injector-image.tar
	@echo "wrote bin/spire-mesh-injector-image.tar ($(IMAGE))"

## test: everything CI runs: formatting, vet, unit, golden and envtest suites (a real kube-apiserver
## and etcd, built once from the Go module proxy and cached), and a brief fuzz of each target.
test: lint unit fuzz-brief

## lint: gofmt, vet (both modules), go.mod and go.sum tidy (both modules), staticcheck and govulncheck
## on the shipped module (pinned, built once from the Go module proxy and cached, with Go's
## vulnerability database built offline from golang.org/x/vulndb's data). A vulnerability our code
## calls in a module we require fails; one in the Go standard library is reported with the Go
## release that fixes it (test/fixtures/tools/vulngate).
lint:
	@unformatted=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	cd test/istio && $(GO) vet ./...
	$(GO) mod tidy -diff
	cd test/istio && $(GO) mod tidy -diff
	@lint=$$($(TOOLS) lint) && set -o pipefail && \
	  echo "staticcheck ./..." && $$lint/staticcheck ./... && \
	  echo "govulncheck ./..." && $$lint/govulncheck -db file://$$lint/vulndb -format json ./... | $(GO) run ./test/fixtures/tools/vulngate

## tools: build (or reuse) kube-apiserver, etcd and kubectl, SPIRE, spire-controller-manager, promtool,
## Istio's injector (test/istio), the lint tools and the node's components; prints their folders.
tools:
	@$(TOOLS) kube && $(TOOLS) spire && $(TOOLS) scm && $(TOOLS) promtool && $(TOOLS) istio && $(TOOLS) lint && $(TOOLS) node

# unit: go test ./... with every real component built and required (test/README.md maps the
# suites and the variables each needs), then test/istio, a module of its own.
# The node suite (a real single-node cluster, as root) runs on its own after the others: it needs
# the machine to itself for its timings, and one node runs on a machine at a time.
unit:
	@kube=$$($(TOOLS) kube) && spire=$$($(TOOLS) spire) && scm=$$($(TOOLS) scm) && promtool=$$($(TOOLS) promtool) && \
	  istio=$$($(TOOLS) istio) && node=$$($(TOOLS) node) && \
	  export KUBEBUILDER_ASSETS=$$kube SMI_REQUIRE_ENVTEST=1 SPIRE_ASSETS=$$spire SCM_ASSETS=$$scm SMI_REQUIRE_SPIRE=1 \
	  PROMTOOL_ASSETS=$$promtool SMI_REQUIRE_PROMTOOL=1 ISTIO_ASSETS=$$istio SMI_REQUIRE_ISTIO=1 \
	  NODE_ASSETS=$$node SMI_REQUIRE_NODE=1 && \
	  $(GO) test -count=1 -timeout 20m $$($(GO) list ./... | grep -v '/test/suites/node$$') && \
	  $(GO) test -count=1 -timeout 45m ./test/suites/node
	@# Admissions reuse storage (the wired copy, the patch, request and response buffers): the
	@# packages that share it across concurrent requests run again under the race detector.
	$(GO) test -count=1 -race ./inject ./webhook ./server
	@# Istio's own injector lives in its own module (it pins another controller-runtime): test it too.
	cd test/istio && $(GO) test -count=1 ./...

fuzz-brief:
	@for pt in $(FUZZ_TARGETS); do p=$${pt%%:*} t=$${pt#*:}; \
	  echo "fuzz $$t ($$p) for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 30s ./$$p || exit 1; \
	done

## fuzz: each fuzz target for FUZZTIME_LONG.
fuzz:
	@for pt in $(FUZZ_TARGETS); do p=$${pt%%:*} t=$${pt#*:}; \
	  echo "fuzz $$t ($$p) for $(FUZZTIME_LONG)"; \
	  $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME_LONG) ./$$p || exit 1; \
	done

## bench: every performance figure (docs/performance.md), each as one line
## `BENCH <figure>: <value> (target <target>) met|missed`, gathered at the end into
## bench-results/summary.txt beside the raw results. Uses the tools `make tools` builds (built
## here if missing); the JWT helper figure needs root, as the real-SPIRE suite does. Fails if a
## step fails, a figure it promises is missing (test/bench/benchratio figures) or a target is
## missed. Measure on an otherwise idle machine: it takes ~10 minutes.
bench:
	@mkdir -p bench-results && rm -f bench-results/*.bench bench-results/summary.txt; \
	  failed=; for s in $(BENCH_STEPS); do \
	    echo "==> $$s"; $(MAKE) --no-print-directory $$s || failed="$$failed $$s"; \
	  done; \
	  echo; echo "==> summary (bench-results/summary.txt)"; \
	  $(GO) run ./test/bench/benchratio figures -summary bench-results/summary.txt bench-results $(BENCH_STEPS) || failed="$$failed summary"; \
	  if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

# Figure 1: the admission handler (registration from the cache included) against its floor
# (decode the review with its pod in one pass, encode an allowed response), round by round: the
# test binary runs once per round, each run measuring the floor and the handler one after the
# other (`-count 8` would run the floor 8 times and then the handler 8 times, and a shared
# machine's drift between the two halves would fall on one side only); 16 rounds of half a second
# each, so that the medians stand on more rounds for the same time.
BENCH_ROUNDS ?= 16
bench-handler:
	@mkdir -p bench-results && set -o pipefail && \
	  $(GO) test -c -o bench-results/webhook.test ./webhook && : >bench-results/webhook.txt && \
	  for _ in $$(seq $(BENCH_ROUNDS)); do \
	    (cd webhook && ../bench-results/webhook.test -test.run '^$$' -test.bench '^BenchmarkAdmission$$' -test.benchmem -test.benchtime 0.5s -test.count 1) | \
	      tee -a bench-results/webhook.txt || exit 1; \
	  done && \
	  $(GO) run ./test/bench/benchratio handler bench-results/webhook.txt | tee bench-results/$@.bench && \
	  $(GO) run ./test/bench/benchratio figures bench-results $@ >/dev/null

# Figure 2: Istio's own injector on the same pods, side by side, both through their HTTP handlers.
# It lives in test/istio (its own Go module) with its own script, which prints its BENCH lines.
bench-istio:
	@mkdir -p bench-results && set -o pipefail && \
	  bash test/istio/bench.sh | tee bench-results/$@.bench && \
	  $(GO) run ./test/bench/benchratio figures bench-results $@ >/dev/null

# Figure 3: the real `serve` binary over HTTPS at 100, 500 and 2,000 admissions/s.
bench-load:
	@mkdir -p bench-results && set -o pipefail && kube=$$($(TOOLS) kube) && \
	  KUBEBUILDER_ASSETS=$$kube $(GO) run ./test/bench/load -out bench-results/load.json | tee bench-results/$@.bench && \
	  $(GO) run ./test/bench/benchratio figures bench-results $@ >/dev/null

# Figure 4: API calls per admission in the steady state, counted by the real API server. The test's
# exit code goes to benchratio, which prints the figure and fails unless the test ran and passed.
bench-steady:
	@mkdir -p bench-results && kube=$$($(TOOLS) kube) && rc=0 && \
	  { KUBEBUILDER_ASSETS=$$kube SMI_REQUIRE_ENVTEST=1 $(GO) test -count=1 -v -run '^TestSteadyStateCostsNoAPICall$$' \
	      ./test/suites/envtest >bench-results/steady.txt 2>&1 || rc=$$?; } && \
	  set -o pipefail && $(GO) run ./test/bench/benchratio steady -exit-code $$rc bench-results/steady.txt | tee bench-results/$@.bench && \
	  $(GO) run ./test/bench/benchratio figures bench-results $@ >/dev/null

# Figure 5: `serve`'s memory with 10,000 opted-in namespaces cached, and its reconcile time after
# a restart.
bench-scale:
	@mkdir -p bench-results && set -o pipefail && kube=$$($(TOOLS) kube) && \
	  KUBEBUILDER_ASSETS=$$kube $(GO) run ./test/bench/scale -out bench-results/scale.json | tee bench-results/$@.bench && \
	  $(GO) run ./test/bench/benchratio figures bench-results $@ >/dev/null

# Figure 6: the JWT helper's memory and CPU at idle and refreshing (with the refreshes its tokens'
# lifetime demands), against real SPIRE.
bench-helper:
	@mkdir -p bench-results && set -o pipefail && spire=$$($(TOOLS) spire) && \
	  SPIRE_ASSETS=$$spire $(GO) run ./test/bench/helpercost -out bench-results/helper.json | tee bench-results/$@.bench && \
	  $(GO) run ./test/bench/benchratio figures bench-results $@ >/dev/null

# The node's components and where its suite finds them (test/README.md).
NODE_ENV = kube=$$($(TOOLS) kube) && node=$$($(TOOLS) node) && spire=$$($(TOOLS) spire) && scm=$$($(TOOLS) scm) && \
  istio=$$($(TOOLS) istio) && export KUBEBUILDER_ASSETS=$$kube NODE_ASSETS=$$node SPIRE_ASSETS=$$spire \
  SCM_ASSETS=$$scm ISTIO_ASSETS=$$istio

## e2e-node: the node suite alone (test/suites/node, as root, ~20 minutes): a real single-node
## cluster with SPIRE and the webhook deployed as a user deploys them, identity proven in running
## pods and through faults; prints its `NODE <figure>: <value> (target <t>) met|missed` lines,
## kept in bench-results/node-summary.txt (the whole output in bench-results/node.log).
e2e-node:
	@mkdir -p bench-results && $(NODE_ENV) && set -o pipefail && \
	  SMI_REQUIRE_NODE=1 $(GO) test -count=1 -timeout 45m -v ./test/suites/node 2>&1 | tee bench-results/node.log | \
	  grep -E '^(NODE |node: |--- (PASS|FAIL|SKIP)|FAIL|ok |PASS)'

## node: the same node with everything deployed, left running for you to explore (as root): prints
## a kubeconfig; Ctrl-C stops it and undoes every change it made to the host (docs/node.md).
node:
	@$(NODE_ENV) && $(GO) run ./test/fixtures/node/cmd/smi-node

## demo: the webhook against a local kube-apiserver and etcd (no cluster needed); KEEP=1 leaves it running.
demo:
	@assets=$$($(TOOLS) kube) && KUBEBUILDER_ASSETS=$$assets $(GO) run ./demo $(if $(KEEP),--keep)

## example: the offline preview on the shipped example (the README's first command).
example:
	$(GO) run ./cmd/spire-mesh-injector inject -f docs/examples/istio-injected-deployment.yaml --registrations

clean:
	rm -rf bin bench-results
