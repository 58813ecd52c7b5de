package envtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlenvtest "sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/server"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
)

// TestCertificateRotationUnderLoad runs a replica with a certificate of its own CA, registered
// (failurePolicy Fail, so every webhook failure is a failed pod creation) for namespaces labelled
// rotation-test, and rotates its serving certificate three times while pods are created
// continuously: every creation succeeds and every pod is wired.
func TestCertificateRotationUnderLoad(t *testing.T) {
	ctx := context.Background()
	r := startReplica(t, cp.Config, leaseNamespace, "rotation-test")
	ns := namespace(t, false, nil)
	r.serve(t, ns)
	eventually(t, "the rotation webhook is active", func() bool { return wiredOnDryRun(ctx, plainPod(ns, "probe", nil)) })

	var created, failed, unwired atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				p := plainPod(ns, fmt.Sprintf("load-%d-%d", w, i), nil)
				if err := k8s.Create(ctx, p); err != nil {
					failed.Add(1)
					t.Logf("creation failed: %v", err)
					continue
				}
				created.Add(1)
				if p.Labels[annotations.InjectedLabel] == "" {
					unwired.Add(1)
				}
			}
		})
	}
	for serial := int64(3); serial <= 5; serial++ {
		time.Sleep(time.Second)
		r.ca.Issue(t, r.certDir, serial)
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", r.port), &tls.Config{InsecureSkipVerify: true})
	require.NoError(t, err)
	assert.Equal(t, int64(5), conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64(), "the last certificate is served")
	conn.Close()
	assert.Zero(t, failed.Load(), "failed admissions")
	assert.Zero(t, unwired.Load(), "pods admitted unwired")
	assert.Greater(t, created.Load(), int64(20))
	t.Logf("MEASURE certificate rotated 3 times under load: %d pods created, %d failed", created.Load(), failed.Load())
}

// TestRegistrationRepairedAfterCRDOutage removes the ClusterSPIFFEID CRD (as an operator
// reinstalling SPIRE might): pods are still admitted wired (failurePolicy Ignore) with a warning, an
// Event on the namespace and the metric naming the cause; once the CRD is back, the reconciler
// creates the missing registration without anyone touching the pod.
func TestRegistrationRepairedAfterCRDOutage(t *testing.T) {
	ctx := context.Background()
	crdDir, err := controlplane.SCMCRDDir()
	require.NoError(t, err)
	scheme := registration.Scheme()
	require.NoError(t, apiextensionsv1.AddToScheme(scheme))
	admin, err := client.New(cp.Config, client.Options{Scheme: scheme})
	require.NoError(t, err)
	crd := &apiextensionsv1.CustomResourceDefinition{}
	require.NoError(t, admin.Get(ctx, client.ObjectKey{Name: "clusterspiffeids.spire.spiffe.io"}, crd))
	require.NoError(t, admin.Delete(ctx, crd))
	restored := false
	restore := func() {
		if restored {
			return
		}
		restored = true
		_, err := ctrlenvtest.InstallCRDs(cp.Config, ctrlenvtest.CRDInstallOptions{Paths: []string{filepath.Join(crdDir, "spire.spiffe.io_clusterspiffeids.yaml")}})
		require.NoError(t, err)
	}
	t.Cleanup(restore)
	eventually(t, "the CRD is gone", func() bool {
		err := admin.Get(ctx, client.ObjectKey{Name: "clusterspiffeids.spire.spiffe.io"}, &apiextensionsv1.CustomResourceDefinition{})
		return apierrors.IsNotFound(err)
	})

	ns := namespace(t, true, nil)
	before := metricSum(t, "spire_mesh_injector_registration_ensures_total", map[string]string{"reason": registration.ReasonCRDMissing})
	assert.Contains(t, createFailingOpen(t, ctx, plainPod(ns, "during-outage", nil)), "the ClusterSPIFFEID CRD")
	assert.Greater(t, metricSum(t, "spire_mesh_injector_registration_ensures_total", map[string]string{"reason": registration.ReasonCRDMissing}), before)
	waitNamespaceWarning(t, ns, "Registration"+registration.ReasonCRDMissing)

	// A replica started now, without the CRD, starts and serves all the same (it used to fail
	// to start: its controller's cache could not sync).
	defer func(d time.Duration) { server.CRDPollInterval = d }(server.CRDPollInterval)
	server.CRDPollInterval = 200 * time.Millisecond
	counter := &callCounter{}
	rcfg := rest.CopyConfig(cp.Config)
	rcfg.WrapTransport = counter.wrap
	r := startReplica(t, rcfg, "crd-outage-lease", "crd-outage-test") // waits until it is ready
	late := namespace(t, true, nil)
	r.serve(t, late)
	p2 := plainPod(late, "replica-during-outage", nil)
	_, err = createCollectingWarnings(ctx, p2)
	require.NoError(t, err)
	assert.Equal(t, "workload", p2.Labels[annotations.InjectedLabel])
	require.False(t, counter.sawPath("/api/v1/pods"), "no registration controller without the CRD")

	restore()
	require.Eventually(t, func() bool {
		_, err := getCSID(ctx, ns)
		return err == nil
	}, 60*time.Second, 200*time.Millisecond, "the reconciler creates the registration once the CRD is back")
	// The replica finds the CRD and sets its registration index and controller up: the controller
	// (leader of its own lease) watches wired pods.
	require.Eventually(t, func() bool {
		return counter.sawPath("/apis/spire.spiffe.io/v1alpha1/clusterspiffeids") && counter.sawPath("/api/v1/pods")
	}, 30*time.Second, 100*time.Millisecond, "the replica sets registrations up once the CRD is served")
	late2 := namespace(t, true, nil)
	r.serve(t, late2)
	warns, err := createCollectingWarnings(ctx, plainPod(late2, "replica-after-outage", nil))
	require.NoError(t, err)
	assert.Empty(t, warns, "no warning once the CRD is back")
	_, err = getCSID(ctx, late2)
	require.NoError(t, err, "registration ensured at admission")
}
