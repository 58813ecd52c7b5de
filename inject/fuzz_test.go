package inject

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

// checkChain runs the chain and the patch builder on pod and checks the invariants: no panic; an
// error is either the pod author's (InvalidError) or none; the patch applied to the pod's JSON
// gives exactly the mutated pod; and, for pods the API server would accept, a second run (the
// reinvocation) changes nothing.
func checkChain(t *testing.T, chain *mutators.Chain, pod *corev1.Pod) {
	js, err := json.Marshal(pod)
	if err != nil {
		t.Skip()
	}
	ns := pod.Namespace
	if ns == "" {
		ns = "fuzz"
	}
	orig := pod
	snapshot := pod.DeepCopy()
	mut := copyForMutation(pod)
	_, err = chain.Run(mut, mutators.Request{Namespace: ns})
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
	ops, err := Patch(orig, mut)
	if err != nil {
		t.Fatalf("patch: %v", err)
	}
	out, err := podtest.ApplyOps(js, ops)
	if err != nil {
		t.Fatalf("patch does not apply: %v\n%v", err, ops)
	}
	got := podtest.Decode(t, out)
	if !equality.Semantic.DeepEqual(mut, got) {
		t.Fatalf("patched pod differs from mutated pod:\n%s", cmp.Diff(mut, got))
	}
	if !acceptable(orig) {
		return
	}
	again := copyForMutation(got)
	if _, err := chain.Run(again, mutators.Request{Namespace: ns}); err != nil {
		t.Fatalf("second run fails: %v", err)
	}
	ops2, err := Patch(got, again)
	if err != nil || len(ops2) > 0 {
		t.Fatalf("second run changes the pod (err %v): %v", err, ops2)
	}
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

// FuzzChainJSON feeds pod JSON, seeded with every golden fixture, through the chain.
func FuzzChainJSON(f *testing.F) {
	files, _ := filepath.Glob(fixtures + "*.yaml")
	for _, file := range files {
		y, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		js, err := yaml.YAMLToJSON(y)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(js)
	}
	chain := mutators.NewChain(podtest.Config(f))
	f.Fuzz(func(t *testing.T, js []byte) {
		pod, err := DecodePod(js)
		if err != nil {
			return
		}
		checkChain(t, chain, pod)
	})
}

// FuzzChainShapes builds pods from the parts that matter to the webhook (proxy placement, reserved
// names, colliding mounts, existing env, audience and status annotations written by hand) and
// checks the invariants on each.
func FuzzChainShapes(f *testing.F) {
	for _, seed := range []string{"", "\x01\x02\x03\x04", "istio-native-jwt\xff\x10\x20", "\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07", "\x00\x05\x09\x03\x11\x22\x33\x44\x55\x66\x77\x88\x99"} {
		f.Add([]byte(seed))
	}
	chain := mutators.NewChain(podtest.Config(f))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkChain(t, chain, shapePod(&byteReader{data: data}))
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
	shapePaths = []string{"/spiffe-workload-api", "/var/run/secrets/workload-spiffe-uds", "/var/run/secrets/spiffe.io/jwt", "/data", "/run/secrets/workload-spiffe-uds", "/etc/config"}
	shapeEnv   = []corev1.EnvVar{
		{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix:///spiffe-workload-api/spire-agent.sock"},
		{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix:///run/spire/agent.sock"},
		{Name: "WORKLOAD_IDENTITY_SOCKET_FILE", Value: "socket"},
		{Name: "WORKLOAD_IDENTITY_SOCKET_FILE", Value: "spire-agent.sock"},
		{Name: "LOG_LEVEL", Value: "debug"},
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
	}
	shapeAudiences = []string{"payments", "a,b", "https://api.example.com, spiffe://example.org/x", "", " , ", "dup,dup", "a/b,a:b", "bad\x01aud", strings.Repeat("x", 300)}
	shapeStatuses  = []string{
		"{",
		`{"version":1,"mode":"workload","volumes":["spiffe-workload-api","data"],"mounts":{"app":["spiffe-workload-api","data"]},"env":{"app":["SPIFFE_ENDPOINT_SOCKET","LOG_LEVEL"]}}`,
		`{"version":1,"mode":"mesh","containers":["spiffe-jwt-helper","app"],"volumes":["spiffe-jwt-svids","workload-socket"]}`,
		`{"version":2}`,
		`{"version":1,"skipped":"windows-pod"}`,
	}
)

func ptr[T any](v T) *T { return &v }

func shapePod(r *byteReader) *corev1.Pod {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "fuzz", Labels: map[string]string{}, Annotations: map[string]string{}}}
	for i, n := 0, r.pick(4); i < n; i++ {
		pod.Spec.Volumes = append(pod.Spec.Volumes, *shapeVolumes[r.pick(len(shapeVolumes))].DeepCopy())
	}
	container := func() corev1.Container {
		c := corev1.Container{Name: shapeContainerNames[r.pick(len(shapeContainerNames))], Image: "img"}
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
	}
	if r.pick(4) == 0 {
		pod.Annotations[annotations.StatusAnnotation] = shapeStatuses[r.pick(len(shapeStatuses))]
	}
	switch r.pick(8) {
	case 0:
		pod.Labels[annotations.InjectionLabel] = annotations.InjectionDisabled
	case 1:
		pod.Spec.OS = &corev1.PodOS{Name: corev1.Windows}
	case 2:
		pod.Spec.ServiceAccountName = "Not_A_Valid_Name"
	}
	return pod
}
