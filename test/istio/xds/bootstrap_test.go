package xds

import (
	"path/filepath"
	"testing"

	pm "istio.io/istio/pkg/model"
	"istio.io/istio/pkg/security"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
)

// TestBootstrapPointsEnvoyAtSPIRE: for a pod wired with ZTWIM's socket name and with Istio's
// default one, pilot-agent (Istio's own bootstrap code, fed with the wired istio-proxy's
// environment) looks for the Workload API socket exactly where the SPIFFE CSI volume publishes the
// SPIRE agent's, and writes Envoy a bootstrap whose SDS cluster sds-grpc is that socket. Istio
// before 1.23.6, 1.24.4 and 1.25.0 (istio#55047; OpenShift Service Mesh 3.0.0) wrote
// ".../workload-spiffe-uds/socket" whatever WORKLOAD_IDENTITY_SOCKET_FILE said: with
// spire-agent.sock, Envoy never got a certificate (docs/install-openshift.md states the minimum).
func TestBootstrapPointsEnvoyAtSPIRE(t *testing.T) {
	var orders object
	for _, o := range readObjects(t, testdataDir) {
		if o.Kind == "Deployment" && o.key() == "shop/orders" {
			orders = o
		}
	}
	for _, socket := range []string{config.DefaultSocketFileName, config.IstioDefaultSocketFileName} {
		t.Run(socket, func(t *testing.T) {
			cfg := webhookConfig(t, "socketFileName: "+socket)
			pod := wire(t, cfg, podOf(t, orders), "10.0.0.5")
			a := pilotAgent(t, cfg, pod)

			mount := volumeMount(istioProxy(t, cfg, pod), mutators.IstioSocketVolume)
			if mount != config.DefaultIstioSocketMountPath {
				t.Errorf("istio-proxy mounts the SPIFFE CSI volume at %q, pilot-agent looks in %s", mount, config.DefaultIstioSocketMountPath)
			}
			want := spireSocket(t, cfg, pod)
			if a.SocketFile != socket {
				t.Errorf("pilot-agent looks for socket file %q, the agent publishes %q", a.SocketFile, socket)
			}
			// pilot-agent's working directory is the container's root.
			if got := filepath.Join("/", security.GetWorkloadSDSSocketListenPath(a.SocketFile)); got != want {
				t.Errorf("pilot-agent looks for the Workload API at %s, the SPIRE agent's socket is %s", got, want)
			}
			if got := filepath.Join("/", staticClusterPipe(t, a.Bootstrap, pm.SDSClusterName)); got != want {
				t.Errorf("Envoy's %s cluster is %s, the SPIRE agent's socket is %s", pm.SDSClusterName, got, want)
			}
			if a.Node.Metadata.WorkloadIdentitySocketFile != socket {
				t.Errorf("node metadata WORKLOAD_IDENTITY_SOCKET_FILE = %q", a.Node.Metadata.WorkloadIdentitySocketFile)
			}
			// Having found SPIRE, pilot-agent serves only file credentials, on a socket of its own.
			if got := staticClusterPipe(t, a.Bootstrap, pm.SDSFileClusterName); got != security.FileCredentialNameSocketPath {
				t.Errorf("Envoy's %s cluster is %s, want pilot-agent's file socket %s", pm.SDSFileClusterName, got, security.FileCredentialNameSocketPath)
			}
		})
	}
}
