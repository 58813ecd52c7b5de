package manifests

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
)

const (
	issuer   = "https://oidc-discovery.apps.example.com"
	frontend = "spiffe://apps.example.com/ns/shop/sa/frontend"
	batch    = "spiffe://apps.example.com/ns/shop/sa/batch"
)

// signer mints JWT-SVID-shaped tokens, as SPIRE does, and publishes the JWKS the OIDC discovery
// provider would serve.
type signer struct {
	key  *ecdsa.PrivateKey
	jwks string
	sig  jose.Signer
}

func newSigner(t *testing.T) *signer {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "spire-1", Algorithm: "ES256", Use: "sig"}}})
	require.NoError(t, err)
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "spire-1"))
	require.NoError(t, err)
	return &signer{key: key, jwks: string(jwks), sig: sig}
}

func (s *signer) token(t *testing.T, sub, aud, iss string, exp time.Time) string {
	tok, err := jwt.Signed(s.sig).Claims(jwt.Claims{Subject: sub, Audience: jwt.Audience{aud}, Issuer: iss, Expiry: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(time.Now())}).Serialize()
	require.NoError(t, err)
	return tok
}

func request(method, path string, headers map[string]string, principal string) map[string]any {
	src := map[string]any{"address": map[string]any{"socketAddress": map[string]any{"address": "10.0.0.7", "portValue": 41234}}}
	if principal != "" {
		src["principal"] = principal
	}
	return map[string]any{"attributes": map[string]any{
		"source":      src,
		"destination": map[string]any{"principal": "spiffe://apps.example.com/ns/shop/sa/orders"},
		"request":     map[string]any{"http": map[string]any{"method": method, "path": path, "host": "orders.shop.svc", "headers": headers}},
	}}
}

// TestOPAPolicyAuthorizesBySPIFFEID evaluates manifests/opa/policy/authz.rego with OPA's Go library
// on allowed and denied inputs, as opa-envoy-plugin gives them (decision envoy/authz/allow).
func TestOPAPolicyAuthorizesBySPIFFEID(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(controlplane.Root(), "manifests", "opa", "policy", "authz.rego"))
	require.NoError(t, err)
	s := newSigner(t)
	other := newSigner(t)
	store := inmem.NewFromObject(map[string]any{"spire": map[string]any{"jwt": map[string]any{"jwks": s.jwks}}})
	query, err := rego.New(rego.Query("data.envoy.authz.allow"), rego.Module("authz.rego", string(src)), rego.Store(store)).PrepareForEval(context.Background())
	require.NoError(t, err, "the policy compiles with OPA v1")

	soon := time.Now().Add(5 * time.Minute)
	bearer := func(tok string) map[string]string { return map[string]string{"authorization": "Bearer " + tok} }
	istioXFCC := `By=spiffe://apps.example.com/ns/shop/sa/orders;Hash=2f1c9e;Subject="";URI=` + frontend
	tests := []struct {
		name  string
		input map[string]any
		allow bool
	}{
		{"X.509: frontend's SVID, permitted method and path", request("GET", "/orders/42", nil, frontend), true},
		{"X.509: POST permitted too", request("POST", "/orders", nil, frontend), true},
		{"X.509: a method not permitted", request("DELETE", "/orders/42", nil, frontend), false},
		{"X.509: a path not permitted", request("GET", "/admin", nil, frontend), false},
		{"X.509: an identity without permissions", request("GET", "/orders", nil, batch), false},
		{"X.509: read-only identity reads", request("GET", "/orders", nil, "spiffe://apps.example.com/ns/shop/sa/reporting"), true},
		{"X.509: read-only identity cannot write", request("POST", "/orders", nil, "spiffe://apps.example.com/ns/shop/sa/reporting"), false},
		{"X.509: a principal that is not a SPIFFE ID", request("GET", "/orders", nil, "cluster.local/ns/shop/sa/frontend"), false},
		{"XFCC (sanitized, Istio's four fields): frontend", request("GET", "/orders", map[string]string{"x-forwarded-client-cert": istioXFCC}, ""), true},
		{"XFCC: the closest element counts", request("GET", "/orders", map[string]string{"x-forwarded-client-cert": "By=x;URI=" + frontend + ",By=y;URI=" + batch}, ""), false},
		{"XFCC is ignored when Envoy gives the peer's principal", request("GET", "/orders", map[string]string{"x-forwarded-client-cert": istioXFCC}, batch), false},
		{"JWT-SVID: frontend's token", request("GET", "/orders", bearer(s.token(t, frontend, "orders", issuer, soon)), ""), true},
		{"JWT-SVID: another audience", request("GET", "/orders", bearer(s.token(t, frontend, "payments", issuer, soon)), ""), false},
		{"JWT-SVID: another issuer", request("GET", "/orders", bearer(s.token(t, frontend, "orders", "https://evil.example", soon)), ""), false},
		{"JWT-SVID: expired", request("GET", "/orders", bearer(s.token(t, frontend, "orders", issuer, time.Now().Add(-time.Minute))), ""), false},
		{"JWT-SVID: signed by another key", request("GET", "/orders", bearer(other.token(t, frontend, "orders", issuer, soon)), ""), false},
		{"JWT-SVID: sub is not a SPIFFE ID", request("GET", "/orders", bearer(s.token(t, "frontend", "orders", issuer, soon)), ""), false},
		{"JWT-SVID: an identity without permissions", request("GET", "/orders", bearer(s.token(t, batch, "orders", issuer, soon)), ""), false},
		{"JWT-SVID: not a bearer token", request("GET", "/orders", map[string]string{"authorization": "Basic Zm9vOmJhcg=="}, ""), false},
		{"no identity at all", request("GET", "/orders", nil, ""), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := query.Eval(context.Background(), rego.EvalInput(tt.input))
			require.NoError(t, err)
			require.Len(t, rs, 1)
			assert.Equal(t, tt.allow, rs[0].Expressions[0].Value)
		})
	}
}
