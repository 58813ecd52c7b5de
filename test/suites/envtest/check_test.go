package envtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlenvtest "sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/check"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

var checkCRDs sync.Once

// installCheckCRDs installs the foreign APIs the check reads without Go types: ZTWIM's
// ZeroTrustWorkloadIdentityManager (a stand-in CRD with the fields the check reads: ZTWIM's own CRDs
// are not on the Go module proxy) and Istio's real RequestAuthentication, AuthorizationPolicy and
// DestinationRule CRDs from istio.io/api.
func installCheckCRDs(t *testing.T) {
	t.Helper()
	checkCRDs.Do(func() {
		preserve := true
		ztwim := &apiextensionsv1.CustomResourceDefinition{
			ObjectMeta: metav1.ObjectMeta{Name: "zerotrustworkloadidentitymanagers.operator.openshift.io"},
			Spec: apiextensionsv1.CustomResourceDefinitionSpec{
				Group: "operator.openshift.io", Scope: apiextensionsv1.ClusterScoped,
				Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: "zerotrustworkloadidentitymanagers", Singular: "zerotrustworkloadidentitymanager", Kind: "ZeroTrustWorkloadIdentityManager", ListKind: "ZeroTrustWorkloadIdentityManagerList"},
				Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{Name: "v1alpha1", Served: true, Storage: true,
					Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{Type: "object", XPreserveUnknownFields: &preserve}}}},
			},
		}
		crds := []*apiextensionsv1.CustomResourceDefinition{ztwim, istioCRD(t, "requestauthentications.security.istio.io"),
			istioCRD(t, "authorizationpolicies.security.istio.io"), istioCRD(t, "destinationrules.networking.istio.io")}
		_, err := ctrlenvtest.InstallCRDs(cp.Config, ctrlenvtest.CRDInstallOptions{CRDs: crds})
		require.NoError(t, err)
	})
}

// istioCRD reads one CRD from istio.io/api's generated CRDs in the module cache.
func istioCRD(t *testing.T, name string) *apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	dir, err := controlplane.ModuleDir("istio.io/api")
	require.NoError(t, err)
	raw, err := os.ReadFile(filepath.Join(dir, "kubernetes", "customresourcedefinitions.gen.yaml"))
	require.NoError(t, err)
	for _, doc := range bytes.Split(raw, []byte("\n---\n")) {
		if !bytes.Contains(doc, []byte("name: "+name)) {
			continue
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		require.NoError(t, yaml.Unmarshal(doc, crd))
		if crd.Name == name {
			return crd
		}
	}
	t.Fatalf("no CRD %s in istio.io/api", name)
	return nil
}

// checkEnv is a healthy cluster for one check test: every object the check reads, seeded under
// names of this test's own (so tests do not see each other's cluster-wide objects), and an opted-in
// namespace with a mesh pod asking for a JWT-SVID and a plain pod, both wired by the real webhook.
type checkEnv struct {
	ns, infra string
	opts      check.Options
	mwc       string
	csi       string
	ztwim     string
}

