package registration

import (
	"testing"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
)

// The cache transforms keep exactly what registration reads, and accept what they already
// transformed (client-go may apply them twice).

func TestSlimPodKeepsItsName(t *testing.T) {
	p := WiredPods()
	p.ObjectMeta = metav1.ObjectMeta{Name: "p", Namespace: "n1", UID: "u", ResourceVersion: "7",
		Labels: map[string]string{annotations.InjectedLabel: "mesh", "app": "a"}, Annotations: map[string]string{"big": "x"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}}
	want := metav1.ObjectMeta{Name: "p", Namespace: "n1", ResourceVersion: "7"}
	for range 2 {
		got, err := slimPod(p)
		require.NoError(t, err)
		assert.Equal(t, want, got.(*metav1.PartialObjectMetadata).ObjectMeta)
	}
	tombstone := "not an object"
	got, err := slimPod(tombstone)
	require.NoError(t, err)
	assert.Equal(t, tombstone, got)
}

func TestSlimNamespaceKeepsWhatRegistrationReads(t *testing.T) {
	now := metav1.Now()
	m := namespaceMeta()
	m.ObjectMeta = metav1.ObjectMeta{Name: "n1", UID: "uid-n1", ResourceVersion: "9", DeletionTimestamp: &now,
		Labels: map[string]string{annotations.InjectionLabel: annotations.InjectionEnabled, "kubernetes.io/metadata.name": "n1"},
		Annotations: map[string]string{
			annotations.FederatesWithAnnotation:       "partner.example",
			"openshift.io/sa.scc.uid-range":           "1000680000/10000",
			"kubectl.kubernetes.io/last-applied-conf": "{...}",
		},
		Finalizers: []string{"x"}, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}
	want := metav1.ObjectMeta{Name: "n1", UID: "uid-n1", ResourceVersion: "9", DeletionTimestamp: &now,
		Labels:      map[string]string{annotations.InjectionLabel: annotations.InjectionEnabled, "kubernetes.io/metadata.name": "n1"},
		Annotations: map[string]string{annotations.FederatesWithAnnotation: "partner.example"}}
	for range 2 {
		got, err := slimNamespace(m)
		require.NoError(t, err)
		assert.Equal(t, want, got.(*metav1.PartialObjectMetadata).ObjectMeta)
	}
	bare := namespaceMeta()
	bare.Name = "n2"
	got, err := slimNamespace(bare)
	require.NoError(t, err)
	assert.Nil(t, got.(*metav1.PartialObjectMetadata).Annotations)
}

func TestSlimClusterSPIFFEIDIsSemanticallyUnchanged(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "uid-n1"}}
	ours, err := Build(cfg(t, "registration:\n  federatesWith: [partner.example]\n"), "n1", ns)
	require.NoError(t, err)
	ours.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "spire-mesh-injector"}}
	ours.Status = spirev1alpha1.ClusterSPIFFEIDStatus{Stats: spirev1alpha1.ClusterSPIFFEIDStats{EntriesMasked: 1}}
	theirs := ours.DeepCopy()
	theirs.Name, theirs.Labels = "theirs", nil

	for _, tt := range []struct {
		name   string
		obj    *spirev1alpha1.ClusterSPIFFEID
		shared bool
	}{{"ours", ours, true}, {"somebody else's", theirs, false}} {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.obj.DeepCopy()
			want.ManagedFields, want.Status = nil, spirev1alpha1.ClusterSPIFFEIDStatus{}
			for range 2 {
				got, err := slimClusterSPIFFEID(tt.obj)
				require.NoError(t, err)
				c := got.(*spirev1alpha1.ClusterSPIFFEID)
				assert.True(t, equality.Semantic.DeepEqual(want, c), "only status and managed fields go")
				assert.Equal(t, tt.shared, c.Spec.PodSelector == sharedPodSelector, "the pod selector is shared only by ours")
			}
			// What the cache hands out is a deep copy: changing it leaves the shared selector alone.
			cp := tt.obj.DeepCopy()
			cp.Spec.PodSelector.MatchExpressions[0].Values[0] = "changed"
			assert.Equal(t, string(annotations.ModeMesh), sharedPodSelector.MatchExpressions[0].Values[0])
		})
	}
}
