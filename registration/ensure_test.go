package registration

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/record"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

func scheme(t *testing.T) *runtime.Scheme {
	s := runtime.NewScheme()
	require.NoError(t, clientgoscheme.AddToScheme(s))
	require.NoError(t, spirev1alpha1.AddToScheme(s))
	return s
}

func managedIndexFunc(o client.Object) []string {
	if o.GetLabels()[identity.ManagedByLabel] == identity.ManagedByValue {
		return []string{"true"}
	}
	return []string{"false"}
}

func wiredPod(ns string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns, Labels: map[string]string{annotations.InjectedLabel: "workload"}},
		Spec: corev1.PodSpec{ServiceAccountName: "sa"}}
}

func newEnsurer(t *testing.T, funcs interceptor.Funcs, objs ...client.Object) (*Ensurer, client.Client, *record.FakeRecorder) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "uid-n1", Labels: map[string]string{"kubernetes.io/metadata.name": "n1", "team": "a", annotations.InjectionLabel: annotations.InjectionEnabled}}}
	off := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "off", UID: "uid-off", Labels: map[string]string{"kubernetes.io/metadata.name": "off"}}}
	objs = append(objs, off)
	c := fake.NewClientBuilder().WithScheme(scheme(t)).WithObjects(append(objs, ns)...).
		WithIndex(&spirev1alpha1.ClusterSPIFFEID{}, ManagedIndex, managedIndexFunc).
		WithInterceptorFuncs(funcs).Build()
	rec := record.NewFakeRecorder(10)
	return NewEnsurer(cfg(t, ""), c, c, rec, NewMetrics(prometheus.NewRegistry())), c, rec
}

func TestEnsureCreatesOnceThenReadsOnly(t *testing.T) {
	var creates atomic.Int32
	e, c, _ := newEnsurer(t, interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.CreateOption) error {
		creates.Add(1)
		time.Sleep(20 * time.Millisecond) // concurrent admissions pile up behind the first
		return c.Create(ctx, o, opts...)
	}})
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() { _, err := e.Ensure(context.Background(), "n1", wiredPod("n1")); assert.NoError(t, err) })
	}
	wg.Wait()
	assert.Equal(t, int32(1), creates.Load(), "one create for concurrent admissions")
	got := &spirev1alpha1.ClusterSPIFFEID{}
	require.NoError(t, c.Get(context.Background(), client.ObjectKey{Name: "spire-mesh-injector-n1"}, got))
	assert.Equal(t, "uid-n1", string(got.OwnerReferences[0].UID))
	require.NoError(t, ensure(t, e, context.Background(), "n1", wiredPod("n1")))
	assert.Equal(t, int32(1), creates.Load(), "steady state: no write")
	assert.Equal(t, 1.0, testutil.ToFloat64(e.metrics.ensures.WithLabelValues("created", "")))
}

// TestEnsureWritesNothingForNamespacesNotOptedIn: a review may come from anyone who can reach the
// webhook's port. For a namespace the cache does not show opted in (not labelled, or unknown), no
// registration is created and no Event recorded; the skip is counted.
func TestEnsureWritesNothingForNamespacesNotOptedIn(t *testing.T) {
	var writes atomic.Int32
	e, c, rec := newEnsurer(t, interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.CreateOption) error {
		writes.Add(1)
		return c.Create(ctx, o, opts...)
	}})
	for _, ns := range []string{"off", "never-created"} {
		require.NoError(t, ensure(t, e, context.Background(), ns, wiredPod(ns)), ns)
		assert.False(t, e.Serves(ns), ns)
	}
	assert.True(t, e.Serves("n1"))
	assert.Zero(t, writes.Load())
	list := &spirev1alpha1.ClusterSPIFFEIDList{}
	require.NoError(t, c.List(context.Background(), list))
	assert.Empty(t, list.Items)
	assert.Empty(t, rec.Events)
	assert.Equal(t, 2.0, testutil.ToFloat64(e.metrics.ensures.WithLabelValues("skipped", ReasonNotOptedIn)))
}