func newCheckEnv(t *testing.T) *checkEnv {
	t.Helper()
	installCheckCRDs(t)
	ctx := context.Background()
	e := &checkEnv{ns: namespace(t, true, nil), infra: namespace(t, false, nil)}
	e.mwc, e.csi, e.ztwim = "smi-check-"+e.ns, "csi-"+e.ns+".example", "ztwim-"+e.ns
	cfg, err := config.Parse([]byte("trustDomain: example.org\nclusterName: envtest\njwtHelper:\n  image: registry.example/spire-mesh-injector:test\ncsiDriver: " + e.csi + "\n"))
	require.NoError(t, err)
	openShift := true
	e.opts = check.Options{
		Config: cfg, ConfigSource: "test", Namespaces: []string{e.ns},
		WebhookName: e.mwc, SafetyNetBinding: e.mwc,
		IstioMeshConfig:    types.NamespacedName{Namespace: e.infra, Name: "istio"},
		IstioRootNamespace: e.infra,
		SCMConfigMaps:      []types.NamespacedName{{Namespace: e.infra, Name: "spire-controller-manager"}},
		AgentConfigMaps:    []types.NamespacedName{{Namespace: e.infra, Name: "spire-agent"}},
		ZTWIMName:          e.ztwim, OpenShift: &openShift,
	}

	// The webhook configuration as kustomize renders it, pointed at a Service with a ready
	// endpoint, and made inert (its objectSelector matches no pod) so that it changes nothing
	// for the suite: the suite's own configuration keeps calling the real webhook.
	mwc, err := controlplane.WebhookConfiguration("https://unused", cp.CA)
	require.NoError(t, err)
	mwc.Name = e.mwc
	for i := range mwc.Webhooks {
		w := &mwc.Webhooks[i]
		w.ClientConfig.URL = nil
		w.ClientConfig.Service = &admissionregistrationv1.ServiceReference{Namespace: e.infra, Name: "spire-mesh-injector", Path: chkRef("/mutate-pods")}
		w.ObjectSelector.MatchExpressions = append(w.ObjectSelector.MatchExpressions, metav1.LabelSelectorRequirement{Key: "smi-check-inert", Operator: metav1.LabelSelectorOpExists})
	}
	createForTest(t, mwc)
	createForTest(t, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "spire-mesh-injector", Namespace: e.infra},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "webhook", Port: 443}}}})
	createForTest(t, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "spire-mesh-injector-1", Namespace: e.infra, Labels: map[string]string{discoveryv1.LabelServiceName: "spire-mesh-injector"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: chkRef(true)}}},
	})
	createForTest(t, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: e.mwc},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: "smi-check-no-such-policy", ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny}}})
	createForTest(t, &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: e.csi, Labels: map[string]string{check.CSIProfileLabel: "restricted"}},
		Spec: storagev1.CSIDriverSpec{VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral}}})
	createForTest(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: e.infra},
		Data: map[string]string{"mesh": "trustDomain: example.org\ndefaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\n"}})
	createForTest(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "spire-controller-manager", Namespace: e.infra},
		Data: map[string]string{"controller-manager-config.yaml": "apiVersion: spire.spiffe.io/v1alpha1\nkind: ControllerManagerConfig\ntrustDomain: example.org\nclusterName: envtest\nclassName: " + config.DefaultClassName +
			"\nignoreNamespaces: [kube-system, kube-public, local-path-storage, openshift-*]\n"}})
	// Istio's default control plane as its chart installs it in its namespace: the injector's
	// values, istiod (istiod fetches JWKS) and the extra CA it trusts for them.
	createForTest(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector", Namespace: e.infra},
		Data: map[string]string{"values": `{"global": {"hub": "docker.io/istio", "tag": "1.26.2", "proxy": {"image": "proxyv2"}}}`, "config": "policy: enabled\n"}})
	createForTest(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "pilot-jwks-extra-cacerts", Namespace: e.infra},
		Data: map[string]string{"extra.pem": "-----BEGIN CERTIFICATE-----\n"}})
	selector, template := podTemplate(map[string]string{"app": "istiod"}, corev1.PodSpec{Containers: []corev1.Container{{
		Name: "discovery", Image: "docker.io/istio/pilot:1.26.2", Env: []corev1.EnvVar{{Name: check.IstioJWKSModeEnv, Value: "false"}}}}})
	createForTest(t, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: e.infra},
		Spec: appsv1.DeploymentSpec{Selector: selector, Template: template}})
	// The SPIRE agent's configuration as ZTWIM writes it: JSON, no sds block.
	createForTest(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "spire-agent", Namespace: e.infra},
		Data: map[string]string{check.AgentConfigKey: `{"agent": {"socket_path": "/tmp/spire-agent/public/spire-agent.sock", "trust_domain": "example.org"}}`}})
	ztwim := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "operator.openshift.io/v1alpha1", "kind": "ZeroTrustWorkloadIdentityManager",
		"metadata": map[string]any{"name": e.ztwim},
		"spec":     map[string]any{"trustDomain": "example.org", "clusterName": "envtest"},
	}}
	createForTest(t, ztwim)
	ra := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
		"metadata": map[string]any{"name": "orders", "namespace": e.ns},
		"spec": map[string]any{"jwtRules": []any{map[string]any{
			"issuer": "https://oidc-discovery.example.org", "audiences": []any{"orders"},
			"jwksUri": "https://spire-spiffe-oidc-discovery-provider." + e.infra + ".svc.cluster.local/keys",
		}}},
	}}
	createForTest(t, ra)
	// Only the API server runs here: no controller creates the default service account.
	require.NoError(t, k8s.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: e.ns}}))
	createForTest(t, authorizationPolicy(e.ns, "reviews", map[string]any{
		"selector": map[string]any{"matchLabels": map[string]any{"app": "reviews"}},
		"rules": []any{
			map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"example.org/ns/" + e.ns + "/sa/default"}}}}},
			map[string]any{"from": []any{map[string]any{"source": map[string]any{"requestPrincipals": []any{"https://oidc-discovery.example.org/*"}}}},
				"when": []any{map[string]any{"key": "request.auth.claims[sub]", "values": []any{"spiffe://example.org/ns/" + e.ns + "/sa/default"}}}},
		},
	}))

	mesh := plainPod(e.ns, "reviews-6b7c9d-x2k4p", map[string]string{"app": "reviews", "pod-template-hash": "6b7c9d"})
	ownedByReplicaSet(mesh, "reviews-6b7c9d", "rs-uid")
	mesh.Annotations = map[string]string{annotations.AudienceAnnotation: "orders"}
	podtest.IstioStandIn(mesh, true)
	plain := plainPod(e.ns, "ratings-0", map[string]string{"app": "ratings"})
	for _, p := range []*corev1.Pod{mesh, plain} {
		require.NoError(t, k8s.Create(ctx, p))
		require.NotEmpty(t, p.Annotations[annotations.StatusAnnotation], "the webhook wired %s", p.Name)
	}
	// spire-controller-manager's part, played here: the stats of its last run.
	e.setStats(t, spirev1alpha1.ClusterSPIFFEIDStats{NamespacesSelected: 1, PodsSelected: 2, EntriesToSet: 2})
	return e
}

// authorizationPolicy is an Istio AuthorizationPolicy with spec.
func authorizationPolicy(ns, name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	}}
}

func (e *checkEnv) setStats(t *testing.T, stats spirev1alpha1.ClusterSPIFFEIDStats) {
	t.Helper()
	var reg *spirev1alpha1.ClusterSPIFFEID
	eventually(t, "the webhook ensured "+identity.Name(e.ns), func() bool {
		var err error
		reg, err = getCSID(context.Background(), e.ns)
		return err == nil
	})
	reg.Status.Stats = stats
	require.NoError(t, k8s.Status().Update(context.Background(), reg))
}

// chkRun runs the check with a fresh client (a fresh discovery cache: CRDs may be new) as
// cfg's user.
func chkRun(t *testing.T, cfg *rest.Config, o check.Options) *check.Report {
	t.Helper()
	c, err := client.New(cfg, client.Options{Scheme: registration.Scheme()})
	require.NoError(t, err)
	r, err := check.Run(context.Background(), c, o)
	require.NoError(t, err)
	return r
}

