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
FUZZ_TARGETS := FuzzChainShapes FuzzChainJSON

TOOLS := test/tools/build.sh

.PHONY: all build test lint unit fuzz-brief fuzz bench example demo tools clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/spire-mesh-injector ./cmd/spiffe-jwt-helper

## test: everything CI runs: formatting, vet, unit, golden and envtest suites (a real kube-apiserver
## and etcd, built once from the Go module proxy and cached), and a brief fuzz of each target.
test: lint unit fuzz-brief

lint:
	@unformatted=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

## tools: build (or reuse) kube-apiserver, etcd and kubectl, SPIRE, spire-controller-manager, promtool and
## Istio's injector (test/istio); prints their folders.
tools:
	@$(TOOLS) kube && $(TOOLS) spire && $(TOOLS) scm && $(TOOLS) promtool && $(TOOLS) istio

unit:
	@kube=$$($(TOOLS) kube) && spire=$$($(TOOLS) spire) && scm=$$($(TOOLS) scm) && promtool=$$($(TOOLS) promtool) && \
	  istio=$$($(TOOLS) istio) && \
	  KUBEBUILDER_ASSETS=$$kube SMI_REQUIRE_ENVTEST=1 SPIRE_ASSETS=$$spire SCM_ASSETS=$$scm SMI_REQUIRE_SPIRE=1 \
	  PROMTOOL_ASSETS=$$promtool SMI_REQUIRE_PROMTOOL=1 ISTIO_ASSETS=$$istio SMI_REQUIRE_ISTIO=1 \
	  $(GO) test -count=1 -timeout 20m ./...
	@# Istio's own injector lives in its own module (it pins another controller-runtime): vet and test it too.
	cd test/istio && $(GO) vet ./... && $(GO) test -count=1 ./...

fuzz-brief:
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz $$t for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 30s ./webhook || exit 1; \
	done

## fuzz: each fuzz target for FUZZTIME_LONG.
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz $$t for $(FUZZTIME_LONG)"; \
	  $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME_LONG) ./webhook || exit 1; \
	done

## bench: the admission handler against its floor (decode review + pod, encode an allowed response).
bench:
	@mkdir -p bench-results
	$(GO) test -run '^$$' -bench '^BenchmarkAdmission$$' -benchmem -count 8 ./webhook | tee bench-results/webhook.txt
	@$(GO) run ./test/benchratio bench-results/webhook.txt

## demo: the webhook against a local kube-apiserver and etcd (no cluster needed); KEEP=1 leaves it running.
demo:
	@assets=$$($(TOOLS) kube) && KUBEBUILDER_ASSETS=$$assets $(GO) run ./test/demo $(if $(KEEP),--keep)

## example: the offline preview on the shipped example (the README's first command).
example:
	$(GO) run ./cmd/spire-mesh-injector inject -f docs/examples/istio-injected-deployment.yaml --registrations

clean:
	rm -rf bin bench-results
