package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	gjsonpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

// fuzzConfigs are the configurations the fuzz targets pick from: the golden files' and variants of
// every setting the mutators read (socket file, CSI driver, mount paths, proxy container name,
// native sidecars, failure policy, a SPIFFE ID template of another shape).
var fuzzConfigs = []string{
	podtest.TestConfigYAML,
	podtest.TestConfigYAML + "socketFileName: socket\ncsiDriver: csi.example.com\n",
	"trustDomain: td.example\nclusterName: c2\njwtHelper:\n  image: registry.example/smi:2\n  nativeSidecar: always\n  tokenDir: /jwt\nworkload:\n  mountPath: /run/spiffe\n",
	"trustDomain: example.org\nclusterName: c3\njwtHelper:\n  image: registry.example/smi:3\n  nativeSidecar: never\nistio:\n  proxyContainerName: envoy\n  socketMountPath: /etc/spiffe-uds\nfailurePolicy: Fail\n",
	podtest.TestConfigYAML + "registration:\n  spiffeIDTemplate: \"spiffe://{{ .TrustDomain }}/k8s/{{ .PodMeta.Namespace }}/{{ .PodSpec.ServiceAccountName }}/{{ .PodMeta.Name }}\"\n",
}

// fuzzChains are the chains of fuzzConfigs.
func fuzzChains(f testing.TB) []*mutators.Chain {
	chains := make([]*mutators.Chain, len(fuzzConfigs))
	for i, y := range fuzzConfigs {
		cfg, err := config.Parse([]byte(y))
		if err != nil {
			f.Fatalf("fuzz configuration %d: %v", i, err)
		}
		chains[i] = mutators.NewChain(cfg)
	}
	return chains
}

// fuzzNamespace turns fuzz input into a namespace name the API server could send (a DNS label).
func fuzzNamespace(s string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(s) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' {
			b.WriteRune(c)
		}
	}
	ns := strings.Trim(b.String(), "-")
	if len(ns) > 63 {
		ns = strings.Trim(ns[:63], "-")
	}
	if ns == "" {
		return "fuzz"
	}
	return ns
}

// checkChain runs the webhook's entry point on received, the bytes of a pod as the API server
// sends them, in namespace ns, and checks the invariants:
//   - no panic; an error is either the pod author's (InvalidError, saying what is allowed) or none;
//   - the decision is the documented one (expectedDecision): a pod that is not opted out, istiod,
//     a Windows pod or a gateway awaiting Istio comes out wired, mesh if it has Istio's proxy and
//     workload otherwise, with its status annotation, its labels and the SPIFFE CSI volume mounted
//     where the mode says (checkWired); a skipped pod is left as the reason says;
//   - the patch applied to the bytes received gives exactly the mutated pod, and keeps every field
//     of those bytes our Go types do not know (checkUnknownKept);
//   - jsonpatch.CreatePatch, the generic whole-pod diff, is the oracle: applied to the same input,
//     it and our patch give the same JSON document (checkOracle);
//   - for pods the API server would accept, a second run (the reinvocation) changes nothing.
func checkChain(t *testing.T, chain *mutators.Chain, received []byte, ns string) {
	orig, err := DecodePod(received)
	if err != nil {
		return
	}
	if orig.Namespace != "" {
		// The API server refuses a pod whose namespace is not the request's.
		ns = orig.Namespace
	}
	snapshot := orig.DeepCopy()
	out, err := Pod(chain.Run, orig, ns)
	defer out.Release() // the next input's copy reuses its storage, as the next admission's does
	if !equality.Semantic.DeepEqual(snapshot, orig) {
		t.Fatalf("a mutator modified the original pod in place:\n%s", cmp.Diff(snapshot, orig))
	}
	if err != nil {
		if !mutators.IsInvalid(err) {
			t.Fatalf("internal error from the chain: %v", err)
		}
		if !strings.Contains(err.Error(), "allowed") && !strings.Contains(err.Error(), "remove it") {
			t.Fatalf("denial does not say what is allowed: %v", err)
		}
		return
	}
	mut := out.Pod
	if mut == nil {
		mut = orig // nothing changed
	}
	checkEncoded(t, out.Ops, out.Patch)
	patched, err := podtest.ApplyPatch(received, out.Patch)
	if err != nil {
		t.Fatalf("patch does not apply to the bytes received: %v\n%s", err, out.Patch)
	}
	got := podtest.Decode(t, patched)
	if !equality.Semantic.DeepEqual(mut, got) {
		t.Fatalf("patched pod differs from mutated pod:\n%s", cmp.Diff(mut, got))
	}
	checkDecision(t, chain.Config(), orig, got, out, acceptable(orig))
	checkUnknownKept(t, received, orig, mut, out.Ops, patched)
	checkOracle(t, received, orig, mut, out.Ops)
	if !acceptable(orig) {
		return
	}
	again, err := Pod(chain.Run, got, ns)
	if err != nil {
		t.Fatalf("second run fails: %v", err)
	}
	if len(again.Ops) > 0 {
		t.Fatalf("second run changes the pod: %v", again.Ops)
	}
	again.Release()
}