// chkRequire asserts that the report has a finding of check id with status want whose text
// contains fragment, and that nothing else in it is worse than OK unless listed in also.
func chkRequire(t *testing.T, r *check.Report, id check.ID, want check.Status, fragment string, also ...check.ID) {
	t.Helper()
	var b strings.Builder
	require.NoError(t, check.WriteTable(&b, r))
	found := false
	for _, f := range r.Findings {
		if f.Check == id && f.Status == want && strings.Contains(f.What+" "+f.Why+" "+f.Fix, fragment) {
			found = true
			assert.Equal(t, check.Runbook(id), f.Runbook)
			continue
		}
		if f.Status != check.OK && f.Check != id {
			assert.Contains(t, also, f.Check, "unexpected finding %+v", f)
		}
	}
	assert.True(t, found, "no %s %s finding mentioning %q in:\n%s", want, id, fragment, b.String())
}

func TestCheckHealthyNamespaceIsAllOK(t *testing.T) {
	e := newCheckEnv(t)
	r := chkRun(t, cp.Config, e.opts)
	var b strings.Builder
	require.NoError(t, check.WriteTable(&b, r))
	t.Log("\n" + b.String())
	seen := map[check.ID]bool{}
	for _, f := range r.Findings {
		assert.Equal(t, check.OK, f.Status, "%+v", f)
		seen[f.Check] = true
	}
	for _, id := range check.IDs {
		assert.True(t, seen[id], "nothing reported for %s", id)
	}
}

