package manifests

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ztwimSpec lists, per kind, the spec fields ZTWIM's API (github.com/openshift/
// zero-trust-workload-identity-manager, api/v1alpha1) defines, and the required ones. Every ZTWIM
// object is cluster-scoped and must be named "cluster" (a CEL rule of the CRDs); booleans are
// strings.
var ztwimSpec = map[string]struct{ allowed, required []string }{
	"ZeroTrustWorkloadIdentityManager": {allowed: []string{"trustDomain", "clusterName", "bundleConfigMap"}, required: []string{"trustDomain", "clusterName"}},
	"SpireServer": {allowed: []string{"jwtIssuer", "caSubject", "persistence", "datastore", "logLevel", "logFormat", "caValidity", "defaultX509Validity", "defaultJWTValidity", "caKeyType", "jwtKeyType", "keyManager", "federation", "labels", "resources", "affinity", "tolerations", "nodeSelector"},
		required: []string{"jwtIssuer", "caSubject", "persistence", "datastore"}},
	"SpireAgent":                 {allowed: []string{"socketPath", "nodeAttestor", "workloadAttestors", "logLevel", "logFormat", "labels", "resources", "affinity", "tolerations", "nodeSelector"}},
	"SpiffeCSIDriver":            {allowed: []string{"agentSocketPath", "pluginName", "labels", "resources", "affinity", "tolerations", "nodeSelector"}},
	"SpireOIDCDiscoveryProvider": {allowed: []string{"jwtIssuer", "csiDriverName", "replicaCount", "managedRoute", "externalSecretRef", "logLevel", "logFormat", "labels", "resources", "affinity", "tolerations", "nodeSelector"}, required: []string{"jwtIssuer"}},
}

var jwtIssuer = regexp.MustCompile(`^(?i)https?://[^\s?#]+$`)

func checkZTWIM(t *testing.T, obj map[string]any) {
	kind := obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	assert.Equal(t, "cluster", meta["name"], "ZTWIM objects must be named cluster")
	assert.NotContains(t, meta, "namespace", "ZTWIM objects are cluster-scoped")
	spec, _ := obj["spec"].(map[string]any)
	def := ztwimSpec[kind]
	for k := range spec {
		assert.Contains(t, def.allowed, k, "%s.spec.%s is not a field of ZTWIM's API", kind, k)
	}
	for _, k := range def.required {
		assert.Contains(t, spec, k, "%s.spec.%s is required", kind, k)
	}
	if iss, ok := spec["jwtIssuer"].(string); ok {
		assert.Regexp(t, jwtIssuer, iss)
	}
	for _, k := range []string{"managedRoute"} {
		if v, ok := spec[k]; ok {
			assert.IsType(t, "", v, "%s.spec.%s is a string (\"true\"/\"false\")", kind, k)
		}
	}
	if kind == "SpiffeCSIDriver" {
		assert.Equal(t, "csi.spiffe.io", spec["pluginName"], "spire-mesh-injector's default csiDriver")
	}
}

// checkSail checks the Sail operator's Istio and IstioCNI (sailoperator.io/v1): cluster-scoped,
// the spec fields its API defines, and the values spire-mesh-injector's setup relies on.
func checkSail(t *testing.T, obj map[string]any) {
	meta, _ := obj["metadata"].(map[string]any)
	assert.NotContains(t, meta, "namespace", "Sail objects are cluster-scoped")
	spec, _ := obj["spec"].(map[string]any)
	for k := range spec {
		assert.Contains(t, []string{"version", "namespace", "profile", "updateStrategy", "values"}, k, "spec.%s", k)
	}
	if obj["kind"] == "IstioCNI" {
		assert.Equal(t, "default", meta["name"], "the IstioCNI must be named default")
		return
	}
	values, _ := spec["values"].(map[string]any)
	mesh, _ := values["meshConfig"].(map[string]any)
	require.NotNil(t, mesh)
	assert.Equal(t, "apps.example.com", mesh["trustDomain"], "the trust domain must match ZTWIM's")
	pilot, _ := values["pilot"].(map[string]any)
	env, _ := pilot["env"].(map[string]any)
	// Behaviour is tested with Istio's own control plane in test/istio/xds; the fields are the Sail
	// API's here.
	assert.Equal(t, "false", env["PILOT_JWT_ENABLE_REMOTE_JWKS"], "istiod fetches the JWKS (Envoy would fetch it in plain text)")
	assert.Equal(t, "true", env["PILOT_SKIP_VALIDATE_TRUST_DOMAIN"], "federated peers' SANs are checked by the SPIFFE validator, not narrowed to the local trust domain")
	assert.IsType(t, "", pilot["jwksResolverExtraRootCA"])
	assert.NotContains(t, values, "sidecarInjectorWebhook", "no SPIRE injection template is needed with spire-mesh-injector")
}
