package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/certs"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
)

// TestSlowClientsCannotExhaustTheListener: clients that trickle their headers or their body, or
// hold connections open, are cut off by the limits, and a well-behaved client is served meanwhile;
// a client holding its share of connections gets no more, and at the cap a new client takes the
// place of an idle connection; readiness, which needs no connection slot, stays true throughout.
func TestSlowClientsCannotExhaustTheListener(t *testing.T) {
	ca, dir := certs.NewServing(t, "listener test CA")
	pool := ca.Pool()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	limits := Limits{ReadHeaderTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, IdleTimeout: 2 * time.Second,
		MaxConnections: 8, MaxConnectionsPerClient: 3, MaxHeaderBytes: 4 << 10}
	reg := prometheus.NewRegistry()
	srv := newHookServer("", port, dir, "", TLSOptions, limits, reg)
	srv.Register("/mutate-pods", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		_, _ = w.Write(b)
	}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	require.Eventually(t, func() bool { return srv.StartedChecker()(nil) == nil }, 5*time.Second, 20*time.Millisecond)

	addr := "127.0.0.1:" + strconv.Itoa(port)
	// Each loopback address is another client: 127.0.0.1 plays the API server.
	dialFrom := func(ip string) (*tls.Conn, error) {
		d := &net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: pool})
	}
	dial := func() *tls.Conn {
		c, err := dialFrom("127.0.0.9")
		require.NoError(t, err)
		return c
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
	post := func() error {
		resp, err := client.Post("https://"+addr+"/mutate-pods", "application/json", bytes.NewReader([]byte(`{"ok":true}`)))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != `{"ok":true}` {
			return &net.AddrError{Err: string(b), Addr: strconv.Itoa(resp.StatusCode)}
		}
		return nil
	}

	// Slowloris: headers that never end, and a body that never arrives.
	headerTrickler := dial()
	_, err = headerTrickler.Write([]byte("POST /mutate-pods HTTP/1.1\r\nHost: x\r\n"))
	require.NoError(t, err)
	bodyTrickler, err := dialFrom("127.0.0.10")
	require.NoError(t, err)
	_, err = bodyTrickler.Write([]byte("POST /mutate-pods HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"))
	require.NoError(t, err)
	require.NoError(t, post(), "a well-behaved client is served while slow ones hang on")

	closed := func(c *tls.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b := make([]byte, 4096)
		for {
			n, err := c.Read(b)
			if err != nil {
				return true // the server closed it (or answered and closed)
			}
			if n == 0 {
				return false
			}
		}
	}
	assert.True(t, closed(headerTrickler), "a client trickling its headers is cut off")
	assert.True(t, closed(bodyTrickler), "a client trickling its body is cut off")

	// One client holds its share: its next connection is closed at once, another client is served.
	var held []*tls.Conn
	for range limits.MaxConnectionsPerClient {
		c, err := dialFrom("127.0.0.2")
		require.NoError(t, err)
		held = append(held, c)
	}
	if c, err := dialFrom("127.0.0.2"); err == nil {
		assert.True(t, closed(c), "past its share a client's connection is closed")
	}
	require.NoError(t, post(), "the API server is served while another client holds its share")
	assert.Equal(t, 1.0, testutil.ToFloat64(srv.metrics.refused.WithLabelValues("per-client-limit")))

	// Idle clients fill the listener to its cap: a new client takes the place of an idle one.
	for _, ip := range []string{"127.0.0.3", "127.0.0.4"} {
		for range limits.MaxConnectionsPerClient {
			c, err := dialFrom(ip)
			if err != nil {
				break
			}
			held = append(held, c)
		}
	}
	assert.Equal(t, float64(limits.MaxConnections), testutil.ToFloat64(srv.metrics.open), "the cap is reached")
	require.NoError(t, srv.StartedChecker()(nil), "readiness does not need a connection slot")
	require.NoError(t, post(), "at the cap the API server takes an idle connection's place")
	assert.GreaterOrEqual(t, testutil.ToFloat64(srv.metrics.evicted), 1.0)
	for _, c := range held {
		c.Close()
	}

	// Churn at the cap: clients connecting and hanging up as fast as they can while connections
	// are evicted. The listener must never wedge (a release by Close racing an eviction).
	stop := time.Now().Add(2 * time.Second)
	var wg sync.WaitGroup
	for i := range 4 {
		ip := "127.0.0." + strconv.Itoa(20+i)
		for range 16 {
			wg.Go(func() {
				for time.Now().Before(stop) {
					if c, err := dialFrom(ip); err == nil {
						_ = c.Close()
					}
				}
			})
		}
	}
	wg.Wait()
	require.NoError(t, post(), "served after the churn")
	// The server sees each hang-up when its read returns, after the client's Close returned: wait
	// for the last ones rather than read the gauge at once.
	assert.Eventually(t, func() bool { return testutil.ToFloat64(srv.metrics.open) == 0 }, 10*time.Second, 10*time.Millisecond,
		"every connection's slot given back")
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(35 * time.Second):
		t.Fatal("server did not stop")
	}
}

// TestClientCertificatesRequired: with a client CA file, only a client presenting a certificate
// that CA signs is served (the API server, where the cluster lets it present one); the CA file is
// read again when it changes; readiness, which checks the serving side only, stays true.
func TestClientCertificatesRequired(t *testing.T) {
	ca, dir := certs.NewServing(t, "serving CA")
	apiCA := certs.NewCA(t, "webhook client CA")
	caFile := filepath.Join(t.TempDir(), "client-ca.crt")
	require.NoError(t, os.WriteFile(caFile, apiCA.PEM, 0o600))
	port, err := proc.FreePort()
	require.NoError(t, err)
	srv := newHookServer("127.0.0.1", port, dir, caFile, TLSOptions, DefaultLimits, prometheus.NewRegistry())
	srv.Register("/mutate-pods", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Start(ctx) }()
	require.Eventually(t, func() bool { return srv.StartedChecker()(nil) == nil }, 5*time.Second, 20*time.Millisecond, "ready without a client certificate of its own")

	post := func(certs ...tls.Certificate) error {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
			TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: certs}}}
		resp, err := c.Post("https://127.0.0.1:"+strconv.Itoa(port)+"/mutate-pods", "application/json", nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}
	require.Error(t, post(), "no client certificate: refused in the handshake")
	require.Error(t, post(certs.NewCA(t, "another CA").Client(t, "intruder")), "a certificate another CA signed: refused")
	require.NoError(t, post(apiCA.Client(t, "kube-apiserver")), "the API server's certificate: served")

	// The CA rotates: the file is read again.
	next := certs.NewCA(t, "next webhook client CA")
	require.NoError(t, os.WriteFile(caFile, next.PEM, 0o600))
	future := time.Now().Add(2 * time.Second)
	require.NoError(t, os.Chtimes(caFile, future, future))
	require.Error(t, post(apiCA.Client(t, "kube-apiserver")), "the old CA's certificate after the rotation")
	require.NoError(t, post(next.Client(t, "kube-apiserver")), "the new CA's certificate")
	require.NoError(t, srv.StartedChecker()(nil))
}
