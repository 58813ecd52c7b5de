package envtest

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
)

// installBaseRBAC creates the service account and RBAC objects exactly as kustomize/base renders
// them.
func installBaseRBAC(t *testing.T) {
	t.Helper()
	y, err := controlplane.Kustomize(filepath.Join(controlplane.Root(), "kustomize", "base"))
	require.NoError(t, err)
	decoder := serializer.NewCodecFactory(clientgoscheme.Scheme).UniversalDeserializer()
	for _, doc := range bytes.Split(y, []byte("\n---\n")) {
		obj, _, err := decoder.Decode(doc, nil, nil)
		require.NoError(t, err)
		switch obj.(type) {
		case *corev1.ServiceAccount, *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding, *rbacv1.Role, *rbacv1.RoleBinding:
			o := obj.(client.Object)
			if err := k8s.Create(context.Background(), o); err != nil && !apierrors.IsAlreadyExists(err) {
				require.NoError(t, err)
			}
		}
	}
}

// TestRBACIsExactlyWhatIsUsed asks the real API server (SubjectAccessReview against the kustomize
// RBAC) what the webhook's service account may do: everything the webhook and reconciler use, and
// nothing else that matters.
func TestRBACIsExactlyWhatIsUsed(t *testing.T) {
	installBaseRBAC(t)
	const sa = "system:serviceaccount:spire-mesh-injector:spire-mesh-injector"
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:spire-mesh-injector", "system:authenticated"}
	type check struct {
		verb, group, resource, subresource, namespace string
	}
	can := func(c check) bool {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: sa, Groups: groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: c.verb, Group: c.group, Resource: c.resource, Subresource: c.subresource, Namespace: c.namespace},
		}}
		require.NoError(t, k8s.Create(context.Background(), sar))
		return sar.Status.Allowed
	}
	allowed := []check{
		{"get", "spire.spiffe.io", "clusterspiffeids", "", ""}, {"list", "spire.spiffe.io", "clusterspiffeids", "", ""},
		{"watch", "spire.spiffe.io", "clusterspiffeids", "", ""}, {"create", "spire.spiffe.io", "clusterspiffeids", "", ""},
		{"update", "spire.spiffe.io", "clusterspiffeids", "", ""}, {"patch", "spire.spiffe.io", "clusterspiffeids", "", ""},
		{"delete", "spire.spiffe.io", "clusterspiffeids", "", ""},
		{"get", "spire.spiffe.io", "clusterfederatedtrustdomains", "", ""}, {"list", "spire.spiffe.io", "clusterfederatedtrustdomains", "", ""},
		{"watch", "spire.spiffe.io", "clusterfederatedtrustdomains", "", ""},
		{"get", "", "namespaces", "", ""}, {"list", "", "namespaces", "", ""}, {"watch", "", "namespaces", "", ""},
		{"list", "", "pods", "", ""}, {"watch", "", "pods", "", ""},
		{"create", "", "events", "", "default"}, {"patch", "", "events", "", "default"}, {"create", "events.k8s.io", "events", "", "default"},
		{"get", "coordination.k8s.io", "leases", "", "spire-mesh-injector"}, {"create", "coordination.k8s.io", "leases", "", "spire-mesh-injector"},
		{"update", "coordination.k8s.io", "leases", "", "spire-mesh-injector"},
	}
	denied := []check{
		{"get", "", "secrets", "", "spire-mesh-injector"}, {"list", "", "secrets", "", ""},
		{"get", "", "configmaps", "", "shop"}, {"get", "", "pods", "", "shop"}, {"create", "", "pods", "", "shop"},
		{"delete", "", "pods", "", "shop"}, {"create", "", "pods", "exec", "shop"}, {"patch", "", "pods", "", "shop"},
		{"update", "", "namespaces", "", ""}, {"delete", "", "namespaces", "", ""},
		{"create", "", "serviceaccounts", "token", "shop"}, {"get", "", "nodes", "", ""},
		{"update", "spire.spiffe.io", "clusterspiffeids", "status", ""},
		{"create", "spire.spiffe.io", "clusterfederatedtrustdomains", "", ""}, {"create", "spire.spiffe.io", "clusterstaticentries", "", ""},
		{"update", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", ""},
		{"delete", "admissionregistration.k8s.io", "validatingadmissionpolicybindings", "", ""},
		{"create", "rbac.authorization.k8s.io", "clusterrolebindings", "", ""}, {"escalate", "rbac.authorization.k8s.io", "clusterroles", "", ""},
		{"update", "coordination.k8s.io", "leases", "", "kube-system"},
		{"impersonate", "", "serviceaccounts", "", ""},
	}
	for _, c := range allowed {
		assert.True(t, can(c), "needed but not allowed: %+v", c)
	}
	for _, c := range denied {
		assert.False(t, can(c), "not needed but allowed: %+v", c)
	}
}

