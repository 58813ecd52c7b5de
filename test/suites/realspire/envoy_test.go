package realspire

// The suite's stand-in for Envoy, which cannot run here (its C++ data path needs a built Envoy and
// Istio's control plane to configure it): sdsWatch is Envoy's SDS client as Istio's configuration
// makes Envoy use it against the SPIRE agent's socket, and envoyTLS the TLS transport socket Envoy
// builds from the secrets it streams. What they talk to is real: the SPIRE agent's SDS server on
// the socket the SPIFFE CSI driver publishes where the webhook mounts it for istio-proxy.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/certs"
	"github.com/stretchr/testify/require"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
)

const (
	// istioSVIDName and istioRootName are the only SDS resources an Istio sidecar asks SPIRE for:
	// its certificate and its validation context on every inbound and ISTIO_MUTUAL listener and
	// cluster (Istio's pkg/model/authentication.go, SDSDefaultResourceName and SDSRootResourceName;
	// test/istio checks Istio's own config generation against them).
	istioSVIDName = "default"
	istioRootName = "ROOTCA"
	// spiffeValidatorName is Envoy's SPIFFE certificate validator extension (Envoy 1.18 and later).
	spiffeValidatorName = "envoy.tls.cert_validator.spiffe"
)

// secretTypeURL is the type of SDS resources, taken from the proto Envoy's SDS carries.
var secretTypeURL = "type.googleapis.com/" + string((&tlsv3.Secret{}).ProtoReflect().Descriptor().FullName())

// envoyVersion is an Envoy build as it reports itself to xDS servers.
type envoyVersion struct{ major, minor, patch uint32 }

var (
	// currentEnvoy is the Envoy of OSSM 3.1 (Istio 1.26): SPIRE answers it with SPIFFE validator
	// configurations.
	currentEnvoy = envoyVersion{1, 34, 6}
	// oldEnvoy predates Envoy's SPIFFE validator (1.18): SPIRE answers it with trusted_ca, and
	// cannot give it several trust domains in one validation context.
	oldEnvoy = envoyVersion{1, 17, 4}
)

// envoyNode is the node an Envoy sidecar of pod sends on its SDS streams: the id and cluster
// pilot-agent writes into Envoy's bootstrap, and the user agent Envoy fills in from its own build,
// which SPIRE reads (sdsv3 handler, supportsSPIFFEAuthExtension).
func envoyNode(pod *corev1.Pod, v envoyVersion) *corev3.Node {
	return &corev3.Node{
		Id:            fmt.Sprintf("sidecar~127.0.0.1~%s.%s~%s.svc.cluster.local", pod.Name, pod.Namespace, pod.Namespace),
		Cluster:       pod.Labels["app"] + "." + pod.Namespace,
		UserAgentName: "envoy",
		UserAgentVersionType: &corev3.Node_UserAgentBuildVersion{UserAgentBuildVersion: &corev3.BuildVersion{
			Version: &typev3.SemanticVersion{MajorNumber: v.major, MinorNumber: v.minor, Patch: v.patch}}},
	}
}

