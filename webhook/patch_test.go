package webhook

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

// TestPatchKeepsFieldsOurTypesDoNotKnow: an API server newer than our k8s.io/api sends fields we
// cannot decode. The patch must only touch what the mutators own, so those fields survive.
func TestPatchKeepsFieldsOurTypesDoNotKnow(t *testing.T) {
	js, _ := podtest.Load(t, fixtures+"jwt-classic-sidecar.yaml")
	var doc map[string]any
	require.NoError(t, json.Unmarshal(js, &doc))
	spec := doc["spec"].(map[string]any)
	spec["futurePodField"] = map[string]any{"enabled": true}
	withEnv := map[string]bool{}
	for _, c := range spec["containers"].([]any) {
		cm := c.(map[string]any)
		cm["futureContainerField"] = "kept-" + cm["name"].(string)
		if env, ok := cm["env"].([]any); ok && len(env) > 0 {
			env[0].(map[string]any)["futureEnvField"] = "kept"
			withEnv[cm["name"].(string)] = true
		}
		for _, m := range cm["volumeMounts"].([]any) {
			m.(map[string]any)["futureMountField"] = "kept"
		}
	}
	for _, v := range spec["volumes"].([]any) {
		vm := v.(map[string]any)
		if vm["name"] == "istio-data" {
			vm["futureVolumeField"] = "kept"
		}
	}
	doc["metadata"].(map[string]any)["futureMetaField"] = "kept"
	js, err := json.Marshal(doc)
	require.NoError(t, err)

	pod := podtest.Decode(t, js)
	orig := pod.DeepCopy()
	_, err = mutators.NewChain(podtest.Config(t)).Run(pod, mutators.Request{Namespace: "shop"})
	require.NoError(t, err)
	ops, err := Patch(orig, pod)
	require.NoError(t, err)
	out := podtest.Apply(t, js, ops)

	var got map[string]any
	require.NoError(t, json.Unmarshal(out, &got))
	gspec := got["spec"].(map[string]any)
	assert.Equal(t, map[string]any{"enabled": true}, gspec["futurePodField"])
	assert.Equal(t, "kept", got["metadata"].(map[string]any)["futureMetaField"])
	for _, c := range gspec["containers"].([]any) {
		cm := c.(map[string]any)
		if cm["name"] == mutators.JWTHelperContainer {
			continue // added by the webhook
		}
		assert.Equal(t, "kept-"+cm["name"].(string), cm["futureContainerField"])
		if withEnv[cm["name"].(string)] {
			assert.Equal(t, "kept", cm["env"].([]any)[0].(map[string]any)["futureEnvField"], cm["name"])
		}
		for _, m := range cm["volumeMounts"].([]any) {
			mm := m.(map[string]any)
			if mm["name"] == mutators.JWTVolume {
				continue
			}
			// The workload-socket mount is changed (readOnly) in place: replaced as a whole, it is
			// the webhook's to own; every other mount keeps its unknown fields.
			if mm["name"] != mutators.IstioSocketVolume {
				assert.Equal(t, "kept", mm["futureMountField"], "%s %s", cm["name"], mm["name"])
			}
		}
	}
	found := false
	for _, v := range gspec["volumes"].([]any) {
		if vm := v.(map[string]any); vm["name"] == "istio-data" {
			found = true
			assert.Equal(t, "kept", vm["futureVolumeField"])
		}
	}
	assert.True(t, found)
	assert.True(t, equality.Semantic.DeepEqual(pod, podtest.Decode(t, out)))
}

func TestPatchLists(t *testing.T) {
	env := func(names ...string) []corev1.EnvVar {
		var out []corev1.EnvVar
		for _, n := range names {
			out = append(out, corev1.EnvVar{Name: n, Value: "v-" + n})
		}
		return out
	}
	tests := []struct {
		name      string
		orig, mut []corev1.EnvVar
		ops       int
		wantErr   string
	}{
		{name: "unchanged", orig: env("A", "B"), mut: env("A", "B"), ops: 0},
		{name: "add to empty", orig: nil, mut: env("A"), ops: 1},
		{name: "append two", orig: env("A"), mut: env("A", "B", "C"), ops: 2},
		{name: "insert in the middle", orig: env("A", "C"), mut: env("A", "B", "C"), ops: 1},
		{name: "remove all", orig: env("A", "B"), mut: nil, ops: 1},
		{name: "remove two and add one", orig: env("A", "B", "C", "D"), mut: env("B", "E", "D"), ops: 3},
		{name: "repeated names", orig: env("A", "A", "B"), mut: env("A", "B", "X"), ops: 2},
		{name: "change value", orig: env("A", "B"), mut: []corev1.EnvVar{{Name: "A", Value: "v-A"}, {Name: "B", Value: "new"}}, ops: 1},
		{name: "reorder becomes remove and add", orig: env("A", "B"), mut: env("B", "A"), ops: 2},
		{name: "earlier duplicate removed", orig: env("S", "X", "S"), mut: env("X", "S"), ops: 1},
		{name: "long lists", orig: env("A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P", "Q", "R"), mut: env("A", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P", "Q", "R", "S"), ops: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Env: tt.orig}}}}
			mut := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Env: tt.mut}}}}
			ops, err := Patch(orig, mut)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Len(t, ops, tt.ops, "%v", ops)
			got := podtest.Decode(t, podtest.Apply(t, mustJSON(t, orig), ops))
			assert.True(t, equality.Semantic.DeepEqual(mut, got), "got %v", got.Spec.Containers[0].Env)
		})
	}
}

func TestPatchEscapesKeys(t *testing.T) {
	orig := &corev1.Pod{}
	orig.Labels = map[string]string{"a/b": "1", "keep": "x"}
	mut := orig.DeepCopy()
	mut.Labels["a/b"] = "2"
	mut.Labels["c~d/e"] = "3"
	delete(mut.Labels, "keep")
	ops, err := Patch(orig, mut)
	require.NoError(t, err)
	paths := map[string]string{}
	for _, op := range ops {
		paths[op.Path] = op.Operation
	}
	assert.Equal(t, map[string]string{"/metadata/labels/a~1b": "replace", "/metadata/labels/c~0d~1e": "add", "/metadata/labels/keep": "remove"}, paths)
	got := podtest.Decode(t, podtest.Apply(t, mustJSON(t, orig), ops))
	assert.Equal(t, mut.Labels, got.Labels)
}
