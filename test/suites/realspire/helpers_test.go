package realspire

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/spire"
)

// requireRoot is for tests that must act as the kubelet (mounts) or run a workload as another
// user: both need root. Without root such a test skips, unless SMI_REQUIRE_SPIRE says the suite
// must run (make test sets it): then it fails and says why, so that CI cannot pass by skipping.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	const why = "needs root: it runs a workload under its own UID (the unix workload attestor's selector) or bind-mounts like the kubelet"
	if os.Getenv(requireEnv) != "" {
		t.Fatalf("%s, and %s is set: run the suite as root", why, requireEnv)
	}
	t.Skip(why)
}

// requireEnv makes the suite's tests fail, rather than skip, when they cannot run.
const requireEnv = "SMI_REQUIRE_SPIRE"

var (
	buildOnce sync.Once
	helperBin string
	buildErr  error
)

// helperBinary builds cmd/spiffe-jwt-helper once, as shipped: the tests run the real binary.
func helperBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		helperBin, buildErr = controlplane.Build(workDir, "./cmd/spiffe-jwt-helper")
	})
	require.NoError(t, buildErr)
	return helperBin
}

var uidMu sync.Mutex
var nextUID = 40000

// workloadUID returns a UID of its own for one test workload, so the unix workload attestor tells
// it apart (selector unix:uid:<uid>).
func workloadUID() int {
	uidMu.Lock()
	defer uidMu.Unlock()
	nextUID++
	return nextUID
}

// register creates an entry for spiffeID with selectors under the suite's agent. The agent serves
// it after its next sync (every few seconds): callers wait for it (waitSVID).
func register(t *testing.T, spiffeID string, selectors []string, x509TTL, jwtTTL int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, server.CreateEntry(ctx, agent.ID, spiffeID, selectors, x509TTL, jwtTTL))
}

// registerSelf gives this test process (selector unix:uid:<our uid>) identities: it then fetches
// bundles and plays workloads that run in-process.
func registerSelf(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		register(t, id, []string{"unix:uid:" + strconv.Itoa(os.Getuid())}, 0, 0)
	}
}

// waitSVID waits until the Workload API at addr serves an X.509-SVID with id to this process.
func waitSVID(t *testing.T, addr string, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	var found *x509svid.SVID
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(addr))
		if err != nil {
			return false
		}
		for _, s := range svids {
			if s.ID == id {
				found = s
				return true
			}
		}
		return false
	}, 45*time.Second, 250*time.Millisecond, "the agent never served %s", id)
	return found
}

func freePort(t *testing.T) int {
	t.Helper()
	p, err := proc.FreePort()
	require.NoError(t, err)
	return p
}

func fetchJWTBundles(ctx context.Context) (*jwtbundle.Set, error) {
	return workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr(agent.Socket()))
}

func selfUID() int { return os.Getuid() }

// csiDriver is the real spiffe-csi-driver serving one agent's socket folder. The tests stand in
// for the kubelet and call it as the kubelet would (as root).
type csiDriver struct {
	node csi.NodeClient
	dir  string
	n    atomic.Int64
}

// startCSIDriver runs spiffe-csi-driver for the agent socket folder socketDir, with its files
// under dir, until the test ends.
func startCSIDriver(t *testing.T, socketDir, dir string) *csiDriver {
	t.Helper()
	require.NoError(t, os.MkdirAll(dir, 0o755))
	sock := filepath.Join(dir, "csi.sock")
	proc.StartT(t, filepath.Join(assets, "spiffe-csi-driver"), proc.Options{
		Args: []string{"-node-id", "node-1", "-csi-socket-path", sock, "-workload-api-socket-dir", socketDir}})
	require.Eventually(t, func() bool { _, err := os.Stat(sock); return err == nil }, 10*time.Second, 50*time.Millisecond)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return &csiDriver{node: csi.NewNodeClient(conn), dir: dir}
}

// publish publishes pod's CSI volume named volume, as the kubelet does before it starts the pod's
// containers, and returns the target path: what a container mounting the volume sees. The
// volume is unpublished when the test ends.
func (d *csiDriver) publish(t *testing.T, pod *corev1.Pod, volume string) string {
	t.Helper()
	var vol *corev1.Volume
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == volume {
			vol = &pod.Spec.Volumes[i]
		}
	}
	require.NotNil(t, vol, "volume %s", volume)
	require.NotNil(t, vol.CSI, "volume %s is a CSI volume", volume)
	// The kubelet's layout is pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount; a unix socket
	// path must stay under 108 bytes, so the stand-in keeps it short.
	n := d.n.Add(1)
	target := filepath.Join(d.dir, fmt.Sprint(n), "mount")
	require.NoError(t, os.MkdirAll(filepath.Dir(target), 0o750), "the kubelet creates the volume's folder; the driver creates the mount point")
	volumeID := fmt.Sprintf("csi-%s-%d", pod.Name, n)
	_, err := d.node.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId:   volumeID,
		TargetPath: target,
		VolumeCapability: &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			// The kubelet asks inline ephemeral volumes for SINGLE_NODE_WRITER; read-only comes from Readonly.
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		Readonly:      vol.CSI.ReadOnly != nil && *vol.CSI.ReadOnly,
		VolumeContext: map[string]string{"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.name": pod.Name, "csi.storage.k8s.io/pod.namespace": pod.Namespace},
	})
	require.NoError(t, err, "the driver accepts the webhook's volume (it refuses any that is not read-only)")
	t.Cleanup(func() {
		_, _ = d.node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: volumeID, TargetPath: target})
	})
	return target
}

