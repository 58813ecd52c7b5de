package realspire

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/spire"
)

// TestSDSAsEnvoyCallsIt calls the SPIRE agent's SDS server as an Istio sidecar's Envoy calls it
// (sdsWatch: one StreamSecrets stream per secret, a current Envoy's node, ACKs), through the socket
// the real spiffe-csi-driver publishes where the webhook mounts it for istio-proxy, for exactly
// the secrets Istio configures: `default` is an X.509-SVID whose URI SAN is the SPIFFE ID our
// registration renders for the pod, with its key; `ROOTCA` is the trust domain's bundle in a
// SPIFFE validator configuration, and the SVID verifies against it. An Envoy older than 1.18 is
// answered differently: `ROOTCA` as trusted_ca.
func TestSDSAsEnvoyCallsIt(t *testing.T) {
	requireRoot(t)
	cfg := podtest.Config(t)
	pod := meshPod(t, cfg, "shop", "cart")
	id := spiffeIDOf(t, cfg, pod)
	node := startMeshNode(t, server, "sds", spire.AgentOptions{})
	node.register(t, id, 0)
	conn := dialSDS(t, node.istioProxySocket(t, pod))

	envoy := envoySidecar(t, conn, envoyNode(pod, currentEnvoy))
	svid := envoy.svid.waitAccepted(t)
	roots := envoy.roots.waitAccepted(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	authorities, err := server.X509Authorities(ctx)
	require.NoError(t, err)

	assert.Equal(t, istioSVIDName, svid.secret.GetName())
	require.NotNil(t, svid.cert, "`default` is a TLS certificate: chain and matching key")
	assert.Equal(t, id.String(), svid.leafID(), "the URI SAN is the SPIFFE ID the registration renders")
	assert.False(t, svid.cert.Leaf.IsCA)

	assert.Equal(t, istioRootName, roots.secret.GetName())
	assert.Equal(t, spiffeValidatorName, roots.secret.GetValidationContext().GetCustomValidatorConfig().GetName(),
		"an Envoy of 1.18 or later gets the SPIFFE certificate validator")
	assert.Equal(t, []string{trustDomain}, roots.trustDomains(), "ROOTCA holds the agent's own trust domain")
	assert.True(t, sameCertificates(authorities, roots.bundles[spiffeid.RequireTrustDomainFromString(trustDomain)]),
		"ROOTCA's bundle is the server's")
	peer, err := roots.verifyPeer(svid.chain())
	require.NoError(t, err, "the SVID verifies against ROOTCA")
	assert.Equal(t, id, peer)

	old := watchSecret(t, conn, envoyNode(pod, oldEnvoy), istioRootName).waitAccepted(t)
	assert.Nil(t, old.secret.GetValidationContext().GetCustomValidatorConfig(), "no SPIFFE validator for Envoy < 1.18")
	assert.True(t, sameCertificates(authorities, old.trustedCA), "Envoy < 1.18 gets the bundle as trusted_ca")
	peer, err = old.verifyPeer(svid.chain())
	require.NoError(t, err)
	assert.Equal(t, id, peer)

	// Every response was ACKed with its version and nonce: the agent, which serves only these
	// streams, logged no rejected version and no error reported by the client. A stale nonce is
	// only an ACK that crossed the agent's next push on the wire, which xDS allows (the agent
	// ignores it and says so): the nonce it names must be one the agent sent.
	log, err := node.agent.FullLog()
	require.NoError(t, err)
	assert.Empty(t, logLines(log, "Client rejected expected version", "Envoy reported errors applying secrets"))
	for _, line := range logLines(log, "Received unexpected nonce") {
		_, after, _ := strings.Cut(line, " nonce=")
		nonce, _, _ := strings.Cut(after, " ")
		_, sent := sdsNonces.Load(nonce)
		assert.True(t, sent, "a request with a nonce the agent never sent: %s", line)
	}
}

// logLines are the lines of log that hold any of substrings.
func logLines(log []byte, substrings ...string) []string {
	var lines []string
	for _, line := range strings.Split(string(log), "\n") {
		for _, s := range substrings {
			if strings.Contains(line, s) {
				lines = append(lines, line)
				break
			}
		}
	}
	return lines
}

// TestSDSROOTCAWithFederation shows what an Envoy sidecar trusts when its namespace federates
// with a partner trust domain: two SPIRE servers federated both ways over their bundle endpoints
// (https_spiffe, as manifests/federation configures it), the pod's entry federating with the
// partner as our registration renders it for a namespace annotated for federation. Under SPIRE's
// SDS defaults, `ROOTCA` (all Istio asks for) holds the local trust domain only, and the
// federated bundle comes only under `ALL`; a partner workload is refused in the handshake. Under
// the documented settings (sds { default_svid_name = "default", default_bundle_name = "null",
// default_all_bundles_name = "ROOTCA" }), `ROOTCA` holds both trust domains, follows the partner's
// bundle as its endpoint serves it, and the partner workload is accepted; `ALL` is then no name
// at all, and an Envoy older than 1.18 gets no `ROOTCA`.
func TestSDSROOTCAWithFederation(t *testing.T) {
	requireRoot(t)
	const partnerTD = "partner.example"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// A server of its own for the local trust domain: the suite's server federates with nobody.
	local := startServer(t, "fed-local", trustDomain, spire.ServerOptions{BundleEndpoint: true})
	partner := startServer(t, "fed-partner", partnerTD, spire.ServerOptions{BundleEndpoint: true})
	require.NoError(t, local.FederateWith(ctx, partner))
	require.NoError(t, partner.FederateWith(ctx, local))

	// The local pod, in a namespace annotated to federate with the partner (manifests/federation).
	cfg := podtest.Config(t)
	spec, err := identity.DesiredSpec(cfg, "payments", map[string]string{annotations.FederatesWithAnnotation: partnerTD})
	require.NoError(t, err)
	require.Equal(t, []string{partnerTD}, spec.FederatesWith)
	pod := meshPod(t, cfg, "payments", "checkout")
	id := spiffeIDOf(t, cfg, pod)

	// The partner's workload, registered there as our registration would with the partner's trust
	// domain, federating back.
	partnerCfg, err := config.Parse([]byte("trustDomain: " + partnerTD + "\nclusterName: partner\n"))
	require.NoError(t, err)
	partnerPod := meshPod(t, partnerCfg, "billing", "api")
	partnerID := spiffeIDOf(t, partnerCfg, partnerPod)
	partnerNode := startMeshNode(t, partner, "fed-partner", spire.AgentOptions{SDS: &spire.IstioSDS})
	partnerNode.register(t, partnerID, 0, trustDomain)
	partnerEnvoy := envoySidecar(t, dialSDS(t, partnerNode.istioProxySocket(t, partnerPod)), envoyNode(partnerPod, currentEnvoy))

	localAuthorities, err := local.X509Authorities(ctx)
	require.NoError(t, err)
	partnerAuthorities, err := partner.X509Authorities(ctx)
	require.NoError(t, err)
	localTD, remoteTD := spiffeid.RequireTrustDomainFromString(trustDomain), spiffeid.RequireTrustDomainFromString(partnerTD)
	both := []string{trustDomain, partnerTD}

	conns := map[string]*grpc.ClientConn{}
	envoys := map[string]*envoyTLS{}
	for name, o := range map[string]spire.AgentOptions{"defaults": {}, "documented": {SDS: &spire.IstioSDS}} {
		n := startMeshNode(t, local, "fed-"+name, o)
		n.register(t, id, int(spec.TTL.Seconds()), spec.FederatesWith...)
		conns[name] = dialSDS(t, n.istioProxySocket(t, pod))
		envoys[name] = envoySidecar(t, conns[name], envoyNode(pod, currentEnvoy))
	}
	// The partner's sidecar trusts the local trust domain once its agent has the local bundle:
	// from then on, a refused handshake is the local sidecar's refusal.
	partnerEnvoy.roots.waitFor(t, "both trust domains", func(s *sdsSecret) bool { return slices.Equal(both, s.trustDomains()) })
	assert.Equal(t, partnerID.String(), partnerEnvoy.svid.waitAccepted(t).leafID())
	// handshake has the partner's workload call the local one through the sidecar on node name,
	// whose authorization policy allows the partner's SPIFFE ID.
	handshake := func(name string) error {
		return tlsHandshake(t, envoys[name].serverConfig(partnerID), partnerEnvoy.clientConfig(id))
	}

	t.Run("SPIRE defaults", func(t *testing.T) {
		e := envoys["defaults"]
		assert.Equal(t, id.String(), e.svid.waitAccepted(t).leafID())
		// The federated bundle reaches the agent with the entry's next sync: ALL shows when.
		all := watchSecret(t, conns["defaults"], envoyNode(pod, currentEnvoy), spire.SPIREDefaultSDS.DefaultAllBundlesName).
			waitFor(t, "both trust domains", func(s *sdsSecret) bool { return slices.Equal(both, s.trustDomains()) })
		assert.True(t, sameCertificates(localAuthorities, all.bundles[localTD]))
		assert.True(t, sameCertificates(partnerAuthorities, all.bundles[remoteTD]))

		// The agent holds the partner's bundle now, and ROOTCA still has the local trust domain
		// only: on the stream opened before, and on one opened now.
		assert.Equal(t, []string{trustDomain}, e.roots.current().trustDomains())
		roots := watchSecret(t, conns["defaults"], envoyNode(pod, currentEnvoy), istioRootName).waitAccepted(t)
		assert.Equal(t, []string{trustDomain}, roots.trustDomains())
		assert.True(t, sameCertificates(localAuthorities, roots.bundles[localTD]))

		err := handshake("defaults")
		require.Error(t, err, "a partner workload is refused")
		assert.Contains(t, err.Error(), partnerTD, "for want of the partner's bundle")
	})

	t.Run("documented settings", func(t *testing.T) {
		e := envoys["documented"]
		assert.Equal(t, id.String(), e.svid.waitAccepted(t).leafID())
		roots := e.roots.waitFor(t, "both trust domains", func(s *sdsSecret) bool { return slices.Equal(both, s.trustDomains()) })
		assert.Equal(t, istioRootName, roots.secret.GetName())
		assert.True(t, sameCertificates(localAuthorities, roots.bundles[localTD]))
		assert.True(t, sameCertificates(partnerAuthorities, roots.bundles[remoteTD]))
		require.NoError(t, handshake("documented"), "a partner workload is accepted")

		// The partner's bundle changes (its next X.509 authority is prepared and published); the
		// local server fetches it from the partner's bundle endpoint; ROOTCA follows on the stream.
		require.NoError(t, partner.PrepareX509Authority(ctx))
		updated, err := partner.X509Authorities(ctx)
		require.NoError(t, err)
		require.Len(t, updated, len(partnerAuthorities)+1)
		require.NoError(t, local.RefreshBundle(ctx, partnerTD))
		e.roots.waitFor(t, "the partner's new authority", func(s *sdsSecret) bool { return sameCertificates(updated, s.bundles[remoteTD]) })

		// ALL is no name any more, and an Envoy too old for the SPIFFE validator cannot be given
		// several trust domains: SPIRE ends both streams.
		err = watchSecret(t, conns["documented"], envoyNode(pod, currentEnvoy), spire.SPIREDefaultSDS.DefaultAllBundlesName).waitRefused(t, 0)
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		assert.Contains(t, err.Error(), spire.SPIREDefaultSDS.DefaultAllBundlesName)
		err = watchSecret(t, conns["documented"], envoyNode(pod, oldEnvoy), istioRootName).waitRefused(t, 0)
		assert.Equal(t, codes.Internal, status.Code(err), "%v", err)
		assert.Contains(t, err.Error(), "SPIFFE validator")
	})
}

// startServer starts a SPIRE server of its own for one test, with its files under workDir/name.
func startServer(t *testing.T, name, td string, o spire.ServerOptions) *spire.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := spire.StartServer(ctx, assets, filepath.Join(workDir, name), td, o)
	require.NoError(t, err)
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("spire-server %s:\n%s", name, s.Log())
		}
	})
	return s
}

// tlsHandshake runs one TLS handshake on loopback between a server and a client configuration
// and returns the server's verdict (in TLS 1.3 the client is done before the server has checked
// its certificate), or the client's if it refused first.
func tlsHandshake(t *testing.T, server, client *tls.Config) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	serverErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		serverErr <- tls.Server(c, server).Handshake()
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), client)
	if err == nil {
		// Read the server's verdict: a refusal arrives as an alert on the first read.
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
	if sErr := <-serverErr; sErr != nil {
		return sErr
	}
	return err
}

// sameCertificates reports whether a and b hold the same certificates, in any order.
func sameCertificates(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		found := false
		for _, y := range b {
			found = found || x.Equal(y)
		}
		if !found {
			return false
		}
	}
	return true
}
