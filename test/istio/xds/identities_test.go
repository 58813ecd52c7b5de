package xds

import (
	"testing"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// callers name the workloads that send requests in these tests by the SPIFFE IDs our registration
// renders for them, or would render for them elsewhere.
type callers struct {
	m *mesh
	t *testing.T
}

// id is the SPIFFE ID spire-mesh-injector's registration gives workload ns/app.
func (c callers) id(ns, app string) string { return c.m.spiffeID(c.t, ns, app) }

// elsewhere is the SPIFFE ID of a pod like ns/app's (same service account) in namespace other.
func (c callers) elsewhere(ns, app, other string) string {
	pod := c.m.pod(c.t, ns, app).DeepCopy()
	pod.Namespace = other
	return spiffeIDOf(c.t, c.m.cfg, pod)
}

// partner is the SPIFFE ID of a pod like ns/app's in another trust domain, wired there by
// spire-mesh-injector with that trust domain.
func (c callers) partner(ns, app, trustDomain string) string {
	cfg, err := config.Parse([]byte("trustDomain: " + trustDomain + "\nclusterName: partner\n"))
	if err != nil {
		c.t.Fatal(err)
	}
	return spiffeIDOf(c.t, cfg, c.m.pod(c.t, ns, app))
}

// jwtSVID is the payload of a JWT-SVID SPIRE mints for subject and audience, with the issuer
// ZTWIM's SpireServer sets (manifests/ztwim).
func (c callers) jwtSVID(subject, audience string) map[string]any {
	return map[string]any{"iss": spireJWTIssuer(c.t, c.m), "sub": subject, "aud": []any{audience}, "exp": 4102444800.0}
}

// spireJWTIssuer is SpireServer.spec.jwtIssuer in manifests/ztwim.
func spireJWTIssuer(t *testing.T, m *mesh) string {
	t.Helper()
	for _, o := range m.objects {
		if o.Kind == "SpireServer" {
			var s struct {
				Spec struct {
					JWTIssuer string `json:"jwtIssuer"`
				} `json:"spec"`
			}
			o.decode(t, &s)
			return s.Spec.JWTIssuer
		}
	}
	t.Fatal("manifests/ has no SpireServer")
	return ""
}