// mountPath is where container c of pod mounts volume, and whether read-only.
func mountPath(t *testing.T, pod *corev1.Pod, container, volume string) (string, bool) {
	t.Helper()
	c, _, _ := mutators.FindContainer(pod, container)
	require.NotNil(t, c, "container %s", container)
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			return m.MountPath, m.ReadOnly
		}
	}
	t.Fatalf("%s mounts no volume %s", container, volume)
	return "", false
}

// meshPod is a mesh pod of service account sa in namespace ns, as it is stored once Istio's
// injector (native sidecar) and the webhook have run: mutators/testdata/native-sidecar.yaml
// through the webhook's chain under cfg.
func meshPod(t *testing.T, cfg *config.Config, ns, sa string) *corev1.Pod {
	t.Helper()
	_, pod := podtest.Load(t, filepath.Join(controlplane.Root(), "mutators", "testdata", "native-sidecar.yaml"))
	pod.Name, pod.Namespace = sa+"-7d4b9c8f6d-x2x4q", ns
	pod.Labels["app"] = sa
	pod.Spec.ServiceAccountName, pod.Spec.DeprecatedServiceAccount = sa, sa
	_, err := mutators.NewChain(cfg).Run(pod, mutators.Request{Namespace: ns})
	require.NoError(t, err)
	return pod
}

// spiffeIDOf is the SPIFFE ID the webhook's registration gives pod under cfg.
func spiffeIDOf(t *testing.T, cfg *config.Config, pod *corev1.Pod) spiffeid.ID {
	t.Helper()
	s, err := identity.SPIFFEID(cfg, pod)
	require.NoError(t, err)
	return spiffeid.RequireFromString(s)
}

// meshNode is a node for mesh workloads: a spire-agent of its own, attested to a server, and the
// real spiffe-csi-driver publishing that agent's socket folder into pods. Each Envoy of these
// tests runs on a node of its own because Envoy asks SPIRE for "default", which SPIRE resolves to
// the caller's first identity by entry ID: this test process, the caller on every node, must hold
// exactly one identity on each agent.
type meshNode struct {
	server *spire.Server
	agent  *spire.Agent
	csi    *csiDriver
}

// startMeshNode starts a node named name (its files under workDir/nodes/name) whose agent is
// attested to s and configured with o; it stops when the test ends.
func startMeshNode(t *testing.T, s *spire.Server, name string, o spire.AgentOptions) *meshNode {
	t.Helper()
	dir := filepath.Join(workDir, "nodes", name)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, err := spire.StartAgentWith(ctx, assets, filepath.Join(dir, "agent"), s, o)
	require.NoError(t, err)
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			t.Logf("spire-agent of node %s:\n%s", name, a.Log())
		}
	})
	return &meshNode{server: s, agent: a, csi: startCSIDriver(t, a.SocketDir, filepath.Join(dir, "csi"))}
}

// register gives this process, on this node only, the identity id (SVIDs lasting x509TTL seconds,
// 0 for the server's default), federating with federatesWith.
func (n *meshNode) register(t *testing.T, id spiffeid.ID, x509TTL int, federatesWith ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, n.server.Register(ctx, spire.Registration{ParentID: n.agent.ID, SPIFFEID: id.String(),
		Selectors: []string{"unix:uid:" + strconv.Itoa(selfUID())}, X509TTL: x509TTL, FederatesWith: federatesWith}))
}

// istioProxySocket publishes mesh pod's workload socket volume on this node and returns the
// address, on this host, of the socket where the pod's istio-proxy finds it: the volume's mount,
// Istio's workload-spiffe-uds folder, plus the file WORKLOAD_IDENTITY_SOCKET_FILE names. Envoy's
// sds-grpc cluster dials exactly that path (pilot-agent writes it into Envoy's bootstrap).
func (n *meshNode) istioProxySocket(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	mount, readOnly := mountPath(t, pod, config.DefaultProxyContainerName, mutators.IstioSocketVolume)
	assert.Equal(t, config.DefaultIstioSocketMountPath, mount, "istio-proxy's socket folder is where pilot-agent and Envoy's bootstrap look")
	assert.True(t, readOnly)
	proxy, _, _ := mutators.FindContainer(pod, config.DefaultProxyContainerName)
	file := env(proxy, mutators.EnvIstioSocketFile)
	require.NotEmpty(t, file, "istio-proxy has %s", mutators.EnvIstioSocketFile)
	require.False(t, strings.Contains(file, "/"), "pilot-agent takes a bare file name")
	return "unix://" + filepath.Join(n.csi.publish(t, pod, mutators.IstioSocketVolume), file)
}
