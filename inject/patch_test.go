package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	jsonpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

// TestPatchKeepsFieldsOurTypesDoNotKnow: an API server newer than our k8s.io/api sends fields we
// cannot decode. Every operation the builder emits must touch only the fields the mutators change,
// so those fields survive on every element that is still there: metadata, each volume, each
// container and init container, each env var and each volume mount, whatever the webhook did to it
// (a volume turned into the CSI volume, a mount made read-only, an env value replaced). Only what
// the webhook adds itself carries none. Every golden case is run.
func TestPatchKeepsFieldsOurTypesDoNotKnow(t *testing.T) {
	chain := mutators.NewChain(podtest.Config(t))
	inputs, err := filepath.Glob(fixtures + "*.yaml")
	require.NoError(t, err)
	for _, in := range inputs {
		if strings.HasSuffix(in, ".golden.yaml") {
			continue
		}
		t.Run(filepath.Base(in), func(t *testing.T) {
			js, _ := podtest.Load(t, in)
			var doc map[string]any
			require.NoError(t, json.Unmarshal(js, &doc))
			mark := func(m map[string]any, what string) { m["futureField"] = "kept-" + what }
			meta := doc["metadata"].(map[string]any)
			mark(meta, "metadata")
			spec := doc["spec"].(map[string]any)
			mark(spec, "spec")
			for _, v := range list(spec, "volumes") {
				mark(v, "volume-"+v["name"].(string))
			}
			for _, kind := range []string{"initContainers", "containers"} {
				for _, c := range list(spec, kind) {
					name := c["name"].(string)
					mark(c, kind+"-"+name)
					for _, e := range list(c, "env") {
						mark(e, name+"-env-"+e["name"].(string))
					}
					for _, m := range list(c, "volumeMounts") {
						mark(m, name+"-mount-"+m["mountPath"].(string))
					}
				}
			}
			js, err := json.Marshal(doc)
			require.NoError(t, err)

			pod := podtest.Decode(t, js)
			res, err := Pod(chain.Run, pod, "shop")
			require.NoError(t, err)
			out := podtest.Apply(t, js, res.Ops)
			require.True(t, equality.Semantic.DeepEqual(res.Pod, podtest.Decode(t, out)), "the patch must give the wired pod")

			var got map[string]any
			require.NoError(t, json.Unmarshal(out, &got))
			kept := 0
			check := func(m map[string]any, what string, existed bool) {
				if !existed {
					assert.NotContains(t, m, "futureField", "%s was added by the webhook", what)
					return
				}
				assert.Equal(t, "kept-"+what, m["futureField"], "%s lost a field our types do not know", what)
				kept++
			}
			check(got["metadata"].(map[string]any), "metadata", true)
			gspec := got["spec"].(map[string]any)
			check(gspec, "spec", true)
			had := func(kind, name string) bool {
				for _, x := range list(spec, kind) {
					if x["name"] == name {
						return true
					}
				}
				return false
			}
			for _, v := range list(gspec, "volumes") {
				check(v, "volume-"+v["name"].(string), had("volumes", v["name"].(string)))
			}
			for _, kind := range []string{"initContainers", "containers"} {
				for _, c := range list(gspec, kind) {
					name := c["name"].(string)
					if !had(kind, name) {
						check(c, kind+"-"+name, false)
						continue
					}
					check(c, kind+"-"+name, true)
					var before map[string]any
					for _, x := range list(spec, kind) {
						if x["name"] == name {
							before = x
						}
					}
					for _, e := range list(c, "env") {
						existed := false
						for _, b := range list(before, "env") {
							existed = existed || b["name"] == e["name"]
						}
						check(e, name+"-env-"+e["name"].(string), existed)
					}
					for _, m := range list(c, "volumeMounts") {
						existed := false
						for _, b := range list(before, "volumeMounts") {
							existed = existed || b["mountPath"] == m["mountPath"]
						}
						check(m, name+"-mount-"+m["mountPath"].(string), existed)
					}
				}
			}
			assert.Greater(t, kept, 2)
		})
	}
}

