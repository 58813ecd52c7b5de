package envtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/spire-mesh-injector/spire-mesh-injector/server"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/certs"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
	"github.com/spire-mesh-injector/spire-mesh-injector/webhook"
)

// TestServerLifecycle runs a second replica of the real server (it does not win the leader lease,
// so it only serves admissions): TLS admission, health, readiness and metrics; serving-certificate
// reload without a restart; and a graceful shutdown that turns readiness off first and keeps
// answering admissions until the listener closes.
func TestServerLifecycle(t *testing.T) {
	ca, dir := certs.NewServing(t, "lifecycle test CA")
	hookPort, metricsPort := freePort(), freePort()
	ctx := context.Background()
	srv, err := controlplane.StartServer(ctx, testConfig, server.Options{
		RestConfig: cp.Config, Host: "127.0.0.1", Port: hookPort, CertDir: dir,
		MetricsAddr:    "127.0.0.1:" + strconv.Itoa(metricsPort),
		ShutdownDelay:  2 * time.Second,
		LeaderElection: true, LeaderElectionNamespace: leaseNamespace,
		Log: zap.New(zap.WriteTo(io.Discard)),
	})
	require.NoError(t, err, "the server is ready")
	defer srv.Shutdown()
	code, err := proc.GetStatus(ctx, srv.HealthURL+"/healthz")
	require.NoError(t, err)
	assert.Equal(t, 200, code)

	roots := ca.Pool()
	https := func(pool *x509.CertPool) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	}
	ns := namespace(t, true, nil)
	js, _ := podtest.Load(t, filepath.Join(controlplane.Root(), "mutators", "testdata", "native-sidecar.yaml"))
	body := podtest.ReviewBody(t, podtest.Request(ns, js))
	hook := "https://127.0.0.1:" + strconv.Itoa(hookPort) + webhook.Path
	resp, err := https(roots).Post(hook, "application/json", bytes.NewReader(body))
	require.NoError(t, err)
	var review admissionv1.AdmissionReview
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&review))
	resp.Body.Close()
	require.True(t, review.Response.Allowed)
	require.NotEmpty(t, review.Response.Patch)

	conn, err := tls.Dial("tcp", "127.0.0.1:"+strconv.Itoa(hookPort), &tls.Config{RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}})
	require.NoError(t, err)
	assert.Equal(t, "http/1.1", conn.ConnectionState().NegotiatedProtocol, "HTTP/2 stays off")
	conn.Close()

	mresp, err := https(roots).Get("https://127.0.0.1:" + strconv.Itoa(metricsPort) + "/metrics")
	require.NoError(t, err)
	mb, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, name := range []string{"spire_mesh_injector_admissions_total", "spire_mesh_injector_admission_duration_seconds", "spire_mesh_injector_registration_ensures_total", "spire_mesh_injector_patch_bytes",
		"spire_mesh_injector_serving_certificate_expiry_timestamp_seconds", `spire_mesh_injector_config_info{class_name="zero-trust-workload-identity-manager-spire"`} {
		assert.Contains(t, string(mb), name)
	}

	second := ca.Issue(t, dir, 2)
	require.Eventually(t, func() bool {
		c, err := tls.Dial("tcp", "127.0.0.1:"+strconv.Itoa(hookPort), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return false
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(second.SerialNumber) == 0
	}, 10*time.Second, 100*time.Millisecond, "serving certificate not reloaded")

	// An admission in flight when shutdown begins: its body arrives over 3 s, longer than the
	// 2 s shutdown delay, so the listener closes while it is being served. It must complete.
	roots2 := ca.Pool()
	pr, pw := io.Pipe()
	inflight := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, hook, pr)
		req.Header.Set("Content-Type", "application/json")
		resp, err := https(roots2).Do(req)
		if err != nil {
			t.Logf("in-flight request: %v", err)
			inflight <- nil
			return
		}
		inflight <- resp
	}()
	_, err = pw.Write(body[:len(body)/2])
	require.NoError(t, err)

	srv.Shutdown()
	require.NoError(t, proc.Poll(ctx, 30*time.Second, 50*time.Millisecond, "readiness false", proc.StatusIs(srv.HealthURL+"/readyz", http.StatusInternalServerError)),
		"readiness turns false first")
	resp, err = https(roots2).Post(hook, "application/json", bytes.NewReader(body))
	require.NoError(t, err, "still answering during the shutdown delay")
	resp.Body.Close()
	assert.Equal(t, 200, resp.StatusCode)
	time.Sleep(3 * time.Second)
	_, err = pw.Write(body[len(body)/2:])
	require.NoError(t, err)
	require.NoError(t, pw.Close())
	r := <-inflight
	require.NotNil(t, r, "the in-flight admission was drained, not dropped")
	var drained admissionv1.AdmissionReview
	require.NoError(t, json.NewDecoder(r.Body).Decode(&drained))
	r.Body.Close()
	assert.True(t, drained.Response.Allowed)
	assert.NotEmpty(t, drained.Response.Patch)
	require.NoError(t, srv.Wait(40*time.Second), "the server stops")
	_, err = net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(hookPort), time.Second)
	assert.Error(t, err, "listener closed")
}
