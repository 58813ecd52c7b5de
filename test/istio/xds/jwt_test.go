package xds

import (
	"net/url"
	"slices"
	"testing"

	jwtauthn "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/simulation"
	"istio.io/istio/pilot/test/xdstest"
	"istio.io/istio/pkg/jwt"
)

// TestRequestAuthenticationJWKS: each RequestAuthentication under manifests/ becomes, at every
// workload it selects, a jwt_authn provider for SPIRE's issuer (SpireServer.spec.jwtIssuer) and
// its audiences, whose JWKS is obtained the way the shipped mesh configuration says:
//   - istiod fetches it (PILOT_JWT_ENABLE_REMOTE_JWKS false/istiod) over TLS with the CA it is given
//     (jwksResolverExtraRootCA: OpenShift's service CA) and inlines it: Envoy must then hold exactly
//     the keys the provider serves;
//   - Envoy fetches it (true/hybrid/envoy, when the host is a Service in the registry) through the
//     Service's outbound cluster: that cluster must then speak TLS, verified, to the provider.
func TestRequestAuthenticationJWKS(t *testing.T) {
	m := newMesh(t)
	issuer := spireJWTIssuer(t, m)
	fetchesBefore := oidc.fetches.Load()
	for _, o := range m.objects {
		if o.Kind != "RequestAuthentication" {
			continue
		}
		var ra struct {
			Spec struct {
				Selector struct {
					MatchLabels map[string]string `json:"matchLabels"`
				} `json:"selector"`
				JWTRules []struct {
					Issuer    string   `json:"issuer"`
					JWKSURI   string   `json:"jwksUri"`
					Audiences []string `json:"audiences"`
				} `json:"jwtRules"`
			} `json:"spec"`
		}
		o.decode(t, &ra)
		pods := m.podsSelected(o.Metadata.Namespace, ra.Spec.Selector.MatchLabels)
		if len(pods) == 0 {
			t.Fatalf("%s: RequestAuthentication %s selects no sample workload", o.File, o.key())
		}
		for _, pod := range pods {
			proxy := m.proxy(t, pod.Namespace, pod.Labels["app"])
			h, err := m.inbound(t, proxy, appPort, simulation.MTLS)
			if err != nil {
				t.Fatal(err)
			}
			authn := httpFilters(t, h, jwtAuthnFilter, func() *jwtauthn.JwtAuthentication { return &jwtauthn.JwtAuthentication{} })
			if len(authn) != 1 {
				t.Fatalf("%s: %d jwt_authn filters at %s", o.key(), len(authn), proxy.ID)
			}
			for _, rule := range ra.Spec.JWTRules {
				if rule.Issuer != issuer {
					t.Errorf("%s: issuer %q, SPIRE's is %q (SpireServer.spec.jwtIssuer)", o.key(), rule.Issuer, issuer)
				}
				var provider *jwtauthn.JwtProvider
				for _, p := range authn[0].GetProviders() {
					if p.GetIssuer() == rule.Issuer {
						provider = p
					}
				}
				if provider == nil {
					t.Fatalf("%s: no jwt_authn provider for %s at %s", o.key(), rule.Issuer, proxy.ID)
				}
				if got := provider.GetAudiences(); !slices.Equal(got, rule.Audiences) {
					t.Errorf("%s: audiences %v, want %v", o.key(), got, rule.Audiences)
				}
				requireJWKS(t, m, proxy, provider, rule.JWKSURI)
			}
		}
	}
	if features.JwksFetchMode == jwt.Istiod && oidc.fetches.Load() == fetchesBefore {
		t.Errorf("istiod never fetched the JWKS from the provider (last destination refused by the test's proxy: %v)", oidc.refused.Load())
	}
}

// requireJWKS checks where provider's keys come from (see TestRequestAuthenticationJWKS).
func requireJWKS(t *testing.T, m *mesh, proxy *model.Proxy, provider *jwtauthn.JwtProvider, jwksURI string) {
	t.Helper()
	switch src := provider.GetJwksSourceSpecifier().(type) {
	case *jwtauthn.JwtProvider_LocalJwks:
		if got := src.LocalJwks.GetInlineString(); got != oidc.jwks {
			t.Errorf("istiod fetches %s (PILOT_JWT_ENABLE_REMOTE_JWKS=%q) but did not get the provider's keys (does it trust the provider's CA, jwksResolverExtraRootCA?); Envoy holds\n%s",
				jwksURI, m.env["PILOT_JWT_ENABLE_REMOTE_JWKS"], got)
		}
	case *jwtauthn.JwtProvider_RemoteJwks:
		name := src.RemoteJwks.GetHttpUri().GetCluster()
		c := xdstest.ExtractCluster(name, m.server.Clusters(proxy))
		if c == nil {
			t.Fatalf("Envoy fetches %s through cluster %q, which %s does not have", jwksURI, name, proxy.ID)
		}
		u, _ := url.Parse(jwksURI)
		for _, ep := range m.endpoints(t, proxy, name) {
			ts := transportSocketFor(c, ep)
			if ts.GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" {
				t.Errorf("Envoy fetches %s itself (PILOT_JWT_ENABLE_REMOTE_JWKS=%q) through cluster %s, which speaks plain text (%s) to the provider's %s port at %s: "+
					"it gets no keys and refuses every token (401). Let istiod fetch it: PILOT_JWT_ENABLE_REMOTE_JWKS \"false\" with the service CA in jwksResolverExtraRootCA",
					jwksURI, m.env["PILOT_JWT_ENABLE_REMOTE_JWKS"], name, ts.GetName(), u.Scheme, ep.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
				continue
			}
			tls := xdstest.UnmarshalAny[tlsv3.UpstreamTlsContext](t, ts.GetTypedConfig())
			if tls.GetSni() != u.Hostname() || tls.GetCommonTlsContext().GetValidationContextType() == nil {
				t.Errorf("Envoy fetches %s over TLS without verifying the provider: %s", jwksURI, jsonOf(tls))
			}
		}
	default:
		t.Errorf("jwt_authn provider %s has no JWKS: %v", provider.GetIssuer(), src)
	}
}