func TestCheckFindings(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		seed     func(t *testing.T, e *checkEnv)
		id       check.ID
		want     check.Status
		fragment string
		also     []check.ID
	}{
		{"webhook configuration without CA bundle", func(t *testing.T, e *checkEnv) {
			update(t, &admissionregistrationv1.MutatingWebhookConfiguration{}, e.mwc, "", func(o client.Object) {
				o.(*admissionregistrationv1.MutatingWebhookConfiguration).Webhooks[0].ClientConfig.CABundle = nil
			})
		}, check.CheckWebhookConfiguration, check.Fail, "has no caBundle", nil},
		{"webhook Service without ready endpoints", func(t *testing.T, e *checkEnv) {
			update(t, &discoveryv1.EndpointSlice{}, "spire-mesh-injector-1", e.infra, func(o client.Object) {
				o.(*discoveryv1.EndpointSlice).Endpoints[0].Conditions.Ready = chkRef(false)
			})
		}, check.CheckWebhookEndpoints, check.Fail, "has no ready endpoints", nil},
		{"fail open without the safety net", func(t *testing.T, e *checkEnv) {
			require.NoError(t, k8s.Delete(ctx, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{ObjectMeta: metav1.ObjectMeta{Name: e.mwc}}))
		}, check.CheckWebhookFailurePolicy, check.Warn, "without the safety net", nil},
		{"namespaceSelector that ignores the opt-in label", func(t *testing.T, e *checkEnv) {
			update(t, &admissionregistrationv1.MutatingWebhookConfiguration{}, e.mwc, "", func(o client.Object) {
				o.(*admissionregistrationv1.MutatingWebhookConfiguration).Webhooks[0].NamespaceSelector.MatchLabels = map[string]string{"sidecar-injection": "enabled"}
			})
		}, check.CheckWebhookConfiguration, check.Fail, "does not select namespaces labelled spire-injection=enabled", []check.ID{check.CheckNamespaceSelector}},
		{"CSI driver missing", func(t *testing.T, e *checkEnv) {
			require.NoError(t, k8s.Delete(ctx, &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: e.csi}}))
		}, check.CheckCSIDriver, check.Fail, "not found", nil},
		{"CSI driver without OpenShift's profile label", func(t *testing.T, e *checkEnv) {
			update(t, &storagev1.CSIDriver{}, e.csi, "", func(o client.Object) { o.SetLabels(nil) })
		}, check.CheckCSIDriver, check.Warn, "no security.openshift.io/csi-ephemeral-volume-profile label", nil},
		{"Istio trust domain differs", func(t *testing.T, e *checkEnv) {
			update(t, &corev1.ConfigMap{}, "istio", e.infra, func(o client.Object) {
				o.(*corev1.ConfigMap).Data["mesh"] = "trustDomain: cluster.local\n"
			})
		}, check.CheckTrustDomain, check.Fail, "cluster.local", nil},
		{"ZTWIM trust domain differs", func(t *testing.T, e *checkEnv) {
			u := &unstructured.Unstructured{}
			u.SetAPIVersion("operator.openshift.io/v1alpha1")
			u.SetKind("ZeroTrustWorkloadIdentityManager")
			update(t, u, e.ztwim, "", func(o client.Object) {
				require.NoError(t, unstructured.SetNestedField(o.(*unstructured.Unstructured).Object, "apps.example.com", "spec", "trustDomain"))
			})
		}, check.CheckTrustDomain, check.Fail, "apps.example.com", nil},
		{"mesh-wide socket file differs", func(t *testing.T, e *checkEnv) {
			update(t, &corev1.ConfigMap{}, "istio", e.infra, func(o client.Object) {
				o.(*corev1.ConfigMap).Data["mesh"] = "trustDomain: example.org\ndefaultConfig:\n  proxyMetadata:\n    WORKLOAD_IDENTITY_SOCKET_FILE: socket.sock\n"
			})
		}, check.CheckSocketFile, check.Warn, "socket.sock", nil},
		{"pods wired for another socket file", func(t *testing.T, e *checkEnv) {
			// The agent now publishes "socket" (an upstream SPIRE install, no ZTWIM): the pods the
			// webhook wired earlier still look for spire-agent.sock.
			e.opts.Config = chkWithYAML(t, e.opts.Config, "socketFileName: socket\n")
			e.opts.ZTWIMName = "absent"
		}, check.CheckSocketFile, check.Fail, "kubectl -n ", []check.ID{check.CheckRegistration}},
		{"spire-controller-manager of another class", func(t *testing.T, e *checkEnv) {
			update(t, &corev1.ConfigMap{}, "spire-controller-manager", e.infra, func(o client.Object) {
				cm := o.(*corev1.ConfigMap)
				cm.Data["controller-manager-config.yaml"] = strings.Replace(cm.Data["controller-manager-config.yaml"], config.DefaultClassName, "spire-mesh", 1)
			})
		}, check.CheckClassName, check.Fail, `registration.className: "spire-mesh"`, []check.ID{check.CheckRegistrationClass}},
		{"registrations of a class nobody reconciles any more", func(t *testing.T, e *checkEnv) {
			// spire-controller-manager and the configuration moved to another class; the webhook
			// has not restarted, so its registrations keep the old one.
			update(t, &corev1.ConfigMap{}, "spire-controller-manager", e.infra, func(o client.Object) {
				cm := o.(*corev1.ConfigMap)
				cm.Data["controller-manager-config.yaml"] = strings.Replace(cm.Data["controller-manager-config.yaml"], config.DefaultClassName, "spire-mesh", 1)
			})
			e.opts.Config = chkWithYAML(t, e.opts.Config, "registration:\n  className: spire-mesh\n")
		}, check.CheckRegistrationClass, check.Fail, `has className "zero-trust-workload-identity-manager-spire"`, []check.ID{check.CheckRegistration}},
		{"registration with entry failures", func(t *testing.T, e *checkEnv) {
			e.setStats(t, spirev1alpha1.ClusterSPIFFEIDStats{NamespacesSelected: 1, PodsSelected: 2, EntriesToSet: 2, EntryFailures: 2, PodEntryRenderFailures: 1})
		}, check.CheckRegistrationStatus, check.Fail, "entryFailures 2", nil},
		{"registration without status", func(t *testing.T, e *checkEnv) {
			e.setStats(t, spirev1alpha1.ClusterSPIFFEIDStats{})
		}, check.CheckRegistrationStatus, check.Fail, "no status from spire-controller-manager", nil},
		{"namespace named with -n but not opted in", func(t *testing.T, e *checkEnv) {
			e.opts.Namespaces = []string{namespace(t, false, nil)}
		}, check.CheckNamespaceSelector, check.Fail, "spire-injection=enabled, then restart its workloads", nil},
		{"competing registration", func(t *testing.T, e *checkEnv) {
			createForTest(t, &spirev1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: "legacy-" + e.ns},
				Spec: spirev1alpha1.ClusterSPIFFEIDSpec{
					SPIFFEIDTemplate:  "spiffe://{{ .TrustDomain }}/legacy/{{ .PodMeta.Name }}",
					ClassName:         config.DefaultClassName,
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: e.ns}},
				}})
		}, check.CheckOverlap, check.Fail, "ClusterSPIFFEID legacy-", nil},
		{"pod created before the namespace opted in", func(t *testing.T, e *checkEnv) {
			ns := namespace(t, false, nil)
			p := plainPod(ns, "web-5f6d7c-abcde", map[string]string{"app": "web", "pod-template-hash": "5f6d7c"})
			ownedByReplicaSet(p, "web-5f6d7c", "rs-uid")
			require.NoError(t, k8s.Create(ctx, p))
			update(t, &corev1.Namespace{}, ns, "", func(o client.Object) {
				o.SetLabels(map[string]string{annotations.InjectionLabel: annotations.InjectionEnabled})
			})
			e.opts.Namespaces = []string{ns}
		}, check.CheckPodsNotWired, check.Fail, "rollout restart deployment/web", nil},
		{"audience no RequestAuthentication accepts", func(t *testing.T, e *checkEnv) {
			u := &unstructured.Unstructured{}
			u.SetAPIVersion("security.istio.io/v1")
			u.SetKind("RequestAuthentication")
			update(t, u, "orders", e.ns, func(o client.Object) {
				rules := []any{map[string]any{"issuer": "https://oidc-discovery.example.org", "audiences": []any{"payments"}}}
				require.NoError(t, unstructured.SetNestedSlice(o.(*unstructured.Unstructured).Object, rules, "spec", "jwtRules"))
			})
		}, check.CheckJWTAudience, check.Warn, `audience "orders"`, nil},

		{"policy principal naming a service account that does not exist", func(t *testing.T, e *checkEnv) {
			createForTest(t, authorizationPolicy(e.ns, "typo", map[string]any{"rules": []any{
				map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"example.org/ns/" + e.ns + "/sa/defualt"}}}}},
			}}))
		}, check.CheckPolicyPrincipals, check.Fail, "service account defualt does not exist in namespace", nil},
		{"requestPrincipal spelling out a SPIFFE ID", func(t *testing.T, e *checkEnv) {
			createForTest(t, authorizationPolicy(e.ns, "jwt", map[string]any{"rules": []any{
				map[string]any{"from": []any{map[string]any{"source": map[string]any{"requestPrincipals": []any{"https://oidc-discovery.example.org/spiffe://example.org/ns/" + e.ns + "/sa/default"}}}}},
			}}))
		}, check.CheckPolicyPrincipals, check.Fail, `subject "default"`, nil},
		{"a workload ALLOW policies select and no rule admits", func(t *testing.T, e *checkEnv) {
			u := &unstructured.Unstructured{}
			u.SetAPIVersion("security.istio.io/v1")
			u.SetKind("AuthorizationPolicy")
			update(t, u, "reviews", e.ns, func(o client.Object) {
				unstructured.RemoveNestedField(o.(*unstructured.Unstructured).Object, "spec", "rules")
			})
		}, check.CheckPolicyAdmission, check.Warn, "none of their rules can match a request", nil},
		{"namespace spire-controller-manager's ignoreNamespaces match", func(t *testing.T, e *checkEnv) {
			entry := regexp.QuoteMeta(strings.TrimPrefix(e.ns, "t-"))
			update(t, &corev1.ConfigMap{}, "spire-controller-manager", e.infra, func(o client.Object) {
				cm := o.(*corev1.ConfigMap)
				cm.Data["controller-manager-config.yaml"] = strings.Replace(cm.Data["controller-manager-config.yaml"], "openshift-*]", "openshift-*, '"+entry+"']", 1)
			})
		}, check.CheckSCMIgnore, check.Fail, "ignoreNamespaces entry", []check.ID{check.CheckPolicyPrincipals, check.CheckPolicyAdmission}},
		{"namespace in Istio's ambient mode", func(t *testing.T, e *checkEnv) {
			update(t, &corev1.Namespace{}, e.ns, "", func(o client.Object) {
				l := o.GetLabels()
				l[check.IstioDataplaneModeLabel] = "ambient"
				o.SetLabels(l)
			})
		}, check.CheckIstioMode, check.Fail, "1 pod(s) in Istio's ambient mode: ratings-0", nil},
		{"namespace on a revision tag whose mesh config has another trust domain", func(t *testing.T, e *checkEnv) {
			tag, rev := "prod-"+e.ns, "canary-"+e.ns
			createForTest(t, &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "istio-revision-tag-" + tag,
				Labels: map[string]string{check.IstioTagLabel: tag, check.IstioRevLabel: rev}}})
			createForTest(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-" + rev, Namespace: e.infra},
				Data: map[string]string{"mesh": "trustDomain: cluster.local\n"}})
			createForTest(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector-" + rev, Namespace: e.infra},
				Data: map[string]string{"values": `{"global": {"tag": "1.26.2"}}`}})
			update(t, &corev1.Namespace{}, e.ns, "", func(o client.Object) {
				l := o.GetLabels()
				l[check.IstioRevLabel] = tag
				o.SetLabels(l)
			})
		}, check.CheckTrustDomain, check.Fail, "Istio revision canary-", []check.ID{check.CheckJWKSFetch}},
		{"Envoy fetches the in-cluster JWKS", func(t *testing.T, e *checkEnv) {
			update(t, &appsv1.Deployment{}, "istiod", e.infra, func(o client.Object) {
				o.(*appsv1.Deployment).Spec.Template.Spec.Containers[0].Env[0].Value = "true"
			})
		}, check.CheckJWKSFetch, check.Fail, "nothing originates TLS", nil},
		{"proxy older than the socket file fix", func(t *testing.T, e *checkEnv) {
			update(t, &corev1.ConfigMap{}, "istio-sidecar-injector", e.infra, func(o client.Object) {
				o.(*corev1.ConfigMap).Data["values"] = `{"global": {"hub": "registry.redhat.io/openshift-service-mesh", "tag": "1.24.3", "proxy": {"image": "istio-proxyv2-rhel9"}}}`
			})
		}, check.CheckProxyVersion, check.Fail, "runs proxy 1.24.3", nil},
		{"federation under the SPIRE agent's default SDS names", func(t *testing.T, e *checkEnv) {
			update(t, &corev1.Namespace{}, e.ns, "", func(o client.Object) {
				o.SetAnnotations(map[string]string{annotations.FederatesWithAnnotation: "partner.example"})
			})
		}, check.CheckAgentSDS, check.Fail, "local trust domain's bundle alone", []check.ID{check.CheckRegistration}},
		{"a Deployment still asking for Istio's spire template", func(t *testing.T, e *checkEnv) {
			p := plainPod(e.ns, "web-5f6d7c-abcde", map[string]string{"app": "web", "pod-template-hash": "5f6d7c"})
			ownedByReplicaSet(p, "web-5f6d7c", "rs-web")
			p.Annotations = map[string]string{check.IstioTemplatesAnnotation: "sidecar,spire"}
			require.NoError(t, k8s.Create(ctx, p))
		}, check.CheckIstioSPIRETemplate, check.Warn, "patch deployment/web --type=json", []check.ID{check.CheckRegistrationStatus}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newCheckEnv(t)
			tt.seed(t, e)
			chkRequire(t, chkRun(t, cp.Config, e.opts), tt.id, tt.want, tt.fragment, tt.also...)
		})
	}
}

