package xds

import (
	"path/filepath"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"istio.io/istio/pilot/pkg/simulation"
	"istio.io/istio/pilot/test/xdstest"
	pm "istio.io/istio/pkg/model"
	corev1 "k8s.io/api/core/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
)

// appPort is the port the sample workloads serve HTTP on (their Services' targetPort).
const appPort = 8080

// TestInboundMTLSUsesSPIRE: under manifests/x509's STRICT PeerAuthentication, every wired pod in
// namespace shop accepts requests only over mutual TLS, presenting the certificate `default` and
// trusting `ROOTCA`, both fetched by Envoy over SDS from the cluster whose endpoint pilot-agent's
// bootstrap makes the SPIRE agent's socket in the pod's CSI volume: never a certificate, key or CA
// from istiod, from files, or inline.
func TestInboundMTLSUsesSPIRE(t *testing.T) {
	m := newMesh(t)
	for _, app := range []string{"orders", "payments", "frontend"} {
		t.Run(app, func(t *testing.T) {
			proxy := m.proxy(t, "shop", app)
			if _, err := m.inbound(t, proxy, appPort, simulation.Plaintext); err == nil {
				t.Errorf("a plain-text request to %s:%d is accepted under STRICT", app, appPort)
			}
			h, err := m.inbound(t, proxy, appPort, simulation.MTLS)
			if err != nil {
				t.Fatalf("a mutual-TLS request to %s:%d is refused: %v", app, appPort, err)
			}
			requireSPIRETLS(t, m, "shop", app, downstreamTLS(t, h.Chain))
		})
	}
}

// TestOutboundMTLSVerifiesSPIREIdentity: frontend's requests to orders and payments leave over
// mutual TLS to every endpoint (Istio's auto mTLS: they are meshed), presenting frontend's SPIRE
// certificate and validating the server with SPIRE's ROOTCA, both over SDS from the SPIRE agent, and
// accept only a server certificate that carries the SPIFFE ID our registration gives that service's
// pods. Istio computes that name itself (trust domain and the pods' service account): were it not the
// ID SPIRE issues, every call would fail the handshake.
func TestOutboundMTLSVerifiesSPIREIdentity(t *testing.T) {
	m := newMesh(t)
	proxy := m.proxy(t, "shop", "frontend")
	for app, other := range map[string]string{"orders": "payments", "payments": "orders"} {
		h := m.outbound(t, proxy, app+".shop.svc.cluster.local", "", 80, simulation.HTTP)
		c := xdstest.ExtractCluster(h.Cluster, m.server.Clusters(proxy))
		for _, ep := range m.endpoints(t, proxy, h.Cluster) {
			ts := transportSocketFor(c, ep)
			if ts.GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" {
				t.Errorf("frontend → %s: plain text (%s) to %v", app, ts.GetName(), ep.GetEndpoint().GetAddress())
				continue
			}
			common := xdstest.UnmarshalAny[tlsv3.UpstreamTlsContext](t, ts.GetTypedConfig()).GetCommonTlsContext()
			requireCommonTLSFromSPIRE(t, m, "shop", "frontend", common)
			//lint:ignore SA1019 Istio generates the server SAN check in this field.
			sans := common.GetCombinedValidationContext().GetDefaultValidationContext().GetMatchSubjectAltNames()
			if id := m.spiffeID(t, "shop", app); len(sans) == 0 || !sansAccept(t, sans, id) {
				t.Errorf("frontend → %s: server SANs %v do not require %s", app, sans, id)
			}
			if id := m.spiffeID(t, "shop", other); sansAccept(t, sans, id) {
				t.Errorf("frontend → %s: server SANs %v accept %s", app, sans, id)
			}
		}
	}
}

// requireSPIRETLS checks an inbound TLS context of workload ns/app: client certificates required,
// the certificate and the trust from the SPIRE agent over SDS, nothing else.
func requireSPIRETLS(t *testing.T, m *mesh, ns, app string, ctx *tlsv3.DownstreamTlsContext) {
	t.Helper()
	if ctx == nil {
		t.Fatalf("%s/%s: no TLS on the inbound filter chain", ns, app)
	}
	if !ctx.GetRequireClientCertificate().GetValue() {
		t.Errorf("%s/%s: client certificates are not required", ns, app)
	}
	requireCommonTLSFromSPIRE(t, m, ns, app, ctx.GetCommonTlsContext())
}