// list returns the objects in m[key], a JSON array of objects.
func list(m map[string]any, key string) []map[string]any {
	raw, _ := m[key].([]any)
	out := make([]map[string]any, 0, len(raw))
	for _, x := range raw {
		out = append(out, x.(map[string]any))
	}
	return out
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
			got := podtest.Decode(t, podtest.Apply(t, podtest.JSON(t, orig), ops))
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
	got := podtest.Decode(t, podtest.Apply(t, podtest.JSON(t, orig), ops))
	assert.Equal(t, mut.Labels, got.Labels)
}

// TestJSONFieldsMatchEncodingJSON holds fieldOps' view of each element type's JSON object to
// encoding/json's: with no field set, with every field set, and with each field set alone, the
// fields jsonFieldsOf says are present are exactly the keys encoding/json writes, in its order.
func TestJSONFieldsMatchEncodingJSON(t *testing.T) {
	for _, typ := range []reflect.Type{reflect.TypeFor[corev1.Volume](), reflect.TypeFor[corev1.EnvVar](), reflect.TypeFor[corev1.VolumeMount](), reflect.TypeFor[corev1.Container]()} {
		t.Run(typ.Name(), func(t *testing.T) {
			fs := jsonFieldsOf(typ)
			require.NotEmpty(t, fs)
			check := func(what string, v reflect.Value) {
				js, err := json.Marshal(v.Interface())
				require.NoError(t, err)
				var keys []string
				dec := json.NewDecoder(bytes.NewReader(js))
				_, err = dec.Token() // {
				require.NoError(t, err)
				for dec.More() {
					k, err := dec.Token()
					require.NoError(t, err)
					keys = append(keys, escape(k.(string)))
					var skip json.RawMessage
					require.NoError(t, dec.Decode(&skip))
				}
				var present []string
				for _, f := range fs {
					if f.present(v.FieldByIndex(f.index)) {
						present = append(present, f.name)
					}
				}
				assert.Equal(t, keys, present, what)
			}
			check("no field set", reflect.New(typ).Elem())
			all := reflect.New(typ).Elem()
			fill(all, 0)
			check("every field set", all)
			for _, f := range fs {
				one := reflect.New(typ).Elem()
				fill(one.FieldByIndex(f.index), 0)
				check(f.name+" set alone", one)
			}
		})
	}
}

// fill sets every exported field reachable from v to a value that is not empty.
func fill(v reflect.Value, depth int) {
	if depth > 8 || !v.CanSet() {
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), depth+1)
			}
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), depth+1)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(v.Index(0), depth+1)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k, depth+1)
		fill(e, depth+1)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1)
	}
}

// TestEncodePatchIsEncodingJSON: the patch is written directly, and must be what encoding/json
// writes for the same operations, byte for byte, whatever the strings hold (HTML characters,
// control characters, non-ASCII, invalid UTF-8, U+2028) and whatever the values are.
func TestEncodePatchIsEncodingJSON(t *testing.T) {
	strs := []string{"", "plain", "spiffe.io~1audience", `quo"te`, `back\slash`, "a<b>&c", "tab\there", "nul\x00", "\x7f",
		"café", "line\u2028sep", "bad\xffutf8", "emoji 🙂", strings.Repeat("x", 300)}
	var ops []jsonpatch.Operation
	for _, s := range strs {
		ops = append(ops, jsonpatch.NewOperation("add", "/metadata/annotations/"+escape(s), s), jsonpatch.NewOperation("replace", s, s))
	}
	readOnly := true
	ops = append(ops,
		jsonpatch.NewOperation("remove", "/spec/volumes/0/emptyDir", nil),
		jsonpatch.NewOperation("add", "/metadata/labels", map[string]string{"b": "<2>", "a": "1"}),
		jsonpatch.NewOperation("add", "/spec/volumes/0/csi", &corev1.CSIVolumeSource{Driver: "csi.spiffe.io", ReadOnly: &readOnly}),
		jsonpatch.NewOperation("add", "/spec/containers/0/env/-", corev1.EnvVar{Name: "X", Value: "<&>"}),
		jsonpatch.NewOperation("add", "/spec/containers/0/volumeMounts/0/readOnly", true),
		jsonpatch.NewOperation("add", "/spec/containers/0/ports", []corev1.ContainerPort{{ContainerPort: 8080}}),
		jsonpatch.NewOperation("remove", "/x", "a remove with a value keeps it, as encoding/json does"),
	)
	for i := range ops {
		got, err := EncodePatch(ops[i : i+1])
		require.NoError(t, err)
		checkEncoded(t, ops[i:i+1], got)
	}
	got, err := EncodePatch(ops)
	require.NoError(t, err)
	checkEncoded(t, ops, got)

	_, err = EncodePatch([]jsonpatch.Operation{jsonpatch.NewOperation("add", "/a", nil)})
	require.ErrorContains(t, err, "patch operation add /a has no value")
}