// checkEncoded checks the patch as it goes on the wire against encoding/json's encoding of the
// operations (each {"op","path","value"}, the value left out only when nil), byte for byte.
func checkEncoded(t *testing.T, ops []gjsonpatch.Operation, patch []byte) {
	t.Helper()
	if len(ops) == 0 {
		if patch != nil {
			t.Fatalf("no operations but a patch: %s", patch)
		}
		return
	}
	type wireOp struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value,omitempty"`
	}
	wire := make([]wireOp, len(ops))
	for i, op := range ops {
		wire[i] = wireOp{op.Operation, op.Path, op.Value}
	}
	want, err := json.Marshal(wire)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(patch, want) {
		t.Fatalf("patch encoded as\n%s\nencoding/json encodes it as\n%s", patch, want)
	}
}

// expectedDecision is what the webhook must decide for pod under cfg, from the documented rules
// alone (annotations.SkipReason), in the chain's order: a skip reason, or the mode it is wired in.
func expectedDecision(cfg *config.Config, pod *corev1.Pod) (annotations.SkipReason, annotations.Mode) {
	switch {
	case pod.Labels[annotations.InjectionLabel] == annotations.InjectionDisabled:
		return annotations.SkipOptOut, ""
	case pod.Labels["app"] == "istiod" || pod.Labels["istio"] == "pilot":
		return annotations.SkipIstioControlPlane, ""
	case pod.Spec.OS != nil && pod.Spec.OS.Name == corev1.Windows:
		return annotations.SkipWindows, ""
	}
	for _, list := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
		for _, c := range list {
			if c.Name != cfg.Istio.ProxyContainerName {
				continue
			}
			if c.Image == mutators.IstioImagePlaceholder && pod.Annotations[mutators.IstioStatusAnnotation] == "" {
				return annotations.SkipAwaitingIstio, ""
			}
			return "", annotations.ModeMesh
		}
	}
	return "", annotations.ModeWorkload
}

// checkDecision checks that the webhook decided for orig what expectedDecision says, and that got
// (the pod as stored) shows it; what it wired is checked for pods the API server can store (valid
// says so: with two volumes of one name, which one is wired does not matter).
func checkDecision(t *testing.T, cfg *config.Config, orig, got *corev1.Pod, out Outcome, valid bool) {
	skip, mode := expectedDecision(cfg, orig)
	res := out.Result
	if res.Skipped != skip || res.Mode != mode {
		t.Fatalf("decision: skipped %q mode %q, want skipped %q mode %q", res.Skipped, res.Mode, skip, mode)
	}
	if skip != "" {
		if got.Labels[annotations.InjectedLabel] != "" {
			t.Fatalf("skipped (%s) but labelled %s=%s", skip, annotations.InjectedLabel, got.Labels[annotations.InjectedLabel])
		}
		switch skip {
		case annotations.SkipOptOut:
			if len(out.Ops) > 0 {
				t.Fatalf("an opted-out pod is changed: %v", out.Ops)
			}
		case annotations.SkipWindows:
			st, err := annotations.ParseStatus(got.Annotations[annotations.StatusAnnotation])
			if err != nil || st.Skipped != annotations.SkipWindows || st.Mode != "" {
				t.Fatalf("a Windows pod's status says %+v (%v)", st, err)
			}
		}
		return
	}
	checkWired(t, cfg, got, mode, valid)
}