// TestCheckPod explains pods on the real API server: a wired mesh pod, and an opted-out pod that
// mounts the CSI volume itself and gets its identity from ZTWIM's fallback.
func TestCheckPod(t *testing.T) {
	ctx := context.Background()
	e := newCheckEnv(t)
	// The pods mount the CSI driver the suite's webhook wires them with.
	e.opts.Config = chkWithYAML(t, e.opts.Config, "csiDriver: "+testConfig.CSIDriver+"\n")
	createForTest(t, &spirev1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: "zero-trust-workload-identity-manager-spire-default"},
		Spec: spirev1alpha1.ClusterSPIFFEIDSpec{
			SPIFFEIDTemplate: config.DefaultSPIFFEIDTemplate, ClassName: config.DefaultClassName, Fallback: true, Hint: "default",
			// ZTWIM's selects every namespace but its own; this one only the test's.
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: e.ns}},
		}})
	out := plainPod(e.ns, "legacy", map[string]string{annotations.InjectionLabel: annotations.InjectionDisabled})
	out.Spec.Volumes = []corev1.Volume{{Name: "spiffe", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: testConfig.CSIDriver, ReadOnly: chkRef(true)}}}}
	require.NoError(t, k8s.Create(ctx, out))
	require.Empty(t, out.Annotations[annotations.StatusAnnotation], "the API server never sends an opted-out pod to the webhook")

	c, err := client.New(cp.Config, client.Options{Scheme: registration.Scheme()})
	require.NoError(t, err)
	r, err := check.RunPod(ctx, c, e.opts, e.ns, "reviews-6b7c9d-x2k4p")
	require.NoError(t, err)
	chkRequire(t, r, check.CheckPodIdentity, check.OK, "gets spiffe://example.org/ns/"+e.ns+"/sa/default from ClusterSPIFFEID "+identity.Name(e.ns)+" (spire-mesh-injector's)")
	chkRequire(t, r, check.CheckPodPolicies, check.OK, "admitted by ALLOW policies: "+e.ns+"/reviews")
	chkRequire(t, r, check.CheckPodWiring, check.OK, "wired in mesh mode")

	r, err = check.RunPod(ctx, c, e.opts, e.ns, "legacy")
	require.NoError(t, err)
	// spire-controller-manager does not run here: the fallback has no status (pod-entries says so).
	chkRequire(t, r, check.CheckPodIdentity, check.OK, "from ClusterSPIFFEID zero-trust-workload-identity-manager-spire-default (ZTWIM's fallback)", check.CheckPodEntries)
	chkRequire(t, r, check.CheckPodWiring, check.OK, "opted out", check.CheckPodEntries)
}