// dialSDS connects to an SDS server on the unix socket addr, as Envoy's sds-grpc cluster does
// (HTTP/2 over the socket, no TLS: the agent attests the caller from the socket's peer).
func dialSDS(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// sdsSecret is one version of a secret the watch accepted, decoded as Envoy uses it.
type sdsSecret struct {
	version string
	secret  *tlsv3.Secret
	// cert is a TLS certificate secret's chain and key.
	cert *tls.Certificate
	// bundles are a validation context's trust bundles by trust domain, under the SPIFFE
	// validator.
	bundles map[spiffeid.TrustDomain][]*x509.Certificate
	// trustedCA is a validation context's trusted_ca, without the SPIFFE validator.
	trustedCA []*x509.Certificate
}

// sdsWatch is one SDS subscription as Envoy makes it for a secret that its configuration names
// with an sds_config on the sds-grpc cluster: a StreamSecrets stream of its own for that one
// resource name (without ADS, Envoy opens one stream per secret: envoyproxy/envoy#10793); the node
// on the first request only (Istio's SDS configs set set_node_on_first_message_only); each
// response checked as Envoy checks a secret, then ACKed with its version and nonce, or NACKed with
// the last accepted version and an error detail; the last accepted secret kept in use whatever
// happens to the stream; and the stream reopened, with a backoff, when the server ends it.
type sdsWatch struct {
	name   string
	node   *corev3.Node
	client secretv3.SecretDiscoveryServiceClient

	mu sync.Mutex
	// accepted are the versions accepted, in order.
	accepted []*sdsSecret
	// errs counts the streams the server ended and the responses refused; lastErr is the latest.
	errs    int
	lastErr error
	changed chan struct{}
}

// watchSecret subscribes to secret name over conn as an Envoy with node does; the subscription
// ends with the test.
func watchSecret(t *testing.T, conn *grpc.ClientConn, node *corev3.Node, name string) *sdsWatch {
	t.Helper()
	w := &sdsWatch{name: name, node: node, client: secretv3.NewSecretDiscoveryServiceClient(conn), changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			w.mu.Lock()
			t.Logf("SDS %q: %d versions accepted, %d errors, last: %v", w.name, len(w.accepted), w.errs, w.lastErr)
			w.mu.Unlock()
		}
	})
	return w
}

func (w *sdsWatch) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for {
		err := w.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		w.failed(err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// stream runs one StreamSecrets stream until the server ends it.
func (w *sdsWatch) stream(ctx context.Context) error {
	st, err := w.client.StreamSecrets(ctx)
	if err != nil {
		return err
	}
	// A new stream carries the node again, and the version Envoy already holds.
	req := &discoveryv3.DiscoveryRequest{Node: w.node, TypeUrl: secretTypeURL, ResourceNames: []string{w.name}, VersionInfo: w.acceptedVersion()}
	for {
		if err := st.Send(req); err != nil {
			return err
		}
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		sdsNonces.Store(resp.GetNonce(), true)
		req = &discoveryv3.DiscoveryRequest{TypeUrl: secretTypeURL, ResourceNames: []string{w.name}, ResponseNonce: resp.GetNonce()}
		s, err := decodeSecret(w.name, resp)
		if err != nil {
			req.VersionInfo = w.acceptedVersion()
			req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
			w.failed(err)
			continue
		}
		req.VersionInfo = resp.GetVersionInfo()
		w.accept(s)
	}
}

// sdsNonces are the nonces of every SDS response an sdsWatch of this process received.
var sdsNonces sync.Map

func (w *sdsWatch) accept(s *sdsSecret) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.accepted = append(w.accepted, s)
	close(w.changed)
	w.changed = make(chan struct{})
}

func (w *sdsWatch) failed(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.errs++
	w.lastErr = err
}

func (w *sdsWatch) acceptedVersion() string {
	if s := w.current(); s != nil {
		return s.version
	}
	return ""
}

// current is the secret in use: the last version accepted, nil before the first.
func (w *sdsWatch) current() *sdsSecret {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.accepted) == 0 {
		return nil
	}
	return w.accepted[len(w.accepted)-1]
}

// history is every version accepted so far.
func (w *sdsWatch) history() []*sdsSecret {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.accepted)
}

// errors is how many streams ended or responses were refused so far, and the latest cause.
func (w *sdsWatch) errors() (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs, w.lastErr
}

// waitFor polls until the current secret satisfies ok, and returns it.
func (w *sdsWatch) waitFor(t *testing.T, what string, ok func(*sdsSecret) bool) *sdsSecret {
	t.Helper()
	var s *sdsSecret
	require.Eventually(t, func() bool { s = w.current(); return s != nil && ok(s) }, time.Minute, 100*time.Millisecond,
		"SDS %q: %s", w.name, what)
	return s
}

// waitAccepted waits for the first accepted version.
func (w *sdsWatch) waitAccepted(t *testing.T) *sdsSecret {
	t.Helper()
	return w.waitFor(t, "a first version accepted", func(*sdsSecret) bool { return true })
}

