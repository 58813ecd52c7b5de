package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/certs"
)

// TestSlowClientsCannotExhaustTheListener: clients that trickle their headers or their body, or
// hold connections open, are cut off by the limits, and a well-behaved client is served meanwhile;
// past MaxConnections, new connections wait rather than exhaust the process.
func TestSlowClientsCannotExhaustTheListener(t *testing.T) {
	ca, dir := certs.NewServing(t, "listener test CA")
	pool := ca.Pool()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	limits := Limits{ReadHeaderTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second, IdleTimeout: 2 * time.Second, MaxConnections: 8, MaxHeaderBytes: 4 << 10}
	srv := newHookServer("127.0.0.1", port, dir, TLSOptions, limits)
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
	dial := func() *tls.Conn {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool})
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
	bodyTrickler := dial()
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

	// Hold every allowed connection: the next one is not accepted (its handshake cannot even
	// start), and gets in once the idle ones are cut off.
	var held []*tls.Conn
	for range limits.MaxConnections {
		held = append(held, dial())
	}
	_, err = tls.DialWithDialer(&net.Dialer{Timeout: 300 * time.Millisecond}, "tcp", addr, &tls.Config{RootCAs: pool})
	require.Error(t, err, "past MaxConnections a new connection waits")
	require.NoError(t, post(), "served once the idle connections time out")
	for _, c := range held {
		c.Close()
	}
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(35 * time.Second):
		t.Fatal("server did not stop")
	}
}
