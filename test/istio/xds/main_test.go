package xds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	istiolog "istio.io/istio/pkg/log"
)

// oidcProviderHost is the in-cluster name of ZTWIM's SPIRE OIDC discovery provider
// (testdata/workloads.yaml); manifests/jwt-svid's jwksUri names it.
const oidcProviderHost = "spire-spiffe-oidc-discovery-provider.zero-trust-workload-identity-manager.svc.cluster.local"

var (
	// istioModuleDir is the Istio module's folder, for the Envoy bootstrap template pilot-agent
	// ships (tools/packaging/common/envoy_bootstrap.json).
	istioModuleDir string
	// oidc is the stand-in for the OIDC discovery provider that istiod fetches the JWKS from.
	oidc *oidcProvider
)

// TestMain sets up what must exist before Istio's code first runs: the folder of Istio's module,
// and the OIDC discovery provider istiod may fetch the JWKS from, with the process environment
// that istiod's HTTP client reads once per process (see newOIDCProvider).
func TestMain(m *testing.M) {
	opts := istiolog.DefaultOptions()
	// The tests say what went wrong; Istio's own logging (warnings about the fake cluster) is noise.
	opts.SetDefaultOutputLevel("all", istiolog.NoneLevel)
	if err := istiolog.Configure(opts); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/istio").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "finding Istio's module:", err)
		os.Exit(1)
	}
	istioModuleDir = strings.TrimSpace(string(out))
	if oidc, err = newOIDCProvider(); err != nil {
		fmt.Fprintln(os.Stderr, "the OIDC discovery provider stand-in:", err)
		os.Exit(1)
	}
	code := m.Run()
	oidc.close()
	os.Exit(code)
}

// oidcProvider stands in for ZTWIM's SPIRE OIDC discovery provider as istiod reaches it: HTTPS with
// a serving certificate for the Service's in-cluster name issued by a CA (OpenShift's service CA),
// serving the JWKS at /keys. Reaching it by that name needs the cluster's DNS, which a test does not
// have, so istiod's JWKS client (which honours HTTPS_PROXY) is sent through a proxy that tunnels
// to the provider the Service's host:443 and refuses every other destination: nothing leaves the
// machine. istiod trusts the system pool plus jwksResolverExtraRootCA; here the service CA is the
// system pool (SSL_CERT_FILE), which Go reads once per process, hence TestMain.
type oidcProvider struct {
	jwks      string
	caPEM     []byte
	server    *httptest.Server
	proxy     *httptest.Server
	fetches   atomic.Int64
	refused   atomic.Value // string: the last destination the proxy refused
	tempFiles string
}

func newOIDCProvider() (*oidcProvider, error) {
	p := &oidcProvider{}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "openshift-service-serving-signer"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: oidcProviderHost},
		DNSNames:     []string{oidcProviderHost},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})

	// The JWT-SVID signing key SPIRE publishes, as the provider serves it.
	jwtKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	coord := func(n *big.Int) string { return base64.RawURLEncoding.EncodeToString(n.FillBytes(make([]byte, 32))) }
	jwks, err := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "EC", "crv": "P-256", "kid": "spire-jwt-key", "use": "sig", "alg": "ES256",
		"x": coord(jwtKey.X), "y": coord(jwtKey.Y),
	}}})
	if err != nil {
		return nil, err
	}
	p.jwks = string(jwks)

	p.server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/keys" {
			http.NotFound(w, r)
			return
		}
		p.fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, p.jwks)
	}))
	p.server.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}}
	p.server.StartTLS()

	p.proxy = httptest.NewServer(http.HandlerFunc(p.tunnel))

	dir, err := os.MkdirTemp("", "xds-oidc-")
	if err != nil {
		return nil, err
	}
	p.tempFiles = dir
	caFile := filepath.Join(dir, "service-ca.crt")
	if err := os.WriteFile(caFile, p.caPEM, 0o600); err != nil {
		return nil, err
	}
	for k, v := range map[string]string{
		"SSL_CERT_FILE": caFile, "SSL_CERT_DIR": dir,
		"HTTPS_PROXY": p.proxy.URL, "https_proxy": p.proxy.URL,
		"HTTP_PROXY": p.proxy.URL, "http_proxy": p.proxy.URL,
		"NO_PROXY": "", "no_proxy": "",
	} {
		if err := os.Setenv(k, v); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// tunnel is an HTTP CONNECT proxy with one destination: the provider's Service, port 443.
func (p *oidcProvider) tunnel(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect || r.Host != oidcProviderHost+":443" {
		p.refused.Store(r.Method + " " + r.Host)
		http.Error(w, "this test reaches only "+oidcProviderHost+":443", http.StatusForbidden)
		return
	}
	upstream, err := net.Dial("tcp", p.server.Listener.Addr().String())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		upstream.Close()
		return
	}
	_, _ = rw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n")
	_ = rw.Flush()
	go func() { _, _ = io.Copy(upstream, rw); upstream.Close() }()
	_, _ = io.Copy(conn, upstream)
	conn.Close()
}

func (p *oidcProvider) close() {
	p.proxy.Close()
	p.server.Close()
	os.RemoveAll(p.tempFiles)
}