// TestCheckPodMasked: an older ClusterSPIFFEID of the class gives the mesh pod the same SPIFFE ID
// as the webhook's registration; spire-controller-manager keeps the older one's entry, and check
// pod says ours is masked. The creation times are the API server's (one-second resolution: the
// two are created more than a second apart, or the winner would be drawn by UID).
func TestCheckPodMasked(t *testing.T) {
	ctx := context.Background()
	token := fmt.Sprintf("mask-%d", time.Now().UnixNano())
	legacy := "legacy-" + token
	createForTest(t, &spirev1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: legacy},
		Spec: spirev1alpha1.ClusterSPIFFEIDSpec{
			SPIFFEIDTemplate: config.DefaultSPIFFEIDTemplate, ClassName: config.DefaultClassName,
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"smi-mask": token}},
			PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": "reviews"}},
		}})
	time.Sleep(1100 * time.Millisecond)
	e := newCheckEnv(t)
	e.opts.Config = chkWithYAML(t, e.opts.Config, "csiDriver: "+testConfig.CSIDriver+"\n")
	update(t, &corev1.Namespace{}, e.ns, "", func(o client.Object) {
		l := o.GetLabels()
		l["smi-mask"] = token
		o.SetLabels(l)
	})
	c, err := client.New(cp.Config, client.Options{Scheme: registration.Scheme()})
	require.NoError(t, err)
	r, err := check.RunPod(ctx, c, e.opts, e.ns, "reviews-6b7c9d-x2k4p")
	require.NoError(t, err)
	chkRequire(t, r, check.CheckPodEntries, check.Warn, "is masked by ClusterSPIFFEID "+legacy)
	chkRequire(t, r, check.CheckPodIdentity, check.OK, "from ClusterSPIFFEID "+legacy+" (another registration)", check.CheckPodEntries)
}

// TestCheckRegistrationRejectedByParser seeds, before the namespace's first pod, an object with
// the webhook's registration name that spire-controller-manager's parser refuses: the webhook
// finds the name taken and the reconciler never touches an object it does not manage, so only the
// check tells.
func TestCheckRegistrationRejectedByParser(t *testing.T) {
	ns := namespace(t, true, nil)
	createForTest(t, &spirev1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: identity.Name(ns)},
		Spec: spirev1alpha1.ClusterSPIFFEIDSpec{SPIFFEIDTemplate: "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace", ClassName: config.DefaultClassName}})
	p := plainPod(ns, "app", nil)
	require.NoError(t, k8s.Create(context.Background(), p))
	require.NotEmpty(t, p.Annotations[annotations.StatusAnnotation])
	e := newCheckEnv(t)
	e.opts.Namespaces = []string{ns}
	chkRequire(t, chkRun(t, cp.Config, e.opts), check.CheckRegistration, check.Fail, "rejected by spire-controller-manager's parser", check.CheckRegistrationStatus)
}