// checkWired checks that pod is wired in mode under cfg: its labels and status annotation and,
// when the pod is valid, the SPIFFE CSI volume (the configured driver, read-only), mounted by
// istio-proxy in a mesh pod and by every container (with SPIFFE_ENDPOINT_SOCKET) in a plain
// workload, and the JWT helper when the pod asks for tokens.
func checkWired(t *testing.T, cfg *config.Config, pod *corev1.Pod, mode annotations.Mode, valid bool) {
	if pod.Labels[annotations.InjectedLabel] != string(mode) || pod.Labels[annotations.ManagedIdentityLabel] != "true" {
		t.Fatalf("wired %s but labels %v", mode, pod.Labels)
	}
	st, err := annotations.ParseStatus(pod.Annotations[annotations.StatusAnnotation])
	if err != nil {
		t.Fatalf("wired %s without a valid status annotation: %v", mode, err)
	}
	if st.Mode != mode || st.Skipped != "" || st.ConfigVersion != cfg.Version() {
		t.Fatalf("wired %s but the status says %+v (config version %s)", mode, st, cfg.Version())
	}
	if !valid {
		return
	}
	volume := mutators.WorkloadAPIVolume
	if mode == annotations.ModeMesh {
		volume = mutators.IstioSocketVolume
	}
	found := false
	for _, v := range pod.Spec.Volumes {
		if v.Name != volume {
			continue
		}
		found = true
		if v.CSI == nil || v.CSI.Driver != cfg.CSIDriver || v.CSI.ReadOnly == nil || !*v.CSI.ReadOnly {
			t.Fatalf("volume %s is not the read-only SPIFFE CSI volume of %s: %+v", volume, cfg.CSIDriver, v.VolumeSource)
		}
	}
	if !found {
		t.Fatalf("wired %s without the %s volume", mode, volume)
	}
	mounts := func(c *corev1.Container) bool {
		for _, m := range c.VolumeMounts {
			if m.Name == volume {
				return true
			}
		}
		return false
	}
	if mode == annotations.ModeMesh {
		proxy, _, _ := mutators.FindContainer(pod, cfg.Istio.ProxyContainerName)
		if proxy == nil || !mounts(proxy) {
			t.Fatalf("%s does not mount %s", cfg.Istio.ProxyContainerName, volume)
		}
	} else {
		for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
			for i := range list {
				c := &list[i]
				if c.Name == mutators.JWTHelperContainer {
					continue
				}
				hasEnv := false
				for _, e := range c.Env {
					hasEnv = hasEnv || e.Name == contract.EnvEndpointSocket
				}
				if !mounts(c) || !hasEnv {
					t.Fatalf("container %s is not wired to the Workload API (mount %v, %s %v)", c.Name, mounts(c), contract.EnvEndpointSocket, hasEnv)
				}
			}
		}
	}
	if _, ok := pod.Annotations[annotations.AudienceAnnotation]; ok {
		if h, _, _ := mutators.FindContainer(pod, mutators.JWTHelperContainer); h == nil {
			t.Fatalf("the pod asks for JWT-SVIDs (%s) but has no %s", pod.Annotations[annotations.AudienceAnnotation], mutators.JWTHelperContainer)
		}
	}
}

