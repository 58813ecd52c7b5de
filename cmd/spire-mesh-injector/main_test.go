package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/podtest"
	"github.com/spire-mesh-injector/spire-mesh-injector/version"
	"github.com/spire-mesh-injector/spire-mesh-injector/webhook"
)

const example = "../../docs/examples/istio-injected-deployment.yaml"

func runCLI(stdin string, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCommands(t *testing.T) {
	in, err := os.ReadFile(example)
	require.NoError(t, err)
	badConfig := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(badConfig, []byte("jwtHelper:\n  nativeSidecar: maybe\n"), 0o600))

	tests := []struct {
		name     string
		stdin    string
		args     []string
		code     int
		stdout   []string
		stderr   []string
		noStdout bool
	}{
		{name: "inject a file", args: []string{"inject", "-f", example, "--registrations"}, code: 0,
			stdout: []string{"kind: Deployment", "csi.spiffe.io", "spire-mesh-injector.io/status", "kind: ClusterSPIFFEID", "name: spire-mesh-injector-bookinfo"}},
		{name: "inject stdin", stdin: string(in), args: []string{"inject", "-f", "-"}, code: 0, stdout: []string{"spiffe-jwt-helper"}},
		{name: "inject --f works like -f", stdin: string(in), args: []string{"inject", "--f", "-"}, code: 0, stdout: []string{"spiffe-jwt-helper"}},
		{name: "inject without -f", args: []string{"inject"}, code: 2, stderr: []string{"flag -f is required"}, noStdout: true},
		{name: "inject a missing file", args: []string{"inject", "-f", "no-such.yaml"}, code: 1, stderr: []string{"no-such.yaml"}, noStdout: true},
		{name: "inject with a bad config", args: []string{"inject", "-f", example, "--config", badConfig}, code: 1,
			stderr: []string{"jwtHelper.nativeSidecar: Unsupported value: \"maybe\""}, noStdout: true},
		{name: "inject a bad pod", stdin: "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {spiffe.io/audience: ''}\nspec: {containers: [{name: a}]}\n",
			args: []string{"inject", "-f", "-"}, code: 1, stderr: []string{"document 1: Pod/p: metadata.annotation spiffe.io/audience: empty"}, noStdout: true},
		{name: "unknown flag", args: []string{"inject", "--frobnicate"}, code: 2, stderr: []string{"flag provided but not defined: -frobnicate"}},
		{name: "stray argument", args: []string{"inject", "-f", example, "extra"}, code: 2, stderr: []string{`unexpected argument "extra"`}},
		{name: "version", args: []string{"version"}, code: 0, stdout: []string{"spire-mesh-injector " + version.Version}},
		{name: "help", args: []string{"help"}, code: 0, stdout: []string{"spire-mesh-injector inject  -f FILE"}},
		{name: "no command", args: nil, code: 2, stderr: []string{"Usage:"}},
		{name: "unknown command", args: []string{"frob"}, code: 2, stderr: []string{`unknown command "frob"`}},
		{name: "serve with a bad config", args: []string{"serve", "--config", badConfig}, code: 1, stderr: []string{"jwtHelper.nativeSidecar"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCLI(tt.stdin, tt.args...)
			assert.Equal(t, tt.code, code, "stderr: %s", errOut)
			for _, s := range tt.stdout {
				assert.Contains(t, out, s)
			}
			for _, s := range tt.stderr {
				assert.Contains(t, errOut, s)
			}
			if tt.noStdout {
				assert.Empty(t, out)
			}
		})
	}
}