// TestCheckReadsTheWebhookConfiguration reads the configuration from the webhook's Deployment and
// ConfigMap, as `check` does when --config is not given.
func TestCheckReadsTheWebhookConfiguration(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t, false, nil)
	cm := webhookDeployment(t, ns, "trustDomain: apps.example.com\nclusterName: prod\nsocketFileName: socket\n")

	cfg, src, err := check.ClusterConfig(ctx, k8s, types.NamespacedName{Namespace: ns, Name: "spire-mesh-injector"})
	require.NoError(t, err)
	assert.Equal(t, "apps.example.com", cfg.TrustDomain)
	assert.Equal(t, "socket", cfg.SocketFileName)
	assert.Equal(t, fmt.Sprintf("ConfigMap %s/spire-mesh-injector-config-abc123 key config.yaml", ns), src)

	cm.Data["config.yaml"] = "trustDomain: apps.example.com\nfailurePolicy: Maybe\n"
	require.NoError(t, k8s.Update(ctx, cm))
	_, _, err = check.ClusterConfig(ctx, k8s, types.NamespacedName{Namespace: ns, Name: "spire-mesh-injector"})
	require.ErrorContains(t, err, "failurePolicy")

	_, _, err = check.ClusterConfig(ctx, k8s, types.NamespacedName{Namespace: ns, Name: "absent"})
	require.True(t, apierrors.IsNotFound(err), "%v", err)
}

// TestCheckConfigFinding: the config finding on the real API server, as `check` resolves the
// configuration (UseConfig): OK naming the webhook's ConfigMap when the webhook's Deployment and
// ConfigMap are read, OK naming the file with --config, and a warning that the report compares
// against the built-in defaults, saying why, when the webhook's configuration cannot be read (no
// Deployment, or a ConfigMap that does not validate); a --config file that does not load is an
// error, not a report.
func TestCheckConfigFinding(t *testing.T) {
	e := newCheckEnv(t)
	ctx := context.Background()
	c, err := client.New(cp.Config, client.Options{Scheme: registration.Scheme()})
	require.NoError(t, err)
	own := "trustDomain: example.org\nclusterName: envtest\njwtHelper:\n  image: registry.example/spire-mesh-injector:test\ncsiDriver: " + e.csi + "\n"
	cm := webhookDeployment(t, e.infra, own)
	deployment := types.NamespacedName{Namespace: e.infra, Name: "spire-mesh-injector"}
	resolve := func(t *testing.T, file string, deployment types.NamespacedName) *check.Report {
		t.Helper()
		o := e.opts
		o.Config, o.ConfigSource = nil, ""
		require.NoError(t, o.UseConfig(ctx, c, file, deployment))
		return chkRun(t, cp.Config, o)
	}

	t.Run("the webhook's own", func(t *testing.T) {
		r := resolve(t, "", deployment)
		chkRequire(t, r, check.CheckConfig, check.OK, fmt.Sprintf("configuration from ConfigMap %s/%s key config.yaml", e.infra, cm.Name))
	})
	t.Run("a file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "config.yaml")
		require.NoError(t, os.WriteFile(file, []byte(own), 0o600))
		r := resolve(t, file, types.NamespacedName{Namespace: e.infra, Name: "absent"})
		chkRequire(t, r, check.CheckConfig, check.OK, "configuration from file "+file)
	})
	t.Run("a file that does not load", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "config.yaml")
		require.NoError(t, os.WriteFile(file, []byte(own+"failurePolicy: Maybe\n"), 0o600))
		o := e.opts
		require.ErrorContains(t, o.UseConfig(ctx, c, file, deployment), "failurePolicy")
	})
	// With the defaults, other findings differ too (another CSI driver): only the config finding
	// is the point here.
	t.Run("no webhook Deployment", func(t *testing.T) {
		r := resolve(t, "", types.NamespacedName{Namespace: e.infra, Name: "absent"})
		chkRequire(t, r, check.CheckConfig, check.Warn, "compared against the built-in default configuration", check.IDs...)
		chkRequire(t, r, check.CheckConfig, check.Warn, "not found", check.IDs...)
	})
	t.Run("a ConfigMap that does not validate", func(t *testing.T) {
		cm.Data["config.yaml"] = own + "failurePolicy: Maybe\n"
		require.NoError(t, k8s.Update(ctx, cm))
		r := resolve(t, "", deployment)
		chkRequire(t, r, check.CheckConfig, check.Warn, "failurePolicy", check.IDs...)
	})
}

// webhookDeployment creates the webhook's Deployment in ns as kustomize lays it out — serve with
// --config in a folder mounted from a ConfigMap of a generated name — and that ConfigMap holding
// configYAML, and returns the ConfigMap.
func webhookDeployment(t *testing.T, ns, configYAML string) *corev1.ConfigMap {
	t.Helper()
	ctx := context.Background()
	selector, template := podTemplate(map[string]string{"app": "smi"}, corev1.PodSpec{
		Containers: []corev1.Container{{Name: "webhook", Image: "smi", Args: []string{"serve", "--config=/etc/spire-mesh-injector/config.yaml"},
			VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: "/etc/spire-mesh-injector"}}}},
		Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "spire-mesh-injector-config-abc123"}}}}},
	})
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "spire-mesh-injector", Namespace: ns},
		Spec:       appsv1.DeploymentSpec{Selector: selector, Template: template},
	}
	require.NoError(t, k8s.Create(ctx, dep))
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "spire-mesh-injector-config-abc123", Namespace: ns},
		Data: map[string]string{"config.yaml": configYAML}}
	require.NoError(t, k8s.Create(ctx, cm))
	return cm
}

