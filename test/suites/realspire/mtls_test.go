package realspire

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// source is an X509Source serving one of this process's identities.
func source(t *testing.T, id spiffeid.ID) *workloadapi.X509Source {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx,
		workloadapi.WithClientOptions(workloadapi.WithAddr(agent.Socket())),
		workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, s := range svids {
				if s.ID == id {
					return s
				}
			}
			return svids[0]
		}))
	require.NoError(t, err)
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// TestMTLSWithSPIFFEIDAuthorization is the X.509 use case between two workloads on loopback with
// go-spiffe's tlsconfig: SVIDs from the real agent, mutual authentication, authorization by SPIFFE
// ID (the allowed client connects, any other identity is refused), and no failed request while the
// short-lived SVIDs rotate under both a kept-alive connection and fresh ones.
func TestMTLSWithSPIFFEIDAuthorization(t *testing.T) {
	const x509TTL = 20 // seconds: rotated by the agent at about half of it
	ids := map[string]spiffeid.ID{}
	for _, n := range []string{"frontend", "backend", "intruder"} {
		ids[n] = spiffeid.RequireFromString("spiffe://" + trustDomain + "/ns/shop/sa/" + n)
		register(t, ids[n].String(), []string{"unix:uid:" + fmt.Sprint(selfUID())}, x509TTL, 0)
	}
	for _, id := range ids {
		waitSVID(t, agent.Socket(), id)
	}
	backend, frontend, intruder := source(t, ids["backend"]), source(t, ids["frontend"]), source(t, ids["intruder"])

	ln, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(backend, backend, tlsconfig.AuthorizeID(ids["frontend"])))
	require.NoError(t, err)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		_, _ = io.WriteString(w, peer.String())
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	url := "https://" + ln.Addr().String() + "/orders"

	client := func(src *workloadapi.X509Source, keepAlive bool) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig:   tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(ids["backend"])),
			DisableKeepAlives: !keepAlive,
		}}
	}
	resp, err := client(frontend, false).Get(url)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, ids["frontend"].String(), string(body), "the server sees the client's SPIFFE ID")

	_, err = client(intruder, false).Get(url)
	require.Error(t, err, "an identity the policy does not name is refused")
	assert.Contains(t, err.Error(), "tls", "refused in the TLS handshake: %v", err)

	// Rotation: requests for two SVID lifetimes, over one kept-alive connection and over a new
	// connection each, without a single failure; the backend's certificate changes meanwhile.
	var failures atomic.Int64
	var requests atomic.Int64
	serials := sync.Map{}
	stop := time.Now().Add(2 * x509TTL * time.Second)
	var wg sync.WaitGroup
	for _, keep := range []bool{true, false} {
		c := client(frontend, keep)
		wg.Go(func() {
			for time.Now().Before(stop) {
				resp, err := c.Get(url)
				requests.Add(1)
				if err != nil {
					failures.Add(1)
					t.Logf("request failed (keepAlive %t): %v", keep, err)
				} else {
					serials.Store(resp.TLS.PeerCertificates[0].SerialNumber.String(), true)
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	n := 0
	serials.Range(func(any, any) bool { n++; return true })
	assert.Zero(t, failures.Load(), "failed requests out of %d", requests.Load())
	assert.GreaterOrEqual(t, n, 2, "the backend's SVID rotated during the run")
	t.Logf("MEASURE mTLS across rotation: %d requests, %d failures, %d backend certificates", requests.Load(), failures.Load(), n)
}
