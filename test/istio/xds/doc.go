// Package xds checks what Envoy receives and enforces for pods wired by spire-mesh-injector, with
// Istio's own control plane: the fake discovery server Istio's xDS tests use
// (istio.io/istio/pilot/test/xds), fed with the mesh configuration of manifests/ossm3 and every
// Istio resource under manifests/, read at test time so that a change to a manifest is tested. The
// proxies are the pods of the reference configurations as Istio's injection webhook and then ours
// wire them (the main module's inject and mutators packages), described to istiod by Istio's own
// pilot-agent code (pkg/bootstrap), which also writes the Envoy bootstrap checked here.
//
// Not run here: Envoy itself. Where a test needs Envoy's decision (which filter chain, route and
// RBAC policy match a request), it uses Istio's traffic simulation (pilot/pkg/simulation) and a
// small evaluator of Envoy's RBAC and per-route filter semantics (envoy_test.go); each names the
// Envoy behaviour it stands for.
//
// The package has only tests; this file exists for its documentation.
package xds
