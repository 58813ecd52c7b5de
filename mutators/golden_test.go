package mutators_test

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	gjsonpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/inject"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

var update = flag.Bool("update", false, "rewrite the golden files from the current output")

// requestNamespace is the namespace of the admission request for fixtures whose pod names none.
const requestNamespace = "shop"

// TestGolden runs every testdata/<case>.yaml pod through the chain and the patch builder, applies
// the patch to the pod's JSON as the API server would, and compares the result with
// <case>.golden.yaml. For every case it also checks the patch against the generic diff (applied to
// the same input, both must give the same document) and that a second run changes nothing.
func TestGolden(t *testing.T) {
	chain := mutators.NewChain(podtest.Config(t))
	inputs, err := filepath.Glob("testdata/*.yaml")
	require.NoError(t, err)
	var cases int
	for _, in := range inputs {
		if strings.HasSuffix(in, ".golden.yaml") {
			continue
		}
		cases++
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			js, pod := podtest.Load(t, in)
			ns := pod.Namespace
			if ns == "" {
				ns = requestNamespace
			}
			// Through the webhook's own entry point, which mutates a copy that shares what mutators
			// must not modify in place: the pod as it arrived must be untouched.
			orig := pod
			snapshot := pod.DeepCopy()
			res, err := inject.Pod(chain.Run, orig, ns)
			require.NoError(t, err)
			defer res.Release() // the next case's copy reuses its storage, as the next admission's does
			require.True(t, equality.Semantic.DeepEqual(snapshot, orig), "a mutator modified the original pod in place:\n%s", cmp.Diff(snapshot, orig))
			pod = res.Pod
			patched := podtest.Apply(t, js, res.Ops)

			got := podtest.Decode(t, patched)
			require.True(t, equality.Semantic.DeepEqual(pod, got), "patch applied to the input differs from the mutated pod:\n%s", cmp.Diff(pod, got))

			// Oracle: the generic whole-pod diff and our patch, applied to the same input, give the
			// same document. Compared as JSON, not as decoded pods: decoding both would compare
			// the mutated pod with itself. The inputs are the fixture's bytes, where the generic
			// diff applies to them (its operations address list elements by index, and on elements
			// shifted by an insertion may name fields the hand-written fixture leaves out), and the
			// pod's encoding, as an API server sends it.
			origJS, err := json.Marshal(orig)
			require.NoError(t, err)
			mutJS, err := json.Marshal(pod)
			require.NoError(t, err)
			generic, err := gjsonpatch.CreatePatch(origJS, mutJS)
			require.NoError(t, err)
			inputs := map[string][]byte{"the pod's encoding": origJS}
			if _, err := podtest.ApplyOps(js, generic); err == nil {
				inputs["the fixture's bytes"] = js
			}
			for what, input := range inputs {
				viaGeneric := podtest.Prune(podtest.JSONValue(t, podtest.Apply(t, input, generic)))
				viaOurs := podtest.Prune(podtest.JSONValue(t, podtest.Apply(t, input, res.Ops)))
				require.Empty(t, cmp.Diff(viaGeneric, viaOurs), "applied to %s, the generic diff and our patch disagree (-generic +ours)", what)
			}

			// Idempotent: the webhook reinvoked on its own output changes nothing.
			again, err := inject.Pod(chain.Run, got, ns)
			require.NoError(t, err)
			require.Empty(t, again.Ops, "second run changed the pod")
			again.Release()

			out, err := yaml.JSONToYAML(patched)
			require.NoError(t, err)
			golden := strings.TrimSuffix(in, ".yaml") + ".golden.yaml"
			if *update {
				require.NoError(t, os.WriteFile(golden, out, 0o644))
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err, "run go test ./mutators -update to create it")
			assert.Equal(t, string(want), string(out), "golden file %s differs; if the change is intended, run go test ./mutators -update", golden)
		})
	}
	require.GreaterOrEqual(t, cases, 10)
}

// TestConvergesWhateverTheOrder checks that the webhook's result depends only on the pod's final
// shape: a pod wired as a plain workload before Istio's injector (here its stand-in) added a proxy
// ends up exactly as a pod Istio injected first, once the webhook is reinvoked.
func TestConvergesWhateverTheOrder(t *testing.T) {
	chain := mutators.NewChain(podtest.Config(t))
	ours := func(p *corev1.Pod) *corev1.Pod {
		p = p.DeepCopy()
		_, err := chain.Run(p, mutators.Request{Namespace: "payments"})
		require.NoError(t, err)
		return p
	}
	istio := func(native bool) func(p *corev1.Pod) *corev1.Pod {
		return func(p *corev1.Pod) *corev1.Pod {
			p = p.DeepCopy()
			podtest.IstioStandIn(p, native)
			return p
		}
	}
	for _, fixture := range []string{"plain-workload", "jwt-plain-workload", "jwt-user-native-sidecar", "own-envoy", "host-network"} {
		for _, native := range []bool{false, true} {
			name := fixture + map[bool]string{false: "/classic", true: "/native"}[native]
			t.Run(name, func(t *testing.T) {
				_, p := podtest.Load(t, "testdata/"+fixture+".yaml")
				inject := istio(native)
				istioFirst := ours(inject(p))
				oursFirst := ours(inject(ours(p)))
				require.True(t, equality.Semantic.DeepEqual(istioFirst, oursFirst), "order changes the result:\n%s", cmp.Diff(istioFirst, oursFirst))
				st, err := annotations.ParseStatus(oursFirst.Annotations[annotations.StatusAnnotation])
				require.NoError(t, err)
				assert.Equal(t, annotations.ModeMesh, st.Mode)
				assert.Equal(t, "mesh", oursFirst.Labels[annotations.InjectedLabel])
				for _, v := range oursFirst.Spec.Volumes {
					assert.NotEqual(t, mutators.WorkloadAPIVolume, v.Name, "plain wiring left behind")
				}
			})
		}
	}
}
