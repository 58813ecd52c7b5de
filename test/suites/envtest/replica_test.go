package envtest

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/spire-mesh-injector/spire-mesh-injector/server"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/certs"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
)

// replica is another replica of the real server, with a serving certificate of its own CA (so a
// test can rotate it), registered — with failurePolicy Fail, so any webhook failure is a failed
// pod creation — for the namespaces labelled <label>=true.
type replica struct {
	port    int
	certDir string
	ca      *certs.CA
	label   string
}

// startReplica starts the replica with restCfg, electing its leader in leaseNS, and registers it.
func startReplica(t *testing.T, restCfg *rest.Config, leaseNS, label string) *replica {
	t.Helper()
	ctx := context.Background()
	r := &replica{port: freePort(), label: label}
	r.ca, r.certDir = certs.NewServing(t, label+" CA")
	require.NoError(t, createNamespace(ctx, leaseNS, false))
	sctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	srv, err := controlplane.StartServer(sctx, testConfig, server.Options{RestConfig: restCfg, Host: "127.0.0.1", Port: r.port, CertDir: r.certDir,
		MetricsAddr: "0", LeaderElection: true, LeaderElectionNamespace: leaseNS,
		Log: zap.New(zap.WriteTo(io.Discard))})
	require.NoError(t, err)
	go func() {
		<-srv.Done()
		if err := srv.Err(); err != nil && sctx.Err() == nil {
			t.Errorf("replica %s stopped: %v", label, err)
		}
	}()
	t.Cleanup(func() { cancel(); <-srv.Done() })

	mwc, err := controlplane.WebhookConfiguration(fmt.Sprintf("https://127.0.0.1:%d", r.port), r.ca.PEM)
	require.NoError(t, err)
	mwc.Name = "spire-mesh-injector-" + label
	fail := admissionregistrationv1.Fail
	mwc.Webhooks[0].FailurePolicy = &fail
	mwc.Webhooks[0].NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{label: "true"}}
	createForTest(t, mwc)
	return r
}

// serve labels namespace ns so that the API server sends its pods to the replica.
func (r *replica) serve(t *testing.T, ns string) {
	t.Helper()
	update(t, &corev1.Namespace{}, ns, "", func(o client.Object) { o.GetLabels()[r.label] = "true" })
}