// writeCert writes a fresh self-signed serving certificate for 127.0.0.1 into dir and returns it.
func writeCert(t *testing.T, dir string, serial int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "spire-mesh-injector.test"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kb, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	// Write both, then rename into place, as Kubernetes' atomic secret volumes do.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tls.key.tmp"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tls.crt.tmp"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.Rename(filepath.Join(dir, "tls.key.tmp"), filepath.Join(dir, "tls.key")))
	require.NoError(t, os.Rename(filepath.Join(dir, "tls.crt.tmp"), filepath.Join(dir, "tls.crt")))
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestServe runs the real server: TLS admission on /mutate-pods, health, readiness and metrics,
// serving-certificate reload, and a graceful shutdown that turns readiness off first.
func TestServe(t *testing.T) {
	dir := t.TempDir()
	first := writeCert(t, dir, 1)
	hookPort, healthPort, metricsPort := freePort(t), freePort(t), freePort(t)
	o := serveOptions{
		port: hookPort, certDir: dir,
		healthAddr:    "127.0.0.1:" + strconv.Itoa(healthPort),
		metricsAddr:   "127.0.0.1:" + strconv.Itoa(metricsPort),
		shutdownDelay: 2 * time.Second,
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- serve(ctx, podtest.Config(t), o, io.Discard) }()

	roots := x509.NewCertPool()
	roots.AddCert(first)
	httpsClient := func(pool *x509.CertPool) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	}
	health := "http://127.0.0.1:" + strconv.Itoa(healthPort)
	require.Eventually(t, func() bool {
		r, err := http.Get(health + "/readyz")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == 200
	}, 10*time.Second, 50*time.Millisecond, "server never became ready")
	r, err := http.Get(health + "/healthz")
	require.NoError(t, err)
	r.Body.Close()
	assert.Equal(t, 200, r.StatusCode)

	js, _ := podtest.Load(t, "../../mutators/testdata/native-sidecar.yaml")
	body := podtest.ReviewBody(t, podtest.Request("shop", js))
	hook := "https://127.0.0.1:" + strconv.Itoa(hookPort) + webhook.Path
	resp, err := httpsClient(roots).Post(hook, "application/json", bytes.NewReader(body))
	require.NoError(t, err)
	var review admissionv1.AdmissionReview
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&review))
	resp.Body.Close()
	require.True(t, review.Response.Allowed)
	require.NotEmpty(t, review.Response.Patch)

	// HTTP/2 stays off.
	conn, err := tls.Dial("tcp", "127.0.0.1:"+strconv.Itoa(hookPort), &tls.Config{RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}})
	require.NoError(t, err)
	assert.Equal(t, "http/1.1", conn.ConnectionState().NegotiatedProtocol)
	conn.Close()

	metrics, err := httpsClient(roots).Get("https://127.0.0.1:" + strconv.Itoa(metricsPort) + "/metrics")
	require.NoError(t, err)
	mb, _ := io.ReadAll(metrics.Body)
	metrics.Body.Close()
	assert.Contains(t, string(mb), `spire_mesh_injector_admissions_total{reason="mesh",result="mutated"} 1`)

	// The serving certificate is replaced on disk: new connections get the new one, no restart.
	second := writeCert(t, dir, 2)
	require.Eventually(t, func() bool {
		c, err := tls.Dial("tcp", "127.0.0.1:"+strconv.Itoa(hookPort), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return false
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(second.SerialNumber) == 0
	}, 10*time.Second, 100*time.Millisecond, "certificate not reloaded")

	// Shutdown: readiness turns false while the webhook still answers, then everything stops.
	cancel()
	require.Eventually(t, func() bool {
		r, err := http.Get(health + "/readyz")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == http.StatusInternalServerError
	}, time.Second, 20*time.Millisecond, "readiness did not turn false")
	roots2 := x509.NewCertPool()
	roots2.AddCert(second)
	resp, err = httpsClient(roots2).Post(hook, "application/json", bytes.NewReader(body))
	require.NoError(t, err, "webhook must keep answering during the shutdown delay")
	resp.Body.Close()
	assert.Equal(t, 200, resp.StatusCode)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop")
	}
	_, err = net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(hookPort), time.Second)
	assert.Error(t, err, "listener closed")
}
