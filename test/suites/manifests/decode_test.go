// Package manifests checks, so that they cannot drift, every object the project ships: each
// kustomize overlay and component rendered with the kustomize library, and every file under
// manifests/, decoded strictly (unknown fields are errors) into its real Go type. The Rego policy
// is tested with OPA's Go library.
package manifests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	certmanagerv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	k8snetworkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
)

// types maps apiVersion/kind to a constructor of its Go type.
var types = map[string]func() any{
	"v1/Namespace":       func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount":  func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":       func() any { return &corev1.ConfigMap{} },
	"v1/Service":         func() any { return &corev1.Service{} },
	"apps/v1/Deployment": func() any { return &appsv1.Deployment{} },
	"rbac.authorization.k8s.io/v1/ClusterRole":                         func() any { return &rbacv1.ClusterRole{} },
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding":                  func() any { return &rbacv1.ClusterRoleBinding{} },
	"rbac.authorization.k8s.io/v1/Role":                                func() any { return &rbacv1.Role{} },
	"rbac.authorization.k8s.io/v1/RoleBinding":                         func() any { return &rbacv1.RoleBinding{} },
	"policy/v1/PodDisruptionBudget":                                    func() any { return &policyv1.PodDisruptionBudget{} },
	"scheduling.k8s.io/v1/PriorityClass":                               func() any { return &schedulingv1.PriorityClass{} },
	"admissionregistration.k8s.io/v1/MutatingWebhookConfiguration":     func() any { return &admissionregistrationv1.MutatingWebhookConfiguration{} },
	"admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy":        func() any { return &admissionregistrationv1.ValidatingAdmissionPolicy{} },
	"admissionregistration.k8s.io/v1/ValidatingAdmissionPolicyBinding": func() any { return &admissionregistrationv1.ValidatingAdmissionPolicyBinding{} },
	"cert-manager.io/v1/Issuer":                                        func() any { return &certmanagerv1.Issuer{} },
	"cert-manager.io/v1/Certificate":                                   func() any { return &certmanagerv1.Certificate{} },
	"monitoring.coreos.com/v1/ServiceMonitor":                          func() any { return &monitoringv1.ServiceMonitor{} },
	"monitoring.coreos.com/v1/PrometheusRule":                          func() any { return &monitoringv1.PrometheusRule{} },
	"spire.spiffe.io/v1alpha1/ClusterSPIFFEID":                         func() any { return &spirev1alpha1.ClusterSPIFFEID{} },
	"spire.spiffe.io/v1alpha1/ClusterFederatedTrustDomain":             func() any { return &spirev1alpha1.ClusterFederatedTrustDomain{} },
	"security.istio.io/v1/PeerAuthentication":                          func() any { return &securityv1.PeerAuthentication{} },
	"security.istio.io/v1/AuthorizationPolicy":                         func() any { return &securityv1.AuthorizationPolicy{} },
	"security.istio.io/v1/RequestAuthentication":                       func() any { return &securityv1.RequestAuthentication{} },
	"networking.istio.io/v1alpha3/EnvoyFilter":                         func() any { return &networkingv1alpha3.EnvoyFilter{} },
	"networking.k8s.io/v1/NetworkPolicy":                               func() any { return &k8snetworkingv1.NetworkPolicy{} },
}

// notOnTheProxy are kinds whose Go API modules the Go module proxy does not serve (ZTWIM's and the
// Sail operator's): their objects are checked against the fields those APIs define instead (see
// checkZTWIM and checkSail).
var notOnTheProxy = map[string]func(t *testing.T, obj map[string]any){
	"operator.openshift.io/v1alpha1/ZeroTrustWorkloadIdentityManager": checkZTWIM,
	"operator.openshift.io/v1alpha1/SpireServer":                      checkZTWIM,
	"operator.openshift.io/v1alpha1/SpireAgent":                       checkZTWIM,
	"operator.openshift.io/v1alpha1/SpiffeCSIDriver":                  checkZTWIM,
	"operator.openshift.io/v1alpha1/SpireOIDCDiscoveryProvider":       checkZTWIM,
	"sailoperator.io/v1/Istio":                                        checkSail,
	"sailoperator.io/v1/IstioCNI":                                     checkSail,
}

func splitDocs(b []byte) [][]byte {
	var out [][]byte
	for _, d := range bytes.Split(b, []byte("\n---")) {
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			out = append(out, d)
		}
	}
	return out
}

func stripComments(b []byte) []byte {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return []byte(strings.Join(out, "\n"))
}

// decodeAll strictly decodes every document and returns the kinds seen.
func decodeAll(t *testing.T, where string, y []byte) []string {
	t.Helper()
	var kinds []string
	for i, doc := range splitDocs(y) {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		require.NoError(t, yaml.Unmarshal(doc, &head), "%s document %d", where, i+1)
		key := head.APIVersion + "/" + head.Kind
		kinds = append(kinds, head.Kind)
		if check, ok := notOnTheProxy[key]; ok {
			var obj map[string]any
			require.NoError(t, yaml.Unmarshal(doc, &obj))
			t.Run(fmt.Sprintf("%s#%d %s", where, i+1, head.Kind), func(t *testing.T) { check(t, obj) })
			continue
		}
		newObj, ok := types[key]
		require.True(t, ok, "%s document %d: no Go type registered for %s; add it (or, if its module is not served, to notOnTheProxy)", where, i+1, key)
		obj := newObj()
		require.NoError(t, yaml.UnmarshalStrict(doc, obj), "%s document %d (%s): not a valid %s", where, i+1, key, head.Kind)
		requireStrictProtoSpec(t, doc, obj, fmt.Sprintf("%s document %d (%s)", where, i+1, key))
	}
	return kinds
}

