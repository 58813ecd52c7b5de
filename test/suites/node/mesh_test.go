package node

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/node"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/workloads"
)

// sdsStatus reads what the Envoy stand-in in a meshed pod read and received.
func sdsStatus(ctx context.Context, p *corev1.Pod) (workloads.SDSStatus, error) {
	var st workloads.SDSStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:15021/standin/sds", p.Status.PodIP), nil)
	if err != nil {
		return st, err
	}
	r, err := httpc.Do(req)
	if err != nil {
		return st, err
	}
	defer r.Body.Close()
	return st, json.NewDecoder(r.Body).Decode(&st)
}

// TestMeshedPodAsIstioInjectsIt: a pod in a namespace both Istio and spire-mesh-injector serve is
// injected by Istio's own webhook (istio-proxy as a native sidecar, interception off: there is no
// iptables in the node's proxy image) and then wired by ours (the CSI volume where pilot-agent
// looks, WORKLOAD_IDENTITY_SOCKET_FILE). The kubelet runs Istio's real pilot-agent, which finds
// SPIRE's socket and writes Envoy's bootstrap; the Envoy stand-in reads it and streams `default`
// and `ROOTCA` over SDS from the socket the kubelet mounted; pilot-agent then reports the proxy
// ready and the kubelet starts the app. The SVID is the pod's registration's, verifies against
// ROOTCA, ROOTCA is SPIRE's bundle, and renewals arrive on the same stream.
func TestMeshedPodAsIstioInjectsIt(t *testing.T) {
	if !istioDeployed {
		if requireNode() {
			t.Fatal("Istio's injector is not in the chain: ISTIO_ASSETS is not set")
		}
		t.Skip("Istio's injector is not in the chain: ISTIO_ASSETS is not set")
	}
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "node-mesh", Labels: map[string]string{
		annotations.InjectionLabel: annotations.InjectionEnabled, "istio-injection": "enabled"}}}
	_, err := k8s.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = k8s.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{}) })
	require.NoError(t, cluster.WaitWired(ctx, ns.Name))
	serviceAccount(t, ns.Name, "frontend")
	// istiod publishes this ConfigMap in every namespace; there is no istiod here, so the suite does,
	// with SPIRE's bundle (pilot-agent only reads it to trust istiod, which it never calls here).
	bundle, err := cluster.TrustBundle(ctx)
	require.NoError(t, err)
	_, err = k8s.CoreV1().ConfigMaps(ns.Name).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-root-cert"},
		Data: map[string]string{"root-cert.pem": string(bundle)}}, metav1.CreateOptions{})
	require.NoError(t, err)

	p := workloadPod(ns.Name, "frontend", "frontend", "idle")
	p.Annotations = map[string]string{"sidecar.istio.io/interceptionMode": "NONE"}
	created := createPod(t, p)
	assert.NotEmpty(t, created.Annotations["sidecar.istio.io/status"], "Istio's webhook injected it")
	assert.Equal(t, string(annotations.ModeMesh), created.Labels[annotations.InjectedLabel], "ours wired it as a meshed pod")
	_, init, found := mutators.FindContainer(created, "istio-proxy")
	require.True(t, found, "istio-proxy")
	assert.True(t, init, "istio-proxy as a native sidecar")
	assert.True(t, hasCSIVolume(created), "the SPIFFE CSI volume")

	got := waitPod(t, ns.Name, p.Name, "Ready", 4*time.Minute, ready)
	var st workloads.SDSStatus
	require.NoError(t, proc.Poll(ctx, time.Minute, 500*time.Millisecond, "the Envoy stand-in's SDS status", func(ctx context.Context) (bool, error) {
		st, err = sdsStatus(ctx, got)
		return err == nil && st.DefaultUpdates > 0 && st.RootUpdates > 0, err
	}))
	assert.Equal(t, "./var/run/secrets/workload-spiffe-uds/spire-agent.sock", st.SDSPath, "pilot-agent's bootstrap points Envoy at SPIRE's socket, under the name the webhook set")
	assert.Equal(t, spiffeID(ns.Name, "frontend"), st.ID, "`default` is the pod's SVID")
	assert.True(t, st.Verified, "`default` verifies against ROOTCA: %s", st.LastError)
	assert.Equal(t, []string{node.TrustDomain}, st.TrustDomains)
	assert.True(t, sameCerts(t, bundle, []byte(st.RootPEM)), "ROOTCA is SPIRE's bundle")
	code, err := proc.GetStatus(ctx, fmt.Sprintf("http://%s:15021/healthz/ready", got.Status.PodIP))
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code, "pilot-agent reports the proxy ready")

	// Renewal arrives on the same SDS stream (2-minute SVIDs renew after a minute).
	first := st
	require.NoError(t, proc.Poll(ctx, 2*svidTTL, time.Second, "a renewed `default`", func(ctx context.Context) (bool, error) {
		st, err = sdsStatus(ctx, got)
		return err == nil && st.Serial != first.Serial, err
	}))
	assert.Equal(t, spiffeID(ns.Name, "frontend"), st.ID)
	assert.True(t, st.Verified, st.LastError)
	report("meshed pod: Envoy's SDS secrets from the kubelet-mounted socket", fmt.Sprintf("%s, %d versions of default, verified %v", st.ID, st.DefaultUpdates, st.Verified), "the pod's SVID, renewed", st.Verified && st.DefaultUpdates >= 2)
}

// sameCerts says the PEM bundles a and b hold the same certificates.
func sameCerts(t *testing.T, a, b []byte) bool {
	t.Helper()
	set := func(p []byte) map[string]bool {
		m := map[string]bool{}
		for {
			var block *pem.Block
			if block, p = pem.Decode(p); block == nil {
				return m
			}
			c, err := x509.ParseCertificate(block.Bytes)
			require.NoError(t, err)
			m[string(c.Raw)] = true
		}
	}
	return assert.ObjectsAreEqual(set(a), set(b))
}
