package envtest

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
)

func caPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.CA)
	return pool
}

// createNamespace creates namespace name, opted in or not, unless it exists (replicas and tests
// share some).
func createNamespace(ctx context.Context, name string, optedIn bool) error {
	if err := k8s.Create(ctx, controlplane.Namespace(name, optedIn, nil)); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// namespace creates a fresh namespace, opted in or not, for one test.
func namespace(t *testing.T, optedIn bool, ann map[string]string) string {
	t.Helper()
	name := fmt.Sprintf("t-%s-%04d", strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))[:min(30, len(t.Name()))], rand.IntN(10000))
	name = strings.Trim(strings.ReplaceAll(name, "--", "-"), "-")
	require.NoError(t, k8s.Create(context.Background(), controlplane.Namespace(name, optedIn, ann)))
	return name
}

// plainPod is a pod without a proxy. No scheduler or kubelet runs here: pods are only stored.
func plainPod(ns, name string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			ServiceAccountName: "default",
			Containers:         []corev1.Container{{Name: "app", Image: "quay.io/example/app:1"}},
		},
	}
}

func getCSID(ctx context.Context, ns string) (*spirev1alpha1.ClusterSPIFFEID, error) {
	obj := &spirev1alpha1.ClusterSPIFFEID{}
	err := k8s.Get(ctx, types.NamespacedName{Name: registration.Name(ns)}, obj)
	return obj, err
}

// eventually polls cond until it holds or the time is up.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 20*time.Second, 50*time.Millisecond, what)
}

// metricSum adds up every series of a counter in the server's registry.
func metricSum(t *testing.T, name string, match map[string]string) float64 {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	require.NoError(t, err)
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if labelsMatch(m, match) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func labelsMatch(m *dto.Metric, match map[string]string) bool {
	for k, v := range match {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == k && l.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// waitWebhookActive waits until the API server calls the webhook (its configuration informer
// has the new MutatingWebhookConfiguration), using dry-run creates that leave nothing behind.
func waitWebhookActive(ctx context.Context) error {
	ns := "webhook-probe"
	if err := createNamespace(ctx, ns, true); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		p := plainPod(ns, "probe", nil)
		if err := k8s.Create(ctx, p, client.DryRunAll); err == nil && p.Labels[annotations.InjectedLabel] != "" {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the API server never called the webhook")
}

// waitNamespaceWarning waits for a Warning Event with reason on Namespace ns. Events about a
// cluster-scoped object are stored in "default".
func waitNamespaceWarning(t *testing.T, ns, reason string) {
	t.Helper()
	eventually(t, "a Warning "+reason+" Event on namespace "+ns, func() bool {
		var events corev1.EventList
		require.NoError(t, k8s.List(context.Background(), &events, client.InNamespace("default")))
		for _, e := range events.Items {
			if e.InvolvedObject.Kind == "Namespace" && e.InvolvedObject.Name == ns && e.Reason == reason && e.Type == corev1.EventTypeWarning {
				return true
			}
		}
		return false
	})
}
