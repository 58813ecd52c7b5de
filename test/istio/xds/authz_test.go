package xds

import (
	"fmt"
	"strings"
	"testing"

	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/simulation"
	"istio.io/istio/pkg/config/host"
)

// policyCase is what one AuthorizationPolicy of manifests/ must do at a workload it selects:
// requests its rule must match, and requests it must not.
type policyCase struct {
	workload       string // namespace/app
	match, noMatch []request
}

// TestAuthorizationPolicies evaluates, in the RBAC configuration Istio generates for each
// selected workload's inbound HTTP, every AuthorizationPolicy rule under manifests/ against requests
// from the workloads it means to let in (or keep out), identified by the SPIFFE IDs our
// registration renders for them, and from the same service accounts in another namespace and
// another trust domain. Every AuthorizationPolicy in manifests/ must have a case here.
func TestAuthorizationPolicies(t *testing.T) {
	m := newMesh(t)
	c := callers{m: m, t: t}
	frontend, batch := c.id("shop", "frontend"), c.id("shop", "batch")
	get := func(peer, path string) request { return request{Peer: peer, Method: "GET", Path: path} }
	withJWT := func(claims map[string]any) request {
		return request{Peer: frontend, Method: "GET", Path: "/orders", JWT: claims}
	}
	otherIssuer := c.jwtSVID(frontend, "orders")
	otherIssuer["iss"] = "https://oidc-discovery.partner.example"

	cases := map[string]policyCase{
		"shop/orders-from-frontend": {
			workload: "shop/orders",
			match:    []request{get(frontend, "/orders"), {Peer: frontend, Method: "POST", Path: "/orders/17"}},
			noMatch: []request{
				get(batch, "/orders"), get(c.id("shop", "payments"), "/orders"),
				get(c.elsewhere("shop", "frontend", "staging"), "/orders"),
				get(c.partner("shop", "frontend", "partner.example"), "/orders"),
				{Peer: frontend, Method: "DELETE", Path: "/orders/17"}, get(frontend, "/admin"), get("", "/orders"),
			},
		},
		"shop/payments-deny-batch": {
			workload: "shop/payments",
			match:    []request{get(batch, "/"), get(batch, "/refunds")},
			noMatch: []request{
				get(frontend, "/"), get(c.id("shop", "orders"), "/"),
				get(c.elsewhere("shop", "batch", "staging"), "/"),
				get(c.partner("shop", "batch", "partner.example"), "/"),
			},
		},
		"shop/orders-require-jwt-svid": {
			workload: "shop/orders",
			match:    []request{withJWT(c.jwtSVID(frontend, "orders"))},
			noMatch: []request{
				withJWT(c.jwtSVID(batch, "orders")),
				withJWT(c.jwtSVID(c.elsewhere("shop", "frontend", "staging"), "orders")),
				withJWT(c.jwtSVID(frontend, "payments")),
				withJWT(otherIssuer),
				get(frontend, "/orders"),
			},
		},
		// CUSTOM: the rule decides which requests orders sends to OPA (manifests/opa).
		"shop/orders-opa": {
			workload: "shop/orders",
			match:    []request{get(frontend, "/orders"), get(batch, "/orders/17")},
			noMatch:  []request{get(frontend, "/healthz"), get(frontend, "/ordersX")},
		},
	}

	for _, o := range m.objects {
		if o.Kind != "AuthorizationPolicy" {
			continue
		}
		t.Run(o.key(), func(t *testing.T) {
			var ap struct {
				Spec struct {
					Rules  []any  `json:"rules"`
					Action string `json:"action"`
				} `json:"spec"`
			}
			o.decode(t, &ap)
			if len(ap.Spec.Rules) == 0 {
				requireAllowsNothing(t, m, o)
				return
			}
			tc, ok := cases[o.key()]
			if !ok {
				t.Fatalf("%s: AuthorizationPolicy %s has no case in TestAuthorizationPolicies: say what it must allow and refuse", o.File, o.key())
			}
			if len(ap.Spec.Rules) != 1 {
				t.Fatalf("%s: %d rules; the cases here describe one", o.File, len(ap.Spec.Rules))
			}
			ns, app, _ := strings.Cut(tc.workload, "/")
			h, err := m.inbound(t, m.proxy(t, ns, app), appPort, simulation.MTLS)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("ns[%s]-policy[%s]-rule[0]", o.Metadata.Namespace, o.Metadata.Name)
			policy, action := findPolicy(t, h, name)
			for _, r := range tc.match {
				if !policyMatches(t, policy, r, dynamicMetadata(t, h, r)) {
					t.Errorf("%s (%v) does not match %+v\nprincipals: %s", name, action, r, principalsJSON(policy))
				}
			}
			for _, r := range tc.noMatch {
				if policyMatches(t, policy, r, dynamicMetadata(t, h, r)) {
					t.Errorf("%s (%v) matches %+v, which it must not", name, action, r)
				}
			}
			if ap.Spec.Action == "CUSTOM" {
				requireExtAuthzProvider(t, m, h, o)
			}
		})
	}
}