// waitRefused waits until the server has ended a stream (or a response was refused) after the
// errs errors counted before, and returns the cause.
func (w *sdsWatch) waitRefused(t *testing.T, errs int) error {
	t.Helper()
	var err error
	require.Eventually(t, func() bool {
		var n int
		n, err = w.errors()
		return n > errs
	}, time.Minute, 100*time.Millisecond, "SDS %q: refused", w.name)
	return err
}

// decodeSecret checks a response as Envoy's SDS subscription does (the type, exactly the secret
// asked for, the proto's validation rules) and decodes what Envoy's TLS context would load from
// it: the certificate chain and key, or the trust bundles.
func decodeSecret(name string, resp *discoveryv3.DiscoveryResponse) (*sdsSecret, error) {
	if resp.GetTypeUrl() != secretTypeURL {
		return nil, fmt.Errorf("response of type %q", resp.GetTypeUrl())
	}
	if len(resp.GetResources()) != 1 {
		return nil, fmt.Errorf("%d resources for secret %q", len(resp.GetResources()), name)
	}
	secret := &tlsv3.Secret{}
	if err := resp.GetResources()[0].UnmarshalTo(secret); err != nil {
		return nil, err
	}
	if secret.GetName() != name {
		return nil, fmt.Errorf("unexpected SDS secret (expecting %s): %s", name, secret.GetName())
	}
	if err := secret.ValidateAll(); err != nil {
		return nil, err
	}
	s := &sdsSecret{version: resp.GetVersionInfo(), secret: secret}
	switch {
	case secret.GetTlsCertificate() != nil:
		c := secret.GetTlsCertificate()
		cert, err := tls.X509KeyPair(c.GetCertificateChain().GetInlineBytes(), c.GetPrivateKey().GetInlineBytes())
		if err != nil {
			return nil, err
		}
		s.cert = &cert
	case secret.GetValidationContext() != nil:
		vc := secret.GetValidationContext()
		if custom := vc.GetCustomValidatorConfig(); custom != nil {
			if custom.GetName() != spiffeValidatorName {
				return nil, fmt.Errorf("certificate validator %q", custom.GetName())
			}
			cfg := &tlsv3.SPIFFECertValidatorConfig{}
			if err := custom.GetTypedConfig().UnmarshalTo(cfg); err != nil {
				return nil, err
			}
			s.bundles = map[spiffeid.TrustDomain][]*x509.Certificate{}
			for _, d := range cfg.GetTrustDomains() {
				td, err := spiffeid.TrustDomainFromString(d.GetName())
				if err != nil {
					return nil, err
				}
				if s.bundles[td], err = certs.ParsePEM(d.GetTrustBundle().GetInlineBytes()); err != nil {
					return nil, fmt.Errorf("trust domain %s: %w", td, err)
				}
			}
			break
		}
		var err error
		if s.trustedCA, err = certs.ParsePEM(vc.GetTrustedCa().GetInlineBytes()); err != nil {
			return nil, fmt.Errorf("trusted_ca: %w", err)
		}
	default:
		return nil, fmt.Errorf("secret %q holds neither a certificate nor a validation context", name)
	}
	return s, nil
}

// trustDomains are the trust domains of a validation context under the SPIFFE validator, sorted.
func (s *sdsSecret) trustDomains() []string {
	var tds []string
	for td := range s.bundles {
		tds = append(tds, td.Name())
	}
	slices.Sort(tds)
	return tds
}

// leafID is the SPIFFE ID in a TLS certificate secret's leaf: its URI SAN.
func (s *sdsSecret) leafID() string {
	if s.cert == nil || s.cert.Leaf == nil || len(s.cert.Leaf.URIs) != 1 {
		return ""
	}
	return s.cert.Leaf.URIs[0].String()
}

// chain is a TLS certificate secret's certificate chain.
func (s *sdsSecret) chain() []*x509.Certificate {
	var chain []*x509.Certificate
	for _, der := range s.cert.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil
		}
		chain = append(chain, c)
	}
	return chain
}

