package envtest

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
)

// TestValidatingPolicySafetyNet installs the validating-policy component as the cert-manager
// overlay renders it, then makes the webhook unreachable (failurePolicy Ignore): pods in opted-in
// namespaces are refused with a message naming the cause, pods elsewhere are created as usual;
// once the webhook is back, pods are wired and admitted again.
func TestValidatingPolicySafetyNet(t *testing.T) {
	ctx := context.Background()
	y, err := controlplane.Kustomize(filepath.Join(controlplane.Root(), "kustomize", "overlays", "cert-manager"))
	require.NoError(t, err)
	decoder := serializer.NewCodecFactory(clientgoscheme.Scheme).UniversalDeserializer()
	installed := 0
	for _, doc := range bytes.Split(y, []byte("\n---\n")) {
		if !bytes.Contains(doc, []byte("kind: ValidatingAdmissionPolicy")) && !bytes.Contains(doc, []byte("name: spire-mesh-injector-policy\n")) {
			continue
		}
		obj, _, err := decoder.Decode(doc, nil, nil)
		require.NoError(t, err)
		createForTest(t, obj.(client.Object))
		installed++
	}
	require.Equal(t, 5, installed, "two policies, their bindings and the policy's parameters")

	optedIn, other := namespace(t, true, nil), namespace(t, false, nil)
	eventually(t, "a pod the webhook wired passes the policy", func() bool {
		p := plainPod(optedIn, "probe", nil)
		return wiredOnDryRun(ctx, p) && p.Labels[annotations.InjectedLabel] == "workload"
	})

	// istiod is never wired, and the policy lets it through: it must start while the webhook is
	// down, even where its namespace is opted in.
	istiod := plainPod(optedIn, "istiod", map[string]string{"app": "istiod", "istio": "pilot"})
	require.NoError(t, k8s.Create(ctx, istiod))
	assert.NotContains(t, istiod.Labels, annotations.InjectedLabel, "the API server does not call the webhook for istiod")
	assert.Empty(t, istiod.Spec.Volumes)

	// The CSI driver the policy requires is its parameter, not a name written into it: with
	// another driver there, a pod the webhook wired with csi.spiffe.io is refused.
	params := &corev1.ConfigMap{}
	require.NoError(t, k8s.Get(ctx, client.ObjectKey{Namespace: "spire-mesh-injector", Name: "spire-mesh-injector-policy"}, params))
	require.Equal(t, testConfig.CSIDriver, params.Data["csiDriver"])
	update(t, params, params.Name, params.Namespace, func(o client.Object) { o.(*corev1.ConfigMap).Data["csiDriver"] = "csi.renamed.example" })
	var renamed error
	require.Eventually(t, func() bool {
		renamed = k8s.Create(ctx, plainPod(optedIn, "other-driver", nil), client.DryRunAll)
		return renamed != nil
	}, 30*time.Second, 100*time.Millisecond, "the policy reads the driver's name from its parameter")
	assert.Contains(t, renamed.Error(), "has no SPIFFE CSI volume (driver csi.renamed.example)")
	update(t, params, params.Name, params.Namespace, func(o client.Object) { o.(*corev1.ConfigMap).Data["csiDriver"] = testConfig.CSIDriver })
	require.Eventually(t, func() bool { return k8s.Create(ctx, plainPod(optedIn, "driver-back", nil), client.DryRunAll) == nil },
		30*time.Second, 100*time.Millisecond, "wired pods pass again")

	// The label registrations select pods by is the webhook's: no update may add, change or remove
	// it, in any namespace; other label edits go through.
	wired := plainPod(optedIn, "wired", nil)
	require.NoError(t, k8s.Create(ctx, wired))
	unwired := plainPod(other, "unwired", nil)
	require.NoError(t, k8s.Create(ctx, unwired))
	relabel := func(p *corev1.Pod, change func(map[string]string), opts ...client.UpdateOption) error {
		cur := &corev1.Pod{}
		require.NoError(t, k8s.Get(ctx, client.ObjectKeyFromObject(p), cur))
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		change(cur.Labels)
		return k8s.Update(ctx, cur, opts...)
	}
	var edit error
	require.Eventually(t, func() bool {
		// A dry run: until the API server enforces the new policy, nothing changes.
		edit = relabel(unwired, func(l map[string]string) { l[annotations.InjectedLabel] = "workload" }, client.DryRunAll)
		return edit != nil
	}, 30*time.Second, 100*time.Millisecond, "adding the injected label to a pod the webhook never wired is refused")
	assert.Contains(t, edit.Error(), "ValidatingAdmissionPolicy 'spire-mesh-injector-owned-labels'")
	assert.Contains(t, edit.Error(), `label spire-mesh-injector.io/injected is set by spire-mesh-injector when a pod is created and may not be changed afterwards (it was "", the update makes it "workload")`)
	assert.Error(t, relabel(wired, func(l map[string]string) { l[annotations.InjectedLabel] = "mesh" }), "changing it is refused")
	assert.Error(t, relabel(wired, func(l map[string]string) { delete(l, annotations.InjectedLabel) }), "removing it is refused")
	assert.NoError(t, relabel(wired, func(l map[string]string) { l["team"] = "payments" }), "other labels may change")

	// The webhook becomes unreachable: failurePolicy Ignore lets the API server go on without it.
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	require.NoError(t, k8s.Get(ctx, client.ObjectKey{Name: "spire-mesh-injector"}, mwc))
	saved := mwc.DeepCopy()
	dead := "https://127.0.0.1:1/mutate-pods"
	mwc.Webhooks[0].ClientConfig.URL = &dead
	require.NoError(t, k8s.Update(ctx, mwc))
	t.Cleanup(func() {
		cur := &admissionregistrationv1.MutatingWebhookConfiguration{}
		require.NoError(t, k8s.Get(context.Background(), client.ObjectKey{Name: "spire-mesh-injector"}, cur))
		cur.Webhooks = saved.Webhooks
		require.NoError(t, k8s.Update(context.Background(), cur))
		require.Eventually(t, func() bool { return wiredOnDryRun(context.Background(), plainPod(optedIn, "restored", nil)) },
			30*time.Second, 100*time.Millisecond, "the webhook is back")
	})

	var refusal error
	require.Eventually(t, func() bool {
		refusal = k8s.Create(ctx, plainPod(optedIn, "unwired", nil), client.DryRunAll)
		return refusal != nil
	}, 30*time.Second, 100*time.Millisecond, "an unwired pod in an opted-in namespace is refused")
	assert.Contains(t, refusal.Error(), "ValidatingAdmissionPolicy 'spire-mesh-injector-require-spiffe-csi'")
	assert.Contains(t, refusal.Error(), "requires SPIRE identity (label spire-injection=enabled) but this pod has no SPIFFE CSI volume")
	assert.Contains(t, refusal.Error(), "webhook was unreachable")

	assert.NoError(t, k8s.Create(ctx, plainPod(other, "unrelated", nil)), "other namespaces keep working")
	assert.NoError(t, k8s.Create(ctx, plainPod(optedIn, "opted-out", map[string]string{annotations.InjectionLabel: annotations.InjectionDisabled})),
		"break glass: a pod labelled spire-injection=disabled is created without identity")

	// failurePolicy Fail: the API server refuses the pod itself, naming the webhook and the cause.
	require.NoError(t, k8s.Get(ctx, client.ObjectKey{Name: "spire-mesh-injector"}, mwc))
	fail := admissionregistrationv1.Fail
	mwc.Webhooks[0].FailurePolicy = &fail
	require.NoError(t, k8s.Update(ctx, mwc))
	require.Eventually(t, func() bool {
		refusal = k8s.Create(ctx, plainPod(optedIn, "unwired-fail", nil), client.DryRunAll)
		return refusal != nil && strings.Contains(refusal.Error(), "failed calling webhook")
	}, 30*time.Second, 100*time.Millisecond, "with failurePolicy Fail the webhook's failure refuses the pod")
	assert.Contains(t, refusal.Error(), `"pods.spire-mesh-injector.io"`)
	assert.Contains(t, refusal.Error(), "connection refused")
	assert.NoError(t, k8s.Create(ctx, plainPod(other, "unrelated-fail", nil)), "other namespaces keep working")
	assert.NoError(t, k8s.Create(ctx, plainPod(optedIn, "opted-out-fail", map[string]string{annotations.InjectionLabel: annotations.InjectionDisabled})),
		"break glass works with Fail too: the objectSelector spares the call")
}