// TestCheckRBACIsReadOnlyAndSufficient applies the roles of kustomize/check (decoded strictly),
// binds them to a user who may do nothing else, and runs the check as that user against the
// default object names: the report must be the one cluster-admin gets, with nothing unreadable.
func TestCheckRBACIsReadOnlyAndSufficient(t *testing.T) {
	installCheckCRDs(t)
	ctx := context.Background()
	y, err := controlplane.Kustomize(filepath.Join(controlplane.Root(), "kustomize", "check"))
	require.NoError(t, err)
	var kinds []string
	for _, doc := range bytes.Split(y, []byte("\n---\n")) {
		var head metav1.TypeMeta
		require.NoError(t, yaml.Unmarshal(doc, &head))
		kinds = append(kinds, head.Kind)
		var obj client.Object
		var rules []rbacv1.PolicyRule
		switch head.Kind {
		case "ClusterRole":
			r := &rbacv1.ClusterRole{}
			require.NoError(t, yaml.UnmarshalStrict(doc, r))
			obj, rules = r, r.Rules
		case "Role":
			r := &rbacv1.Role{}
			require.NoError(t, yaml.UnmarshalStrict(doc, r))
			assert.Equal(t, leaseNamespace, r.Namespace)
			obj, rules = r, r.Rules
		default:
			t.Fatalf("kustomize/check renders a %s", head.Kind)
		}
		for _, rule := range rules {
			for _, v := range rule.Verbs {
				assert.Contains(t, []string{"get", "list"}, v, "%s %s: a verb that is not read-only", head.Kind, obj.GetName())
			}
			assert.NotContains(t, rule.Resources, "secrets")
		}
		createForTest(t, obj)
	}
	assert.ElementsMatch(t, []string{"ClusterRole", "Role"}, kinds)
	createForTest(t, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "smi-check-test"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "spire-mesh-injector-check"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: "checker"}}})
	createForTest(t, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "smi-check-test", Namespace: leaseNamespace},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "spire-mesh-injector-check"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: "checker"}}})

	// Every object the check reads, under the names the roles allow.
	for _, n := range []string{"istio-system", "zero-trust-workload-identity-manager"} {
		require.NoError(t, createNamespace(ctx, n, false))
	}
	createForTest(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"}, Data: map[string]string{"mesh": "trustDomain: example.org\n"}})
	createForTest(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "spire-controller-manager", Namespace: "zero-trust-workload-identity-manager"},
		Data: map[string]string{"config.yaml": "kind: ControllerManagerConfig\ntrustDomain: example.org\nclassName: " + config.DefaultClassName + "\n"}})
	createForTest(t, &unstructured.Unstructured{Object: map[string]any{"apiVersion": "operator.openshift.io/v1alpha1", "kind": "ZeroTrustWorkloadIdentityManager",
		"metadata": map[string]any{"name": "cluster"}, "spec": map[string]any{"trustDomain": "example.org"}}})
	createForTest(t, &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: testConfig.CSIDriver},
		Spec: storagev1.CSIDriverSpec{VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral}}})
	ns := namespace(t, true, nil)
	require.NoError(t, k8s.Create(ctx, plainPod(ns, "app", nil)))

	impersonated := rest.CopyConfig(cp.Config)
	impersonated.Impersonate = rest.ImpersonationConfig{UserName: "checker"}
	c, err := client.New(impersonated, client.Options{Scheme: registration.Scheme()})
	require.NoError(t, err)
	// What the command does first: the webhook's configuration from its Deployment (absent in
	// this suite, which runs the webhook in-process) — NotFound, not Forbidden.
	_, _, err = check.ClusterConfig(ctx, c, types.NamespacedName{Namespace: leaseNamespace, Name: "spire-mesh-injector"})
	require.True(t, apierrors.IsNotFound(err), "%v", err)

	o := check.Options{Config: testConfig, ConfigSource: "test", Namespaces: []string{ns}}
	admin, checker := chkRun(t, cp.Config, o), chkRun(t, impersonated, o)
	assert.Equal(t, admin, checker)
	for _, f := range checker.Findings {
		assert.NotContains(t, f.What+f.Why, "forbidden", "%+v", f)
	}
	// check pod reads the same, and policies in every namespace.
	adminClient, err := client.New(cp.Config, client.Options{Scheme: registration.Scheme()})
	require.NoError(t, err)
	adminPod, err := check.RunPod(ctx, adminClient, o, ns, "app")
	require.NoError(t, err)
	checkerPod, err := check.RunPod(ctx, c, o, ns, "app")
	require.NoError(t, err)
	assert.Equal(t, adminPod, checkerPod)
	for _, f := range checkerPod.Findings {
		assert.NotContains(t, f.What+f.Why, "forbidden", "%+v", f)
	}
	// The suite's webhook is reachable at a URL and its registration exists: the report is about
	// this namespace, read in full.
	chkRequire(t, checker, check.CheckRegistration, check.OK, "present and valid", check.CheckWebhookFailurePolicy, check.CheckRegistrationStatus, check.CheckCSIDriver)
}

func chkWithYAML(t *testing.T, base *config.Config, extra string) *config.Config {
	t.Helper()
	b, err := yaml.Marshal(base)
	require.NoError(t, err)
	// Later keys win in a YAML mapping decoded by sigs.k8s.io/yaml only if they are not
	// duplicates, which the strict decoder refuses: merge as maps instead.
	var m, add map[string]any
	require.NoError(t, yaml.Unmarshal(b, &m))
	require.NoError(t, yaml.Unmarshal([]byte(extra), &add))
	chkMerge(m, add)
	b, err = yaml.Marshal(m)
	require.NoError(t, err)
	c, err := config.Parse(b)
	require.NoError(t, err)
	return c
}

func chkMerge(dst, src map[string]any) {
	for k, v := range src {
		if sub, ok := v.(map[string]any); ok {
			if d, ok := dst[k].(map[string]any); ok {
				chkMerge(d, sub)
				continue
			}
		}
		dst[k] = v
	}
}

func chkRef[T any](v T) *T { return &v }