// requireCommonTLSFromSPIRE checks that workload ns/app's side of a TLS connection presents the
// certificate `default` and validates the peer with `ROOTCA`, both over SDS from the SPIRE agent,
// and nothing inline.
func requireCommonTLSFromSPIRE(t *testing.T, m *mesh, ns, app string, common *tlsv3.CommonTlsContext) {
	t.Helper()
	if len(common.GetTlsCertificates()) > 0 {
		t.Errorf("%s/%s: inline certificates: %v", ns, app, common.GetTlsCertificates())
	}
	certs := common.GetTlsCertificateSdsSecretConfigs()
	if len(certs) != 1 {
		t.Fatalf("%s/%s: %d SDS certificates, want one", ns, app, len(certs))
	}
	requireSecretFromSPIRE(t, m, ns, app, certs[0], pm.SDSDefaultResourceName)
	combined := common.GetCombinedValidationContext()
	if combined == nil {
		t.Fatalf("%s/%s: no combined validation context (peer certificates not validated over SDS): %v", ns, app, common.GetValidationContextType())
	}
	if dv := combined.GetDefaultValidationContext(); dv.GetTrustedCa() != nil || dv.GetCustomValidatorConfig() != nil {
		t.Errorf("%s/%s: trust not only from SDS: %v", ns, app, dv)
	}
	requireSecretFromSPIRE(t, m, ns, app, combined.GetValidationContextSdsSecretConfig(), pm.SDSRootResourceName)
}

// requireSecretFromSPIRE checks that Envoy fetches secret name over SDS (gRPC, set node on the
// first message only, as Istio configures it) from a cluster that pilot-agent's bootstrap points at
// the SPIRE agent's socket.
func requireSecretFromSPIRE(t *testing.T, m *mesh, ns, app string, sc *tlsv3.SdsSecretConfig, name string) {
	t.Helper()
	if sc.GetName() != name {
		t.Errorf("%s/%s: SDS secret %q, want %q", ns, app, sc.GetName(), name)
	}
	api := sc.GetSdsConfig().GetApiConfigSource()
	if api.GetApiType() != core.ApiConfigSource_GRPC || len(api.GetGrpcServices()) != 1 {
		t.Fatalf("%s/%s: secret %q is not fetched over SDS gRPC: %v", ns, app, name, sc.GetSdsConfig())
	}
	clusterName := api.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName()
	pipe := staticClusterPipe(t, m.agents[ns+"/"+app].Bootstrap, clusterName)
	if want := spireSocket(t, m.cfg, m.pod(t, ns, app)); filepath.Join("/", pipe) != want {
		t.Errorf("%s/%s: secret %q comes from cluster %q at %s, not from the SPIRE agent's socket %s", ns, app, name, clusterName, pipe, want)
	}
}

// spireSocket is where the SPIRE agent's Workload API socket is in the wired pod's istio-proxy:
// the SPIFFE CSI volume the webhook makes of Istio's workload-socket volume, at its mount path,
// with the socket file name the agent publishes.
func spireSocket(t *testing.T, cfg *config.Config, pod *corev1.Pod) string {
	t.Helper()
	for _, v := range pod.Spec.Volumes {
		if v.Name == mutators.IstioSocketVolume && (v.CSI == nil || v.CSI.Driver != cfg.CSIDriver) {
			t.Fatalf("%s/%s: volume %s is not the SPIFFE CSI driver's: %+v", pod.Namespace, pod.Name, v.Name, v.VolumeSource)
		}
	}
	mount := volumeMount(istioProxy(t, cfg, pod), mutators.IstioSocketVolume)
	if mount == "" {
		t.Fatalf("%s/%s: istio-proxy does not mount %s", pod.Namespace, pod.Name, mutators.IstioSocketVolume)
	}
	return filepath.Join(mount, cfg.SocketFileName)
}

// staticClusterPipe is the unix socket path of the one endpoint of the bootstrap's static cluster.
func staticClusterPipe(t *testing.T, bootstrap map[string]any, name string) string {
	t.Helper()
	resources, _ := bootstrap["static_resources"].(map[string]any)
	clusters, _ := resources["clusters"].([]any)
	for _, c := range clusters {
		c, _ := c.(map[string]any)
		if c["name"] != name {
			continue
		}
		la, _ := c["load_assignment"].(map[string]any)
		eps, _ := la["endpoints"].([]any)
		if len(eps) != 1 {
			t.Fatalf("bootstrap cluster %s: %d endpoint groups", name, len(eps))
		}
		lbs, _ := eps[0].(map[string]any)["lb_endpoints"].([]any)
		if len(lbs) != 1 {
			t.Fatalf("bootstrap cluster %s: %d endpoints", name, len(lbs))
		}
		ep, _ := lbs[0].(map[string]any)["endpoint"].(map[string]any)
		addr, _ := ep["address"].(map[string]any)
		pipe, _ := addr["pipe"].(map[string]any)
		path, _ := pipe["path"].(string)
		if path == "" {
			t.Fatalf("bootstrap cluster %s is not a unix socket: %v", name, addr)
		}
		return path
	}
	t.Fatalf("the bootstrap has no static cluster %q", name)
	return ""
}
