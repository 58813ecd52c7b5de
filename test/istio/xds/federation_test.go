package xds

import (
	"slices"
	"testing"

	matcherpb "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	meshconfig "istio.io/api/mesh/v1alpha1"
	"istio.io/istio/pilot/pkg/simulation"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

// federation is what manifests/federation sets up: a namespace annotated to federate with a
// partner trust domain that a ClusterFederatedTrustDomain brings in.
type federation struct {
	namespace, partner string
}

func federationOf(t *testing.T, m *mesh) federation {
	t.Helper()
	var f federation
	for _, o := range m.objects {
		switch o.Kind {
		case "ClusterFederatedTrustDomain":
			var c struct {
				Spec struct {
					TrustDomain string `json:"trustDomain"`
				} `json:"spec"`
			}
			o.decode(t, &c)
			f.partner = c.Spec.TrustDomain
		case "Namespace":
			if o.Metadata.Annotations[annotations.FederatesWithAnnotation] != "" {
				f.namespace = o.Metadata.Name
			}
		}
	}
	if f.namespace == "" || f.partner == "" {
		t.Fatalf("manifests/federation: no federated namespace or trust domain: %+v", f)
	}
	return f
}

// TestFederatedPartnerReachesMeshedPods: a meshed workload of manifests/federation's namespace
// (payments; its sample workload is ledger) accepts a partner.example peer over mutual TLS. Our
// registration makes its SPIRE entries federate with partner.example; Envoy takes its whole trust
// from the SPIRE agent's ROOTCA, which holds partner.example's bundle only when the agent's SDS is
// configured as the federation README says (default_bundle_name "null", default_all_bundles_name
// ROOTCA: SPIRE's side, tested with real SPIRE); and Istio must not narrow the peer SANs to the
// local trust domain, which it does unless istiod runs with PILOT_SKIP_VALIDATE_TRUST_DOMAIN=true
// (manifests/ossm3). trustDomainAliases, the other way to widen them, would also make policies
// written for local identities accept the partner's: it must not be used.
func TestFederatedPartnerReachesMeshedPods(t *testing.T) {
	m := newMesh(t)
	f := federationOf(t, m)
	c := callers{m: m, t: t}

	var nsAnnotations map[string]string
	for _, o := range m.objects {
		if o.Kind == "Namespace" && o.Metadata.Name == f.namespace {
			nsAnnotations = o.Metadata.Annotations
		}
	}
	spec, err := identity.DesiredSpec(m.cfg, f.namespace, nsAnnotations)
	if err != nil || !slices.Contains(spec.FederatesWith, f.partner) {
		t.Fatalf("the registration of namespace %s does not federate with %s: %+v, %v", f.namespace, f.partner, spec.FederatesWith, err)
	}

	local := m.spiffeID(t, f.namespace, "ledger")
	partner := c.partner("shop", "frontend", f.partner)
	sans := peerSANs(t, m, f.namespace, "ledger")
	if !sansAccept(t, sans, local) {
		t.Errorf("ledger refuses a peer of its own trust domain (%s): %v", local, sans)
	}
	if !sansAccept(t, sans, partner) {
		t.Errorf("ledger refuses the federated peer %s: Istio narrows peer SANs to %v. "+
			"Set istiod's PILOT_SKIP_VALIDATE_TRUST_DOMAIN=\"true\" (manifests/ossm3), never trustDomainAliases", partner, sans)
	}
	if aliases := m.config.GetTrustDomainAliases(); len(aliases) > 0 {
		t.Errorf("meshConfig.trustDomainAliases %v: policies for %s identities then also match the partner's", aliases, m.cfg.TrustDomain)
	}

	t.Run("without PILOT_SKIP_VALIDATE_TRUST_DOMAIN only the local trust domain passes", func(t *testing.T) {
		m := newMeshVariant(t, variant{withoutEnv: []string{"PILOT_SKIP_VALIDATE_TRUST_DOMAIN"}})
		sans := peerSANs(t, m, f.namespace, "ledger")
		if sansAccept(t, sans, partner) || !sansAccept(t, sans, local) {
			t.Errorf("peer SANs %v: want %s accepted and %s refused", sans, local, partner)
		}
	})

	t.Run("trustDomainAliases let the partner in as a local identity", func(t *testing.T) {
		m := newMeshVariant(t, variant{mesh: func(mc *meshconfig.MeshConfig) { mc.TrustDomainAliases = []string{f.partner} }})
		h, err := m.inbound(t, m.proxy(t, "shop", "orders"), appPort, simulation.MTLS)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := findPolicy(t, h, "ns[shop]-policy[orders-from-frontend]-rule[0]")
		r := request{Peer: callers{m: m, t: t}.partner("shop", "frontend", f.partner), Method: "GET", Path: "/orders"}
		if !policyMatches(t, p, r, nil) {
			t.Errorf("with trustDomainAliases %s, orders-from-frontend does not match %s: then this test no longer shows why aliases must not be used", f.partner, r.Peer)
		}
	})
}

// peerSANs are the SAN matchers of ns/app's inbound mutual-TLS validation context (any SAN passes
// when there are none), after checking that all its trust comes from SPIRE (requireSPIRETLS).
func peerSANs(t *testing.T, m *mesh, ns, app string) []*matcherpb.StringMatcher {
	t.Helper()
	h, err := m.inbound(t, m.proxy(t, ns, app), appPort, simulation.MTLS)
	if err != nil {
		t.Fatalf("a mutual-TLS request to %s/%s is refused: %v", ns, app, err)
	}
	ctx := downstreamTLS(t, h.Chain)
	requireSPIRETLS(t, m, ns, app, ctx)
	//lint:ignore SA1019 Istio generates the peer SAN check in this field.
	return ctx.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchSubjectAltNames()
}
