package realspire

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
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

	driver := startCSIDriver(t, agent.SocketDir, filepath.Join(workDir, "csi"))

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
			pod.Name = tc.fixture
			mount, readOnly := mountPath(t, pod, tc.container, tc.volume)
			assert.True(t, readOnly)
			c, _, _ := mutators.FindContainer(pod, tc.container)
			target := driver.publish(t, pod, tc.volume)

			// The container's view: the volume at its mount, i.e. the target on the host.
			inContainer := tc.socketPath(c, mount)
			rel, ok := strings.CutPrefix(inContainer, mount)
			require.True(t, ok, "the socket %s is inside the mount %s", inContainer, mount)
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
