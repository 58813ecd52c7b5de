// Package podtest holds what the project's tests share: the fixed test configuration, fixture
// loading, patch application, and a stand-in for Istio's sidecar injector (Istio's control plane
// cannot run in these tests; the stand-in follows Istio's injection template for the parts that
// matter to SPIRE wiring, and is named as a stand-in wherever it is used).
package podtest

import (
	"encoding/json"
	"os"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	gjsonpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// TestConfigYAML is the configuration every golden file was made with.
const TestConfigYAML = `
trustDomain: example.org
clusterName: test-cluster
jwtHelper:
  image: registry.example/spire-mesh-injector:test
`

// Config returns the test configuration.
func Config(t testing.TB) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(TestConfigYAML))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Load reads a YAML pod and returns its JSON and the decoded pod.
func Load(t testing.TB, path string) ([]byte, *corev1.Pod) {
	t.Helper()
	y, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return js, Decode(t, js)
}

// Decode decodes pod JSON as the webhook does.
func Decode(t testing.TB, js []byte) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{}
	if err := kjson.UnmarshalCaseSensitivePreserveInts(js, pod); err != nil {
		t.Fatal(err)
	}
	return pod
}

// Apply applies ops to the JSON document js, as the API server does.
func Apply(t testing.TB, js []byte, ops []gjsonpatch.Operation) []byte {
	t.Helper()
	out, err := ApplyOps(js, ops)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ApplyOps applies ops to js.
func ApplyOps(js []byte, ops []gjsonpatch.Operation) ([]byte, error) {
	if len(ops) == 0 {
		return js, nil
	}
	raw, err := json.Marshal(ops)
	if err != nil {
		return nil, err
	}
	p, err := jsonpatch.DecodePatch(raw)
	if err != nil {
		return nil, err
	}
	return p.Apply(js)
}

// JSON encodes v, failing the test if it cannot.
func JSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