// checkOracle compares our patch with the generic whole-pod diff (jsonpatch.CreatePatch of the
// pod's encodings before and after the mutators), both applied to the same input, as JSON
// documents (nulls and empty objects and arrays aside, which decode as absent fields): a field our
// patch drops, duplicates, misplaces or sets otherwise shows. The inputs are
// the bytes received and the pod's own encoding (what an API server of our version sends). The
// generic diff addresses array elements by index: where elements are inserted before others, its
// operations on the shifted elements name fields of the pod's encoding, which hand-written bytes
// may omit, or would move fields our types do not know from one element to another; it is applied
// to the bytes received only where it applies and they hold no such field.
func checkOracle(t *testing.T, received []byte, orig, mut *corev1.Pod, ops []gjsonpatch.Operation) {
	origJS, mutJS := encodeBoth(t, orig, mut)
	generic, err := gjsonpatch.CreatePatch(origJS, mutJS)
	if err != nil {
		t.Fatalf("generic diff: %v", err)
	}
	compare := func(input []byte, what string) {
		want, err := podtest.ApplyOps(input, generic)
		if err != nil {
			t.Fatalf("the generic diff does not apply to %s: %v", what, err)
		}
		got, err := podtest.ApplyOps(input, ops)
		if err != nil {
			t.Fatalf("our patch does not apply to %s: %v", what, err)
		}
		if d := cmp.Diff(podtest.Prune(podtest.JSONValue(t, want)), podtest.Prune(podtest.JSONValue(t, got))); d != "" {
			t.Fatalf("applied to %s, our patch and the generic diff give different documents (-generic +ours):\n%s", what, d)
		}
	}
	compare(origJS, "the pod's encoding")
	if len(unknownFields(t, received, origJS, true)) > 0 {
		return
	}
	if _, err := podtest.ApplyOps(received, generic); err == nil {
		compare(received, "the bytes received")
	}
}

// unknownField is a field of the bytes received that the pod's Go types do not know: it is not in
// the pod's encoding. at finds its object.
type unknownField struct {
	at    []step
	key   string
	value any
}

// step is one step from an object to another: its field key or, in a list the patch builder
// matches by a key field (listKeys), the element whose by field is value.
type step struct {
	key   string
	by    string
	value any
}

func (s step) String() string {
	if s.by == "" {
		return s.key
	}
	return fmt.Sprintf("%s[%s=%v]", s.key, s.by, s.value)
}

// listKeys are the lists whose elements the patch builder matches by a key, and the key.
var listKeys = map[string]string{"volumes": "name", "initContainers": "name", "containers": "name", "env": "name", "volumeMounts": "mountPath"}

// unknownFields lists the fields of received that are not in encoded (the pod's encoding), down to
// the elements of the lists the patch builder matches by key (those whose key is unique in their
// list). With zero false, a field whose value
// is null, false, 0, "" or empty is not listed: the encoding leaves such values of known fields out.
func unknownFields(t *testing.T, received, encoded []byte, zero bool) []unknownField {
	r, _ := podtest.JSONValue(t, received).(map[string]any)
	e, _ := podtest.JSONValue(t, encoded).(map[string]any)
	var out []unknownField
	var walk func(r, e map[string]any, at []step)
	walk = func(r, e map[string]any, at []step) {
		for k, rv := range r {
			ev, ok := e[k]
			if !ok {
				if zero || !isZero(rv) {
					out = append(out, unknownField{at: at, key: k, value: rv})
				}
				continue
			}
			switch rv := rv.(type) {
			case map[string]any:
				if em, ok := ev.(map[string]any); ok {
					walk(rv, em, append(at[:len(at):len(at)], step{key: k}))
				}
			case []any:
				by, ok := listKeys[k]
				el, _ := ev.([]any)
				if !ok || len(el) != len(rv) {
					continue
				}
				for i := range rv {
					rm, _ := rv[i].(map[string]any)
					em, _ := el[i].(map[string]any)
					if rm == nil || em == nil || count(el, by, em[by]) > 1 {
						// Elements that share a key cannot be told apart once one is gone.
						continue
					}
					walk(rm, em, append(at[:len(at):len(at)], step{key: k, by: by, value: em[by]}))
				}
			}
		}
	}
	walk(r, e, nil)
	return out
}