// TestTenantCannotReachAnotherIdentity impersonates a tenant who may only create pods in namespace
// A, and tries every knob a pod has — labels, annotations, a forged status, another namespace in
// its metadata, odd service account names — to get an identity outside A's template, or to make
// the webhook create or change a registration for anything but A.
func TestTenantCannotReachAnotherIdentity(t *testing.T) {
	ctx := context.Background()
	a, b := namespace(t, true, nil), namespace(t, true, nil)
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "pod-creator", Namespace: a},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"create", "get"}}}}
	require.NoError(t, k8s.Create(ctx, role))
	require.NoError(t, k8s.Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "tenant", Namespace: a},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-creator"},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: "tenant-a"}}}))
	cfg := rest.CopyConfig(cp.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "tenant-a"}
	tenant, err := client.New(cfg, client.Options{Scheme: registration.Scheme()})
	require.NoError(t, err)

	before := &spirev1alpha1.ClusterSPIFFEIDList{}
	require.NoError(t, k8s.List(ctx, before))

	forged := annotations.Status{Mode: annotations.ModeMesh, SPIFFEID: "spiffe://example.org/ns/" + b + "/sa/admin", Registration: identity.Name(b)}
	attempts := []*corev1.Pod{
		plainPod(a, "labels", map[string]string{identity.NamespaceLabel: b, identity.ManagedByLabel: identity.ManagedByValue, "kubernetes.io/metadata.name": b, annotations.InjectedLabel: "mesh"}),
		plainPod(a, "forged-status", nil),
		plainPod(a, "federates", nil),
		plainPod(a, "sa-path", nil),
	}
	attempts[1].Annotations = map[string]string{annotations.StatusAnnotation: forged.Encode()}
	attempts[2].Annotations = map[string]string{annotations.FederatesWithAnnotation: "evil.example", "spire-mesh-injector.io/namespace": b}
	attempts[3].Spec.ServiceAccountName = "ns-" + b
	for _, p := range attempts {
		require.NoError(t, tenant.Create(ctx, p), p.Name)
		st, err := annotations.ParseStatus(p.Annotations[annotations.StatusAnnotation])
		require.NoError(t, err)
		assert.Regexp(t, `^spiffe://example\.org/ns/`+a+`/sa/[a-z0-9-]+$`, st.SPIFFEID, p.Name)
		assert.Equal(t, identity.Name(a), st.Registration, p.Name)
	}
	// A service account name that would climb out of the path is refused outright.
	climb := plainPod(a, "climb", nil)
	climb.Spec.ServiceAccountName = ".."
	err = tenant.Create(ctx, climb)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "spire-mesh-injector")

	after := &spirev1alpha1.ClusterSPIFFEIDList{}
	require.NoError(t, k8s.List(ctx, after))
	created := map[string]spirev1alpha1.ClusterSPIFFEID{}
	for _, c := range after.Items {
		created[c.Name] = c
	}
	for _, c := range before.Items {
		delete(created, c.Name)
	}
	require.Len(t, created, 1, "only namespace A's registration was created")
	mine, ok := created[identity.Name(a)]
	require.True(t, ok)
	assert.Equal(t, map[string]string{"kubernetes.io/metadata.name": a}, mine.Spec.NamespaceSelector.MatchLabels)
	assert.Empty(t, mine.Spec.FederatesWith, "a pod annotation is not a namespace annotation")
	assert.True(t, registrationGone(ctx, b), "no registration for B")

	// And the tenant cannot write registrations itself.
	err = tenant.Create(ctx, &spirev1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: "mine"}, Spec: spirev1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "spiffe://example.org/x"}})
	assert.True(t, apierrors.IsForbidden(err), "%v", err)
}
