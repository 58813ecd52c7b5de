package envtest

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
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
	err := k8s.Get(ctx, types.NamespacedName{Name: identity.Name(ns)}, obj)
	return obj, err
}

// registeredNamespace creates an opted-in namespace and a first pod in it, and returns the
// namespace and the registration the webhook ensured before admitting the pod.
func registeredNamespace(t *testing.T) (string, *spirev1alpha1.ClusterSPIFFEID) {
	t.Helper()
	ctx := context.Background()
	ns := namespace(t, true, nil)
	require.NoError(t, k8s.Create(ctx, plainPod(ns, "app", nil)))
	csid, err := getCSID(ctx, ns)
	require.NoError(t, err)
	return ns, csid
}

// registrationGone says whether namespace ns's ClusterSPIFFEID is gone: the API server answers
// NotFound.
func registrationGone(ctx context.Context, ns string) bool {
	_, err := getCSID(ctx, ns)
	return apierrors.IsNotFound(err)
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

// wiredOnDryRun says whether a webhook wires p in a dry-run create, which leaves nothing behind:
// how a test sees that the API server calls a webhook configuration it was just given (its
// configuration informer needs a moment).
func wiredOnDryRun(ctx context.Context, p *corev1.Pod) bool {
	return k8s.Create(ctx, p, client.DryRunAll) == nil && p.Labels[annotations.InjectedLabel] != ""
}

// waitWebhookActive waits until the API server calls the suite's webhook.
func waitWebhookActive(ctx context.Context) error {
	ns := "webhook-probe"
	if err := createNamespace(ctx, ns, true); err != nil {
		return err
	}
	return proc.Poll(ctx, 30*time.Second, 100*time.Millisecond, "the API server calling the webhook", func(ctx context.Context) (bool, error) {
		return wiredOnDryRun(ctx, plainPod(ns, "probe", nil)), nil
	})
}

// createForTest creates obj and deletes it when the test ends (cluster-scoped objects outlive
// the test's namespaces).
func createForTest(t *testing.T, obj client.Object) {
	t.Helper()
	require.NoError(t, k8s.Create(context.Background(), obj), "%T %s", obj, obj.GetName())
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), obj) })
}

// update reads object name (in namespace ns, "" for a cluster-scoped one) into obj, applies change
// and writes it back.
func update(t *testing.T, obj client.Object, name, ns string, change func(client.Object)) {
	t.Helper()
	require.NoError(t, k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, obj))
	change(obj)
	require.NoError(t, k8s.Update(context.Background(), obj))
}

// warnings collects the admission warnings the API server relays to the client.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

// createCollectingWarnings creates obj as the control plane's admin and returns the admission
// warnings the API server relayed with the response.
func createCollectingWarnings(ctx context.Context, obj client.Object) ([]string, error) {
	w := &warnings{}
	cfg := rest.CopyConfig(cp.Config)
	cfg.WarningHandler = w
	c, err := client.New(cfg, client.Options{Scheme: registration.Scheme()})
	if err != nil {
		return nil, err
	}
	err = c.Create(ctx, obj)
	return w.list, err
}

// createFailingOpen creates p in a namespace where the webhook fails open on a registration
// problem: the pod is admitted (failurePolicy Ignore) and wired all the same, with a warning,
// which it returns.
func createFailingOpen(t *testing.T, ctx context.Context, p *corev1.Pod) string {
	t.Helper()
	warns, err := createCollectingWarnings(ctx, p)
	require.NoError(t, err, "failurePolicy Ignore admits the pod")
	assert.Equal(t, "workload", p.Labels[annotations.InjectedLabel], "wired all the same")
	require.NotEmpty(t, warns)
	return warns[0]
}

// podTemplate is a workload controller's selector and pod template for pods labelled labels and
// running spec.
func podTemplate(labels map[string]string, spec corev1.PodSpec) (*metav1.LabelSelector, corev1.PodTemplateSpec) {
	return &metav1.LabelSelector{MatchLabels: labels}, corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec}
}

// ownedByReplicaSet gives p the owner reference a ReplicaSet's controller gives the pods it
// creates.
func ownedByReplicaSet(p *corev1.Pod, name string, uid types.UID) {
	controller := true
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: name, UID: uid, Controller: &controller}}
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

// callCounter records the path of every API request a server makes (watches included): what a
// test needs to see which resources a replica asks for. It counts nothing: the API server counts
// requests (apicalls_test.go's countRequestsOf).
type callCounter struct {
	mu    sync.Mutex
	paths []string
}

// sawPath says whether the server requested a path containing s.
func (c *callCounter) sawPath(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.paths {
		if strings.Contains(p, s) {
			return true
		}
	}
	return false
}

func (c *callCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		c.mu.Lock()
		c.paths = append(c.paths, r.URL.Path)
		c.mu.Unlock()
		return rt.RoundTrip(r)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