// TestReleasedStorageChangesNothing: an admission's copy reuses the storage of the one before
// (Outcome.Release). Every fixture wired after every other, each outcome released before the next
// admission, gives exactly the pod and the patch it gives on storage of its own: the same patch
// byte for byte, whatever order Go's maps iterate in.
func TestReleasedStorageChangesNothing(t *testing.T) {
	chain := mutators.NewChain(podtest.Config(t))
	inputs, err := filepath.Glob(fixtures + "*.yaml")
	require.NoError(t, err)
	var pods []*corev1.Pod
	var want []Outcome
	for _, in := range inputs {
		if strings.HasSuffix(in, ".golden.yaml") {
			continue
		}
		_, pod := podtest.Load(t, in)
		out, err := Pod(chain.Run, pod, "shop") // never released: storage of its own
		require.NoError(t, err, in)
		pods, want = append(pods, pod), append(want, out)
	}
	require.Greater(t, len(pods), 5)
	for _, first := range pods {
		out, err := Pod(chain.Run, first, "shop")
		require.NoError(t, err)
		out.Release()
		require.Nil(t, out.Pod, "a released outcome no longer offers its pod")
		for i, pod := range pods {
			got, err := Pod(chain.Run, pod, "shop")
			require.NoError(t, err)
			require.Equal(t, string(want[i].Patch), string(got.Patch))
			require.True(t, equality.Semantic.DeepEqual(want[i].Pod, got.Pod), cmp.Diff(want[i].Pod, got.Pod))
			got.Release()
		}
	}
}

// TestCopyKeepsNilAndEmptyApart: the copy says "no volumes" as the pod does (absent or []), and
// leaves only its own room after a copied list, so that a mutator's appends cannot write into the
// next container's storage.
func TestCopyKeepsNilAndEmptyApart(t *testing.T) {
	s := &scratch{env: make([]corev1.EnvVar, 0, 16)} // as after an earlier admission: room to spare
	pod := &corev1.Pod{Spec: corev1.PodSpec{Volumes: []corev1.Volume{}, Containers: []corev1.Container{
		{Name: "a", Env: []corev1.EnvVar{{Name: "X"}}}, {Name: "b", Env: make([]corev1.EnvVar, 1, 8)}}}}
	pod.Labels = map[string]string{}
	mut := s.copyOf(pod)
	require.NotNil(t, mut.Spec.Volumes)
	require.Nil(t, mut.Spec.InitContainers)
	require.Nil(t, mut.Annotations)
	require.NotNil(t, mut.Labels)
	for i := range mut.Spec.Containers {
		c := &mut.Spec.Containers[i]
		require.Equal(t, len(c.Env)+slack, cap(c.Env), "container %s", c.Name)
	}
	a := &mut.Spec.Containers[0]
	for i := range slack + 1 {
		a.Env = append(a.Env, corev1.EnvVar{Name: fmt.Sprint("Y", i)})
		require.Equal(t, "", mut.Spec.Containers[1].Env[0].Name, "an append to one container's env changed the next one's")
	}
	require.Len(t, pod.Spec.Containers[0].Env, 1)
}

// TestReleaseDropsGrownMaps: a scratch given back keeps its lists' storage up to a bound, and no
// map grown by a pod with unusually many labels or annotations (a map never shrinks, and clearing
// it for the next admission costs as much as its size).
func TestReleaseDropsGrownMaps(t *testing.T) {
	pod := &corev1.Pod{}
	pod.Labels, pod.Annotations = map[string]string{"app": "a"}, map[string]string{}
	for i := range maxScratchKeys + 1 {
		pod.Annotations[fmt.Sprint("a", i)] = "v"
	}
	s := new(scratch)
	s.copyOf(pod)
	s.release()
	require.NotNil(t, s.labels)
	require.Nil(t, s.annotations)
}
