package realspire

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
)

// TestWebhookWiringReachesRealSPIRE takes the CSI volume the webhook puts into a pod, publishes it
// with the real spiffe-csi-driver (this test stands in for the kubelet and calls NodePublishVolume
// as root, as the kubelet would), and fetches an X.509-SVID and a JWT-SVID through the mounted
// socket at exactly the path and file name the webhook set: SPIFFE_ENDPOINT_SOCKET for a plain
// pod, istio-proxy's mount plus WORKLOAD_IDENTITY_SOCKET_FILE for a mesh pod (where pilot-agent
// looks).
func TestWebhookWiringReachesRealSPIRE(t *testing.T) {
	requireRoot(t)
	self := spiffeid.RequireFromString("spiffe://" + trustDomain + "/ns/shop/sa/cart")
	registerSelf(t, self.String())
	waitSVID(t, agent.Socket(), self)

	csiDir := filepath.Join(workDir, "csi")
	require.NoError(t, os.MkdirAll(csiDir, 0o755))
	csiSock := filepath.Join(csiDir, "csi.sock")
	proc.StartT(t, filepath.Join(assets, "spiffe-csi-driver"), proc.Options{
		Args: []string{"-node-id", "node-1", "-csi-socket-path", csiSock, "-workload-api-socket-dir", agent.SocketDir}})
	require.Eventually(t, func() bool { _, err := os.Stat(csiSock); return err == nil }, 10*time.Second, 50*time.Millisecond)
	conn, err := grpc.NewClient("unix://"+csiSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	node := csi.NewNodeClient(conn)

	cfg := podtest.Config(t)
	require.Equal(t, config.DefaultSocketFileName, cfg.SocketFileName, "the agent's socket is named like ZTWIM's")
	for _, tc := range []struct {
		fixture, volume, container, namespace string
		socketPath                            func(c *corev1.Container, mountPath string) string
	}{
		{fixture: "plain-workload", volume: mutators.WorkloadAPIVolume, container: "billing", namespace: "payments",
			socketPath: func(c *corev1.Container, _ string) string {
				return strings.TrimPrefix(env(c, contract.EnvEndpointSocket), "unix://")
			}},
		{fixture: "native-sidecar", volume: mutators.IstioSocketVolume, container: "istio-proxy", namespace: "shop",
			socketPath: func(c *corev1.Container, mountPath string) string {
				return mountPath + "/" + env(c, mutators.EnvIstioSocketFile)
			}},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			_, pod := podtest.Load(t, filepath.Join(controlplane.Root(), "mutators", "testdata", tc.fixture+".yaml"))
			_, err := mutators.NewChain(cfg).Run(pod, mutators.Request{Namespace: tc.namespace})
			require.NoError(t, err)
			var vol *corev1.Volume
			for i := range pod.Spec.Volumes {
				if pod.Spec.Volumes[i].Name == tc.volume {
					vol = &pod.Spec.Volumes[i]
				}
			}
			require.NotNil(t, vol)
			require.NotNil(t, vol.CSI)
			c, _, _ := mutators.FindContainer(pod, tc.container)
			var mountPath string
			for _, m := range c.VolumeMounts {
				if m.Name == tc.volume {
					mountPath = m.MountPath
					assert.True(t, m.ReadOnly)
				}
			}
			require.NotEmpty(t, mountPath)

			// The kubelet's part: publish the pod's CSI volume at its target path.
			// The kubelet's layout is pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount; a unix
			// socket path must stay under 108 bytes, so the stand-in keeps it short.
			target := filepath.Join(workDir, "k", tc.volume[:4], "mount")
			require.NoError(t, os.MkdirAll(filepath.Dir(target), 0o750), "the kubelet creates the volume's folder; the driver creates the mount point")
			_, err = node.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
				VolumeId:   "csi-" + tc.fixture,
				TargetPath: target,
				VolumeCapability: &csi.VolumeCapability{
					AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
					// The kubelet asks inline ephemeral volumes for SINGLE_NODE_WRITER; read-only comes from Readonly.
					AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
				},
				Readonly:      *vol.CSI.ReadOnly,
				VolumeContext: map[string]string{"csi.storage.k8s.io/ephemeral": "true", "csi.storage.k8s.io/pod.name": tc.fixture, "csi.storage.k8s.io/pod.namespace": tc.namespace},
			})
			require.NoError(t, err, "the driver accepts the webhook's volume (it refuses any that is not read-only)")
			t.Cleanup(func() {
				_, _ = node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-" + tc.fixture, TargetPath: target})
			})

			// The container's view: the volume at mountPath, i.e. the target on the host.
			inContainer := tc.socketPath(c, mountPath)
			rel, ok := strings.CutPrefix(inContainer, mountPath)
			require.True(t, ok, "the socket %s is inside the mount %s", inContainer, mountPath)
			addr := "unix://" + target + rel
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(addr))
			require.NoError(t, err)
			var found bool
			for _, s := range svids {
				if s.ID == self {
					found = true
					require.Len(t, s.Certificates[0].URIs, 1)
					assert.Equal(t, self.String(), s.Certificates[0].URIs[0].String(), "the SPIFFE ID is the URI SAN")
				}
			}
			assert.True(t, found, "X.509-SVID %s through the published socket", self)
			jwt, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "orders", Subject: self}, workloadapi.WithAddr(addr))
			require.NoError(t, err)
			assert.Equal(t, self, jwt.ID)
		})
	}
}

func env(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}
