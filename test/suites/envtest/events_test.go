package envtest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/webhook"
)

// TestDenialEventOnTheController: a pod a ReplicaSet creates does not exist when it is denied; the
// Event goes to the ReplicaSet, where `kubectl describe` shows it beside FailedCreate.
func TestDenialEventOnTheController(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t, true, nil)
	selector, template := podTemplate(map[string]string{"app": "web"}, corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "quay.io/example/web:1"}}})
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web-5d4f8", Namespace: ns},
		Spec:       appsv1.ReplicaSetSpec{Selector: selector, Template: template},
	}
	require.NoError(t, k8s.Create(ctx, rs))
	pod := plainPod(ns, "web-5d4f8-abcde", map[string]string{"app": "web"})
	ownedByReplicaSet(pod, rs.Name, rs.UID)
	pod.Annotations = map[string]string{annotations.AudienceAnnotation: "payments,,orders"}
	err := k8s.Create(ctx, pod)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "metadata.annotation spiffe.io/audience: audience 2 is empty")

	eventually(t, "a Warning Event on the ReplicaSet names the field", func() bool {
		var events corev1.EventList
		require.NoError(t, k8s.List(ctx, &events, client.InNamespace(ns)))
		for _, e := range events.Items {
			if e.InvolvedObject.Kind == "ReplicaSet" && e.InvolvedObject.Name == rs.Name && e.InvolvedObject.UID == rs.UID &&
				e.Reason == webhook.EventDenied && e.Type == corev1.EventTypeWarning {
				return assert.Contains(t, e.Message, "audience 2 is empty")
			}
		}
		return false
	})
}