// requireAllowsNothing checks an ALLOW policy without rules (deny by default): every workload in
// its namespace gets an enforcing ALLOW RBAC filter, and at a workload no other ALLOW policy
// selects (payments) no request is allowed.
func requireAllowsNothing(t *testing.T, m *mesh, o object) {
	t.Helper()
	for key, pod := range m.pods {
		if pod.Namespace != o.Metadata.Namespace {
			continue
		}
		ns, app, _ := strings.Cut(key, "/")
		h, err := m.inbound(t, m.proxy(t, ns, app), appPort, simulation.MTLS)
		if err != nil {
			continue // no HTTP port: nothing to allow
		}
		if len(allowFilters(t, h)) == 0 {
			t.Errorf("%s: %s has no enforcing ALLOW filter", o.key(), key)
		}
	}
	h, err := m.inbound(t, m.proxy(t, "shop", "payments"), appPort, simulation.MTLS)
	if err != nil {
		t.Fatal(err)
	}
	r := request{Peer: m.spiffeID(t, "shop", "frontend"), Method: "GET", Path: "/"}
	for _, f := range allowFilters(t, h) {
		for name, p := range f.GetPolicies() {
			if policyMatches(t, p, r, nil) {
				t.Errorf("%s: payments allows %+v through %s", o.key(), r, name)
			}
		}
	}
}

// requireExtAuthzProvider checks that a CUSTOM policy's workload asks the extension provider the
// policy names, as the mesh configuration declares it, through the provider Service's cluster.
func requireExtAuthzProvider(t *testing.T, m *mesh, h hop, o object) {
	t.Helper()
	var ap struct {
		Spec struct {
			Provider struct {
				Name string `json:"name"`
			} `json:"provider"`
		} `json:"spec"`
	}
	o.decode(t, &ap)
	var want string
	for _, p := range m.config.GetExtensionProviders() {
		if p.GetName() == ap.Spec.Provider.Name {
			g := p.GetEnvoyExtAuthzGrpc()
			want = model.BuildSubsetKey(model.TrafficDirectionOutbound, "", host.Name(g.GetService()), int(g.GetPort()))
		}
	}
	if want == "" {
		t.Fatalf("%s: the mesh configuration has no gRPC ext_authz provider %q", o.key(), ap.Spec.Provider.Name)
	}
	for _, f := range httpFilters(t, h, extAuthzFilter, func() *extauthz.ExtAuthz { return &extauthz.ExtAuthz{} }) {
		if f.GetGrpcService().GetEnvoyGrpc().GetClusterName() == want {
			if f.GetFailureModeAllow() {
				t.Errorf("%s: requests are let through when %s fails", o.key(), want)
			}
			return
		}
	}
	t.Errorf("%s: no ext_authz filter calls %s", o.key(), want)
}