func isZero(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case bool:
		return !v
	case float64:
		return v == 0
	case string:
		return v == ""
	case []any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}

// count is how many elements of list have value in their key field.
func count(list []any, key string, value any) int {
	n := 0
	for _, x := range list {
		if m, ok := x.(map[string]any); ok && reflect.DeepEqual(m[key], value) {
			n++
		}
	}
	return n
}

// find follows at in doc.
func find(doc map[string]any, at []step) map[string]any {
	cur := doc
	for _, s := range at {
		if s.by == "" {
			cur, _ = cur[s.key].(map[string]any)
		} else {
			list, _ := cur[s.key].([]any)
			cur = nil
			for _, x := range list {
				if m, ok := x.(map[string]any); ok && reflect.DeepEqual(m[s.by], s.value) {
					cur = m
					break
				}
			}
		}
		if cur == nil {
			return nil
		}
	}
	return cur
}

// checkUnknownKept checks that every field of the bytes received that our types do not know is
// still there after the patch, wherever its object is still there: the builder changes an element
// one top-level field at a time and never replaces it. Deeper than the elements the builder
// matches, a field survives unless the webhook replaced the field that holds it (the JWT helper's
// resources when it rebuilds its container, a volume source it turns into the CSI volume). One
// element is not kept: a volume of the webhook's own (named in the status annotation received and
// exactly as the webhook makes it) that it takes back and adds again where a pod wired in the
// other order has it: the patch removes and adds it whole, with what it knows of it.
func checkUnknownKept(t *testing.T, received []byte, orig, mut *corev1.Pod, ops []gjsonpatch.Operation, patched []byte) {
	origJS, mutJS := encodeBoth(t, orig, mut)
	before, _ := podtest.JSONValue(t, origJS).(map[string]any)
	after, _ := podtest.JSONValue(t, mutJS).(map[string]any)
	doc, _ := podtest.JSONValue(t, patched).(map[string]any)
	rebuilt := ownVolumesAddedAgain(orig, mut, ops)
	for _, u := range unknownFields(t, received, origJS, false) {
		if len(u.at) > 1 && u.at[1].key == "volumes" && rebuilt[fmt.Sprint(u.at[1].value)] {
			continue
		}
		parent := find(doc, u.at)
		if parent == nil {
			continue // its object is gone (a container or volume the webhook removed)
		}
		if !untouched(before, after, u.at) {
			continue
		}
		if v, ok := parent[u.key]; !ok || !reflect.DeepEqual(v, u.value) {
			t.Fatalf("a field our types do not know was lost or changed: %v %q = %v (now %v, present %v)", u.at, u.key, u.value, v, ok)
		}
	}
}

// ownVolumesAddedAgain names the volumes the patch removes and adds again unchanged that the
// status annotation received says the webhook added.
func ownVolumesAddedAgain(orig, mut *corev1.Pod, ops []gjsonpatch.Operation) map[string]bool {
	prev, err := annotations.ParseStatus(orig.Annotations[annotations.StatusAnnotation])
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	for _, name := range prev.Volumes {
		i := slices.IndexFunc(orig.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == name })
		j := slices.IndexFunc(mut.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == name })
		if i < 0 || j < 0 || !equality.Semantic.DeepEqual(orig.Spec.Volumes[i], mut.Spec.Volumes[j]) {
			continue
		}
		removed := slices.ContainsFunc(ops, func(op gjsonpatch.Operation) bool {
			return op.Operation == "remove" && op.Path == "/spec/volumes/"+strconv.Itoa(i)
		})
		out[name] = removed
	}
	return out
}