// verifyPeer checks a peer's certificate chain against this validation context as Envoy does:
// under the SPIFFE validator, against the bundle of the trust domain of the leaf's SPIFFE ID (one
// URI SAN, no CA); with trusted_ca, as a plain X.509 chain to those roots. It returns the peer's
// SPIFFE ID.
func (s *sdsSecret) verifyPeer(chain []*x509.Certificate) (spiffeid.ID, error) {
	if len(chain) == 0 {
		return spiffeid.ID{}, errors.New("no peer certificate")
	}
	if s.bundles != nil {
		var set []*x509bundle.Bundle
		for td, authorities := range s.bundles {
			set = append(set, x509bundle.FromX509Authorities(td, authorities))
		}
		id, _, err := x509svid.Verify(chain, x509bundle.NewSet(set...))
		return id, err
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range s.trustedCA {
		roots.AddCert(c)
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return spiffeid.ID{}, err
	}
	return x509svid.IDFromCert(chain[0])
}

// envoyTLS is the stand-in for an Envoy sidecar's TLS transport socket fed by SDS, as Istio
// configures it for STRICT inbound and ISTIO_MUTUAL outbound: its certificate from the `default`
// secret as it is now, the peer's chain verified against the `ROOTCA` validation context as it is
// now, and the peer's SPIFFE ID authorized exactly (Istio's RBAC principals inbound,
// match_subject_alt_names outbound). Secrets that change on the stream apply to the next
// handshake; established connections keep theirs, as in Envoy.
type envoyTLS struct{ svid, roots *sdsWatch }

// envoySidecar opens the two SDS subscriptions an Istio sidecar has, over conn, as node.
func envoySidecar(t *testing.T, conn *grpc.ClientConn, node *corev3.Node) *envoyTLS {
	t.Helper()
	return &envoyTLS{svid: watchSecret(t, conn, node, istioSVIDName), roots: watchSecret(t, conn, node, istioRootName)}
}

// ready waits until both secrets have arrived: until then Envoy keeps the listener or cluster
// warming.
func (e *envoyTLS) ready(t *testing.T) {
	t.Helper()
	e.svid.waitAccepted(t)
	e.roots.waitAccepted(t)
}

func (e *envoyTLS) certificate() (*tls.Certificate, error) {
	s := e.svid.current()
	if s == nil || s.cert == nil {
		return nil, errors.New("no certificate from SDS yet")
	}
	return s.cert, nil
}

// authorize returns the verification of a peer: its chain against ROOTCA, its SPIFFE ID among
// allowed.
func (e *envoyTLS) authorize(allowed []spiffeid.ID) func(raw [][]byte, _ [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		roots := e.roots.current()
		if roots == nil {
			return errors.New("no validation context from SDS yet")
		}
		chain := make([]*x509.Certificate, 0, len(raw))
		for _, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return err
			}
			chain = append(chain, c)
		}
		id, err := roots.verifyPeer(chain)
		if err != nil {
			return err
		}
		if !slices.Contains(allowed, id) {
			return fmt.Errorf("peer %s is not authorized", id)
		}
		return nil
	}
}

// serverConfig is an inbound listener's TLS: a client certificate is required, and allowed are
// the principals the authorization policy names.
func (e *envoyTLS) serverConfig(allowed ...spiffeid.ID) *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS12,
		ClientAuth:            tls.RequireAnyClientCert,
		GetCertificate:        func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return e.certificate() },
		VerifyPeerCertificate: e.authorize(allowed),
	}
}

// clientConfig is an outbound cluster's TLS: allowed are the SPIFFE IDs of the destination's
// workloads.
func (e *envoyTLS) clientConfig(allowed ...spiffeid.ID) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// SPIFFE IDs are not host names: the peer is verified against ROOTCA and authorized by
		// VerifyPeerCertificate instead of the host-name check.
		InsecureSkipVerify:    true,
		GetClientCertificate:  func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return e.certificate() },
		VerifyPeerCertificate: e.authorize(allowed),
	}
}