func TestEnsureErrorsSayWhatIsMissing(t *testing.T) {
	gr := schema.GroupResource{Group: "spire.spiffe.io", Resource: "clusterspiffeids"}
	tests := []struct {
		name   string
		create error
		objs   []client.Object
		reason string
		msg    string
	}{
		{name: "CRD missing", create: apierrors.NewNotFound(gr, ""), reason: ReasonCRDMissing, msg: "the ClusterSPIFFEID CRD (clusterspiffeids.spire.spiffe.io/v1alpha1) is not installed"},
		{name: "forbidden", create: apierrors.NewForbidden(gr, "spire-mesh-injector-n1", errors.New("no RBAC")), reason: ReasonForbidden, msg: "may not create clusterspiffeids.spire.spiffe.io (apply the RBAC in kustomize/base)"},
		{name: "API down", create: apierrors.NewServiceUnavailable("etcd"), reason: ReasonAPIError, msg: "creating ClusterSPIFFEID spire-mesh-injector-n1"},
		{name: "name taken by an object not ours", objs: []client.Object{&spirev1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: "spire-mesh-injector-n1"}}},
			reason: ReasonConflict, msg: "exists but is not managed by spire-mesh-injector"},
		{name: "another registration selects the pod", objs: []client.Object{&spirev1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: "theirs"},
			Spec: spirev1alpha1.ClusterSPIFFEIDSpec{ClassName: "zero-trust-workload-identity-manager-spire", SPIFFEIDTemplate: "spiffe://example.org/x/{{ .PodMeta.Name }}",
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}}}},
			reason: ReasonConflict, msg: `ClusterSPIFFEID theirs (className "zero-trust-workload-identity-manager-spire", not managed by spire-mesh-injector) already selects this pod with SPIFFE ID "spiffe://example.org/x/p"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, _, rec := newEnsurer(t, interceptor.Funcs{Create: func(ctx context.Context, c client.WithWatch, o client.Object, opts ...client.CreateOption) error {
				if tt.create != nil {
					return tt.create
				}
				return c.Create(ctx, o, opts...)
			}}, tt.objs...)
			_, err := e.Ensure(context.Background(), "n1", wiredPod("n1"))
			var ee *EnsureError
			require.ErrorAs(t, err, &ee)
			assert.Equal(t, tt.reason, ee.Reason)
			assert.Contains(t, err.Error(), "ClusterSPIFFEID spire-mesh-injector-n1 for namespace n1 could not be ensured")
			assert.Contains(t, err.Error(), tt.msg)
			assert.Equal(t, 1.0, testutil.ToFloat64(e.metrics.ensures.WithLabelValues("error", tt.reason)))
			select {
			case ev := <-rec.Events:
				assert.Contains(t, ev, "Warning Registration"+tt.reason)
			default:
				t.Fatal("no Event")
			}
		})
	}
}

func TestNoConflictWith(t *testing.T) {
	for name, other := range map[string]spirev1alpha1.ClusterSPIFFEIDSpec{
		"a fallback":                  {ClassName: "zero-trust-workload-identity-manager-spire", SPIFFEIDTemplate: "spiffe://example.org/x", Fallback: true},
		"another class":               {ClassName: "other", SPIFFEIDTemplate: "spiffe://example.org/x"},
		"the same identity and entry": {ClassName: "zero-trust-workload-identity-manager-spire", SPIFFEIDTemplate: "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}", JWTTTL: metav1.Duration{Duration: 5 * time.Minute}},
		"a pod selector not matched":  {ClassName: "zero-trust-workload-identity-manager-spire", SPIFFEIDTemplate: "spiffe://example.org/x", PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}},
		"a namespace not matched":     {ClassName: "zero-trust-workload-identity-manager-spire", SPIFFEIDTemplate: "spiffe://example.org/x", NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "b"}}},
	} {
		t.Run(name, func(t *testing.T) {
			e, _, _ := newEnsurer(t, interceptor.Funcs{}, &spirev1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: "theirs"}, Spec: other})
			require.NoError(t, ensure(t, e, context.Background(), "n1", wiredPod("n1")))
		})
	}
}

// TestMaskingIsAWarning: another registration of the class that gives the pod the same SPIFFE ID
// with another spec makes the same SPIRE entry; spire-controller-manager keeps the older one's spec
// and drops ours silently. The pod is admitted (it gets its identity), with a warning naming the
// other registration and what differs, and the registration of ours is still created.
func TestMaskingIsAWarning(t *testing.T) {
	theirs := &spirev1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: "hand-written", CreationTimestamp: metav1.NewTime(time.Now().Add(-time.Hour))},
		Spec: spirev1alpha1.ClusterSPIFFEIDSpec{ClassName: "zero-trust-workload-identity-manager-spire", TTL: metav1.Duration{Duration: time.Hour},
			SPIFFEIDTemplate: "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"}}
	e, c, _ := newEnsurer(t, interceptor.Funcs{}, theirs)
	warnings, err := e.Ensure(context.Background(), "n1", wiredPod("n1"))
	require.NoError(t, err)
	assert.Equal(t, []string{"older ClusterSPIFFEID hand-written masks this pod's entry (other ttl, jwtTtl)"}, warnings)
	require.NoError(t, c.Get(context.Background(), client.ObjectKey{Name: "spire-mesh-injector-n1"}, &spirev1alpha1.ClusterSPIFFEID{}))
	assert.Equal(t, 1.0, testutil.ToFloat64(e.metrics.masked))
}

// TestFederationHeldBack: a trust domain no ClusterFederatedTrustDomain of the class names is left
// out of the registration (SPIRE would refuse every entry that names it), with a warning; one that
// has its ClusterFederatedTrustDomain is written.
func TestFederationHeldBack(t *testing.T) {
	cftd := &spirev1alpha1.ClusterFederatedTrustDomain{ObjectMeta: metav1.ObjectMeta{Name: "partner"},
		Spec: spirev1alpha1.ClusterFederatedTrustDomainSpec{TrustDomain: "partner.example", ClassName: "zero-trust-workload-identity-manager-spire",
			BundleEndpointURL: "https://partner.example:8443", BundleEndpointProfile: spirev1alpha1.BundleEndpointProfile{Type: "https_web"}}}
	otherClass := cftd.DeepCopy()
	otherClass.Name, otherClass.Spec.TrustDomain, otherClass.Spec.ClassName = "bank", "bank.example", "someone-else"
	e, c, rec := newEnsurer(t, interceptor.Funcs{}, cftd, otherClass)
	update := func(ns *corev1.Namespace) {
		ns.Annotations = map[string]string{annotations.FederatesWithAnnotation: "partner.example,bank.example,tyop.example"}
	}
	ns := &corev1.Namespace{}
	require.NoError(t, c.Get(context.Background(), client.ObjectKey{Name: "n1"}, ns))
	update(ns)
	require.NoError(t, c.Update(context.Background(), ns))

	warnings, err := e.Ensure(context.Background(), "n1", wiredPod("n1"))
	require.NoError(t, err)
	assert.Equal(t, []string{"not federating with bank.example,tyop.example yet: no ClusterFederatedTrustDomain of the class names it"}, warnings)
	got := &spirev1alpha1.ClusterSPIFFEID{}
	require.NoError(t, c.Get(context.Background(), client.ObjectKey{Name: "spire-mesh-injector-n1"}, got))
	assert.Equal(t, []string{"partner.example"}, got.Spec.FederatesWith)
	assert.Equal(t, 1.0, testutil.ToFloat64(e.metrics.federationHeldBack))
	require.Len(t, rec.Events, 1)
	assert.Contains(t, <-rec.Events, "Warning RegistrationFederationHeldBack not federating with bank.example,tyop.example yet")
}

// ensure calls e.Ensure and returns its error, failing on any warning (these tests' namespaces ask
// for no federation and meet no other registration).
func ensure(t *testing.T, e *Ensurer, ctx context.Context, ns string, pod *corev1.Pod) error {
	t.Helper()
	warnings, err := e.Ensure(ctx, ns, pod)
	assert.Empty(t, warnings)
	return err
}
