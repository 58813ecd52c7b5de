package registration

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

// TestRegistrationWithoutWiredPodsGoes: a registration of an opted-in namespace that no wired pod
// uses (asked for by a review that never became a pod, or left when the namespace was scaled to
// zero) is removed once it has gone unused for UnusedGrace; one a wired pod uses stays.
func TestRegistrationWithoutWiredPodsGoes(t *testing.T) {
	c := cfg(t, "")
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "uid-n1", Labels: map[string]string{
		identity.NamespaceNameLabel: "n1", annotations.InjectionLabel: annotations.InjectionEnabled}}}
	reg, err := Build(c, "n1", ns)
	require.NoError(t, err)
	k8s := fake.NewClientBuilder().WithScheme(Scheme()).WithObjects(ns, reg).Build()
	r := NewReconciler(c, k8s, record.NewFakeRecorder(10), NewMetrics(prometheus.NewRegistry()))
	now := time.Now()
	r.now = func() time.Time { return now }
	req := reconcile.Request{NamespacedName: types.NamespacedName{Name: "n1"}}
	exists := func() bool {
		err := k8s.Get(context.Background(), client.ObjectKey{Name: identity.Name("n1")}, &spirev1alpha1.ClusterSPIFFEID{})
		return err == nil
	}

	res, err := r.Reconcile(context.Background(), req)
	require.NoError(t, err)
	assert.Equal(t, UnusedGrace, res.RequeueAfter, "first seen unused: looked at again after the grace")
	assert.True(t, exists())

	now = now.Add(UnusedGrace / 2)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "n1", Labels: map[string]string{annotations.InjectedLabel: "workload"}}}
	require.NoError(t, k8s.Create(context.Background(), pod))
	res, err = r.Reconcile(context.Background(), req)
	require.NoError(t, err)
	assert.Zero(t, res.RequeueAfter)
	assert.True(t, exists(), "a wired pod uses it")

	require.NoError(t, k8s.Delete(context.Background(), pod))
	res, err = r.Reconcile(context.Background(), req)
	require.NoError(t, err)
	assert.Equal(t, UnusedGrace, res.RequeueAfter, "the grace starts again when the last wired pod goes")
	now = now.Add(UnusedGrace)
	_, err = r.Reconcile(context.Background(), req)
	require.NoError(t, err)
	assert.False(t, exists(), "unused for the whole grace: removed")
}