// encodeBoth is the JSON encoding of the pod as received and as wired.
func encodeBoth(t *testing.T, orig, mut *corev1.Pod) (origJS, mutJS []byte) {
	t.Helper()
	var err error
	if origJS, err = json.Marshal(orig); err != nil {
		t.Fatal(err)
	}
	if mutJS, err = json.Marshal(mut); err != nil {
		t.Fatal(err)
	}
	return origJS, mutJS
}

// untouched says whether the object at `at` is one the builder keeps (the pod, metadata, spec, and
// the elements it matches by key: their objects are changed one field at a time), or lies inside a
// field of such an object that the webhook did not change.
func untouched(before, after map[string]any, at []step) bool {
	for i, s := range at {
		if s.by != "" || (i == 0 && (s.key == "metadata" || s.key == "spec")) {
			continue
		}
		// A plain object field below a kept object: kept only if the webhook left it as it was.
		b, a := find(before, at[:i+1]), find(after, at[:i+1])
		return b != nil && a != nil && reflect.DeepEqual(b, a)
	}
	return true
}

// acceptable reports whether the API server's validation would accept the pod's names: container
// names unique across containers and initContainers, volume names unique, mount paths unique per
// container, every mount naming a volume. Mutating webhooks run before validation and may see
// anything; idempotency only matters for pods that can exist.
func acceptable(pod *corev1.Pod) bool {
	names := map[string]bool{}
	vols := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		if vols[v.Name] || v.Name == "" {
			return false
		}
		vols[v.Name] = true
	}
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			if names[c.Name] || c.Name == "" {
				return false
			}
			names[c.Name] = true
			paths := map[string]bool{}
			for _, m := range c.VolumeMounts {
				if paths[m.MountPath] || !vols[m.Name] {
					return false
				}
				paths[m.MountPath] = true
			}
		}
	}
	return len(pod.Spec.Containers) > 0
}

// fixtures are the golden cases' input pods.
const fixtures = "../mutators/testdata/"

// podShaped says whether js is shaped as the API server sends a pod: an object whose metadata and
// spec are objects (a pod's encoding always has both), whatever else it holds.
func podShaped(js []byte) bool {
	var doc map[string]any
	if json.Unmarshal(js, &doc) != nil {
		return false
	}
	_, meta := doc["metadata"].(map[string]any)
	_, spec := doc["spec"].(map[string]any)
	return meta && spec
}

// FuzzChainJSON feeds pod JSON, seeded with every golden fixture, through the webhook's entry point
// under each configuration of fuzzConfigs, in a namespace the fuzzer picks; the patch is applied to
// the JSON as received.
func FuzzChainJSON(f *testing.F) {
	files, _ := filepath.Glob(fixtures + "*.yaml")
	for i, file := range files {
		if strings.HasSuffix(file, ".golden.yaml") {
			continue
		}
		y, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		js, err := yaml.YAMLToJSON(y)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(js, uint8(i), "shop")
	}
	chains := fuzzChains(f)
	f.Fuzz(func(t *testing.T, js []byte, cfg uint8, ns string) {
		if !podShaped(js) {
			return
		}
		checkChain(t, chains[int(cfg)%len(chains)], js, fuzzNamespace(ns))
	})
}

// FuzzChainShapes builds pods from the parts that matter to the webhook (proxy placement, reserved
// names, colliding mounts, existing env, audience and status annotations written by hand, Istio's
// placeholders and control plane), encodes each as the API server would, with fields our types do
// not know where a newer API server could send them, and checks the invariants under each
// configuration of fuzzConfigs, in a namespace of the fuzzer's.
func FuzzChainShapes(f *testing.F) {
	for _, seed := range []string{"", "\x01\x02\x03\x04", "istio-native-jwt\xff\x10\x20", "\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07", "\x00\x05\x09\x03\x11\x22\x33\x44\x55\x66\x77\x88\x99",
		"\x00\x00\x01\x01\x01\x00\x00\x00\x02\x00\x00\x03\x00\x00\x00\x00\x00\x0a\x0b"} {
		f.Add([]byte(seed))
	}
	chains := fuzzChains(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &byteReader{data: data}
		chain := chains[r.pick(len(chains))]
		pod := shapePod(r, chain.Config())
		checkChain(t, chain, shapeBytes(t, r, pod), pod.Namespace)
	})
}