func TestKustomizeRendersValidObjects(t *testing.T) {
	root := filepath.Join(controlplane.Root(), "kustomize")
	want := map[string][]string{
		"base":                                {"ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "MutatingWebhookConfiguration", "Namespace", "PodDisruptionBudget", "PriorityClass", "Role", "RoleBinding", "Service", "ServiceAccount"},
		"overlays/cert-manager":               {"Certificate", "Certificate", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "ConfigMap", "Deployment", "Issuer", "Issuer", "MutatingWebhookConfiguration", "Namespace", "PodDisruptionBudget", "PriorityClass", "Role", "RoleBinding", "Service", "ServiceAccount", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicyBinding"},
		"components/validating-policy":        {"ConfigMap", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicyBinding"},
		"components/monitoring":               {"PrometheusRule", "ServiceMonitor"},
		"components/network-policy":           {"NetworkPolicy"},
		"components/network-policy-openshift": {"NetworkPolicy"},
		"overlays/openshift":                  {"ClusterRole", "ClusterRoleBinding", "ConfigMap", "ConfigMap", "ConfigMap", "Deployment", "MutatingWebhookConfiguration", "Namespace", "NetworkPolicy", "PodDisruptionBudget", "PriorityClass", "PrometheusRule", "Role", "RoleBinding", "Service", "ServiceAccount", "ServiceMonitor", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicyBinding"},
	}
	for dir, kinds := range want {
		t.Run(dir, func(t *testing.T) {
			y, err := controlplane.Kustomize(filepath.Join(root, dir))
			require.NoError(t, err)
			got := decodeAll(t, dir, y)
			sort.Strings(got)
			assert.Equal(t, kinds, got)
		})
	}
}

// TestPolicyParameterIsTheWebhooksDriver: in every overlay that installs the validating policy, the
// CSI driver its parameter names is the one the webhook's configuration wires pods with, and the
// binding names the parameter object kustomize renders (paramRef names are not rewritten).
func TestPolicyParameterIsTheWebhooksDriver(t *testing.T) {
	root := filepath.Join(controlplane.Root(), "kustomize")
	for _, dir := range []string{"overlays/openshift", "overlays/cert-manager"} {
		t.Run(dir, func(t *testing.T) {
			y, err := controlplane.Kustomize(filepath.Join(root, dir))
			require.NoError(t, err)
			var webhookCfg *config.Config
			params := map[string]string{}
			var ref *admissionregistrationv1.ParamRef
			for _, doc := range splitDocs(y) {
				var cm corev1.ConfigMap
				if yaml.Unmarshal(doc, &cm) != nil {
					continue
				}
				switch {
				case cm.Kind == "ConfigMap" && cm.Data["config.yaml"] != "":
					webhookCfg, err = config.Parse([]byte(cm.Data["config.yaml"]))
					require.NoError(t, err)
				case cm.Kind == "ConfigMap" && cm.Data["csiDriver"] != "":
					params[cm.Namespace+"/"+cm.Name] = cm.Data["csiDriver"]
				case cm.Kind == "ValidatingAdmissionPolicyBinding":
					var b admissionregistrationv1.ValidatingAdmissionPolicyBinding
					require.NoError(t, yaml.Unmarshal(doc, &b))
					if b.Spec.ParamRef != nil {
						ref = b.Spec.ParamRef
					}
				}
			}
			require.NotNil(t, webhookCfg, "the webhook's configuration")
			require.NotNil(t, ref, "the policy binding's paramRef")
			driver, ok := params[ref.Namespace+"/"+ref.Name]
			require.True(t, ok, "the binding's paramRef %s/%s names a rendered ConfigMap (%v)", ref.Namespace, ref.Name, params)
			assert.Equal(t, webhookCfg.CSIDriver, driver)
		})
	}
}

func TestManifestsAreValidObjects(t *testing.T) {
	var files []string
	require.NoError(t, filepath.WalkDir(filepath.Join(controlplane.Root(), "manifests"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".yaml") {
			files = append(files, p)
		}
		return err
	}))
	require.GreaterOrEqual(t, len(files), 6)
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		rel, _ := filepath.Rel(controlplane.Root(), f)
		decodeAll(t, rel, b)
	}
}

// requireStrictProtoSpec decodes the spec of an Istio object again with protojson, which rejects
// unknown fields: Istio's Go types unmarshal their proto specs with a decoder that ignores them.
func requireStrictProtoSpec(t *testing.T, doc []byte, obj any, what string) {
	t.Helper()
	spec := reflect.ValueOf(obj).Elem().FieldByName("Spec")
	if !spec.IsValid() || !spec.CanAddr() {
		return
	}
	msg, ok := spec.Addr().Interface().(proto.Message)
	if !ok {
		return
	}
	var raw struct {
		Spec json.RawMessage `json:"spec"`
	}
	js, err := yaml.YAMLToJSON(doc)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(js, &raw))
	if len(raw.Spec) == 0 {
		return
	}
	fresh := msg.ProtoReflect().New().Interface()
	require.NoError(t, protojson.UnmarshalOptions{}.Unmarshal(raw.Spec, fresh), "%s: spec", what)
}
