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

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/spire"
)

// rotatingX509TTL is the X.509-SVID lifetime of the mTLS tests, in seconds: the agent renews an
// SVID at about half its lifetime, so that requests for two lifetimes span several rotations.
const rotatingX509TTL = 20

// TestMTLSOverSDS is the X.509 use case between mesh workloads as their Envoy sidecars do it
// (envoyTLS, the stand-in for Envoy's TLS): each sidecar on a node of its own, reaching its agent
// through the socket the SPIFFE CSI driver publishes where the webhook mounts it for istio-proxy,
// and taking its certificate and trust from the agent's SDS streams `default` and `ROOTCA`. The
// backend allows only the frontend's SPIFFE ID, as our registration renders it; a workload of
// another namespace with the same service account name is refused in the handshake; and no
// request fails while the SVIDs rotate, each sidecar following its `default` stream.
func TestMTLSOverSDS(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	cfg := podtest.Config(t)
	pods := map[string]struct{ ns, sa string }{"frontend": {"shop", "frontend"}, "backend": {"shop", "backend"}, "intruder": {"sandbox", "frontend"}}
	ids := map[string]spiffeid.ID{}
	sidecars := map[string]*envoyTLS{}
	for name, p := range pods {
		pod := meshPod(t, cfg, p.ns, p.sa)
		ids[name] = spiffeIDOf(t, cfg, pod)
		node := startMeshNode(t, server, "mtls-"+name, spire.AgentOptions{})
		node.register(t, ids[name], rotatingX509TTL)
		sidecars[name] = envoySidecar(t, dialSDS(t, node.istioProxySocket(t, pod)), envoyNode(pod, currentEnvoy))
	}
	for name, s := range sidecars {
		s.ready(t)
		assert.Equal(t, ids[name].String(), s.svid.current().leafID())
	}
	require.NotEqual(t, ids["frontend"], ids["intruder"])

	mtlsAcrossRotation(t, ids, sidecars["frontend"], sidecars["backend"], sidecars["intruder"])

	// The sidecars took the rotated SVIDs from their `default` streams, without asking again.
	for _, name := range []string{"frontend", "backend"} {
		serials := map[string]bool{}
		for _, s := range sidecars[name].svid.history() {
			serials[s.cert.Leaf.SerialNumber.String()] = true
			assert.Equal(t, ids[name].String(), s.leafID())
		}
		assert.GreaterOrEqual(t, len(serials), 2, "%s's `default` stream delivered rotated SVIDs", name)
	}
}

// TestMTLSOverWorkloadAPI is the same use case between plain workloads (pods wired with
// SPIFFE_ENDPOINT_SOCKET) that use go-spiffe's X509Source and tlsconfig: the Workload API's X.509
// stream rather than SDS, what an application with a SPIFFE library gets from the agent.
func TestMTLSOverWorkloadAPI(t *testing.T) {
	t.Parallel()
	ids := map[string]spiffeid.ID{}
	for _, n := range []string{"frontend", "backend", "intruder"} {
		ids[n] = spiffeid.RequireFromString("spiffe://" + trustDomain + "/ns/shop/sa/" + n)
		register(t, ids[n].String(), []string{"unix:uid:" + fmt.Sprint(selfUID())}, rotatingX509TTL, 0)
	}
	for _, id := range ids {
		waitSVID(t, agent.Socket(), id)
	}
	mtlsAcrossRotation(t, ids, goSPIFFETLS{source(t, ids["frontend"])}, goSPIFFETLS{source(t, ids["backend"])}, goSPIFFETLS{source(t, ids["intruder"])})
}

// mtlsWorkload is a workload's side of mTLS.
type mtlsWorkload interface {
	// serverConfig accepts clients whose SPIFFE ID is among allowed.
	serverConfig(allowed ...spiffeid.ID) *tls.Config
	// clientConfig accepts servers whose SPIFFE ID is among allowed.
	clientConfig(allowed ...spiffeid.ID) *tls.Config
}

// mtlsAcrossRotation is the X.509 use case between workloads on loopback, with the SPIFFE IDs
// ids["frontend"], ids["backend"] and ids["intruder"]: mutual authentication, authorization by
// SPIFFE ID (the backend sees the frontend's; the intruder is refused in the handshake), and no
// failed request while the short-lived SVIDs rotate under both a kept-alive connection and fresh
// ones, for two SVID lifetimes; the backend's certificate changes meanwhile.
func mtlsAcrossRotation(t *testing.T, ids map[string]spiffeid.ID, frontend, backend, intruder mtlsWorkload) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", backend.serverConfig(ids["frontend"]))
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

	client := func(w mtlsWorkload, keepAlive bool) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig:   w.clientConfig(ids["backend"]),
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
	stop := time.Now().Add(2 * rotatingX509TTL * time.Second)
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

// goSPIFFETLS is a plain workload's mTLS with go-spiffe over the Workload API.
type goSPIFFETLS struct{ src *workloadapi.X509Source }

func (g goSPIFFETLS) serverConfig(allowed ...spiffeid.ID) *tls.Config {
	return tlsconfig.MTLSServerConfig(g.src, g.src, tlsconfig.AuthorizeOneOf(allowed...))
}

func (g goSPIFFETLS) clientConfig(allowed ...spiffeid.ID) *tls.Config {
	return tlsconfig.MTLSClientConfig(g.src, g.src, tlsconfig.AuthorizeOneOf(allowed...))
}

// source is an X509Source serving one of this process's identities on the suite's agent.
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