type byteReader struct {
	data []byte
	i    int
}

func (r *byteReader) next() int {
	if r.i >= len(r.data) {
		return 0
	}
	b := r.data[r.i]
	r.i++
	return int(b)
}

func (r *byteReader) pick(n int) int { return r.next() % n }

var (
	shapeContainerNames = []string{"app", "istio-proxy", "worker", "spiffe-jwt-helper", "istio-validation", "envoy", "app"}
	shapeVolumes        = []corev1.Volume{
		{Name: "workload-socket", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "workload-socket", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: "csi.spiffe.io", ReadOnly: ptr(true)}}},
		{Name: "spiffe-workload-api", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: "csi.spiffe.io", ReadOnly: ptr(true)}}},
		{Name: "spiffe-workload-api", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "spiffe-jwt-svids", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: ptr(resource.MustParse("1Mi"))}}},
		{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
	}
	shapePaths = []string{"/spiffe-workload-api", "/var/run/secrets/workload-spiffe-uds", "/var/run/secrets/spiffe.io/jwt", "/data", "/run/secrets/workload-spiffe-uds", "/etc/config", "/run/spiffe", "/etc/spiffe-uds"}
	shapeEnv   = []corev1.EnvVar{
		{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix:///spiffe-workload-api/spire-agent.sock"},
		{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix:///run/spire/agent.sock"},
		{Name: "WORKLOAD_IDENTITY_SOCKET_FILE", Value: "socket"},
		{Name: "WORKLOAD_IDENTITY_SOCKET_FILE", Value: "spire-agent.sock"},
		{Name: "LOG_LEVEL", Value: "debug"},
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
	}
	shapeImages    = []string{"img", "img", mutators.IstioImagePlaceholder}
	shapeAudiences = []string{"payments", "a,b", "https://api.example.com, spiffe://example.org/x", "", " , ", "dup,dup", "a/b,a:b", "bad\x01aud", strings.Repeat("x", 300)}
	shapeStatuses  = []string{
		"{",
		`{"version":1,"mode":"workload","volumes":["spiffe-workload-api","data"],"mounts":{"app":["spiffe-workload-api","data"]},"env":{"app":["SPIFFE_ENDPOINT_SOCKET","LOG_LEVEL"]}}`,
		`{"version":1,"mode":"mesh","containers":["spiffe-jwt-helper","app"],"volumes":["spiffe-jwt-svids","workload-socket"]}`,
		`{"version":2}`,
		`{"version":1,"skipped":"windows-pod"}`,
	}
	shapeNamespaces = []string{"fuzz", "shop", "a", "kube-system", strings.Repeat("n", 63)}
)

func ptr[T any](v T) *T { return &v }

// shapePod builds a pod from r, for a webhook configured with cfg (whose proxy container name it
// sometimes uses).
func shapePod(r *byteReader, cfg *config.Config) *corev1.Pod {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: shapeNamespaces[r.pick(len(shapeNamespaces))], Labels: map[string]string{}, Annotations: map[string]string{}}}
	if r.pick(4) == 0 {
		pod.Name, pod.GenerateName = "", "p-7d4b9c8f6d-"
	}
	for i, n := 0, r.pick(4); i < n; i++ {
		pod.Spec.Volumes = append(pod.Spec.Volumes, *shapeVolumes[r.pick(len(shapeVolumes))].DeepCopy())
	}
	names := append(shapeContainerNames[:len(shapeContainerNames):len(shapeContainerNames)], cfg.Istio.ProxyContainerName)
	container := func() corev1.Container {
		c := corev1.Container{Name: names[r.pick(len(names))], Image: shapeImages[r.pick(len(shapeImages))]}
		for i, n := 0, r.pick(3); i < n; i++ {
			v := "data"
			if len(pod.Spec.Volumes) > 0 {
				v = pod.Spec.Volumes[r.pick(len(pod.Spec.Volumes))].Name
			}
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: v, MountPath: shapePaths[r.pick(len(shapePaths))], ReadOnly: r.pick(2) == 0})
		}
		for i, n := 0, r.pick(3); i < n; i++ {
			c.Env = append(c.Env, *shapeEnv[r.pick(len(shapeEnv))].DeepCopy())
		}
		return c
	}
	for i, n := 0, 1+r.pick(3); i < n; i++ {
		pod.Spec.Containers = append(pod.Spec.Containers, container())
	}
	for i, n := 0, r.pick(3); i < n; i++ {
		c := container()
		if r.pick(2) == 0 {
			c.RestartPolicy = ptr(corev1.ContainerRestartPolicyAlways)
		}
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, c)
	}
	if r.pick(3) == 0 {
		pod.Annotations[annotations.AudienceAnnotation] = shapeAudiences[r.pick(len(shapeAudiences))]
		if r.pick(3) == 0 {
			pod.Annotations[annotations.ExtAuthzAnnotation] = strings.Split(pod.Annotations[annotations.AudienceAnnotation], ",")[0]
		}
	}
	if r.pick(4) == 0 {
		pod.Annotations[annotations.StatusAnnotation] = shapeStatuses[r.pick(len(shapeStatuses))]
	}
	if r.pick(4) == 0 {
		pod.Annotations[mutators.IstioStatusAnnotation] = `{"containers":["istio-proxy"]}`
	}
	switch r.pick(10) {
	case 0:
		pod.Labels[annotations.InjectionLabel] = annotations.InjectionDisabled
	case 1:
		pod.Spec.OS = &corev1.PodOS{Name: corev1.Windows}
	case 2:
		pod.Spec.ServiceAccountName = "Not_A_Valid_Name"
	case 3:
		pod.Labels["app"] = "istiod"
	case 4:
		pod.Labels[annotations.InjectedLabel] = "mesh" // set by hand
	}
	return pod
}

// shapeBytes encodes pod as the API server sends it and, as a newer API server may, adds fields our
// types do not know to the pod, its metadata and spec, and some of its volumes, containers, env
// vars and mounts, as r picks.
func shapeBytes(t *testing.T, r *byteReader, pod *corev1.Pod) []byte {
	js, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	if r.pick(2) == 0 {
		return js
	}
	var doc map[string]any
	if err := json.Unmarshal(js, &doc); err != nil {
		t.Fatal(err)
	}
	n := 0
	mark := func(m map[string]any) {
		if m != nil && r.pick(2) == 0 {
			n++
			m[fmt.Sprintf("futureField%d", n)] = map[string]any{"n": n}
		}
	}
	objects := func(v any) []map[string]any {
		l, _ := v.([]any)
		out := make([]map[string]any, 0, len(l))
		for _, x := range l {
			if m, ok := x.(map[string]any); ok {
				out = append(out, m)
			}
		}
		return out
	}
	mark(doc)
	meta, _ := doc["metadata"].(map[string]any)
	mark(meta)
	spec, _ := doc["spec"].(map[string]any)
	mark(spec)
	for _, v := range objects(spec["volumes"]) {
		mark(v)
		for _, src := range v {
			if m, ok := src.(map[string]any); ok {
				mark(m) // inside the volume source
			}
		}
	}
	for _, kind := range []string{"initContainers", "containers"} {
		for _, c := range objects(spec[kind]) {
			mark(c)
			for _, e := range objects(c["env"]) {
				mark(e)
			}
			for _, m := range objects(c["volumeMounts"]) {
				mark(m)
			}
		}
	}
	out, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
