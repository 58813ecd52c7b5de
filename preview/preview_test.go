package preview

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

func runInject(t *testing.T, in string, opts Options) (string, error) {
	var out bytes.Buffer
	_, err := Inject(strings.NewReader(in), &out, mutators.NewChain(podtest.Config(t)), opts)
	return out.String(), err
}

// podSpecAt returns the pod template (metadata and spec) of a workload document.
func podSpecAt(t *testing.T, doc map[string]any, path ...string) *corev1.Pod {
	t.Helper()
	cur := doc
	for _, p := range path {
		next, ok := cur[p].(map[string]any)
		require.True(t, ok, "%v", path)
		cur = next
	}
	b, err := json.Marshal(cur)
	require.NoError(t, err)
	return podtest.Decode(t, b)
}

func TestInjectEveryKind(t *testing.T) {
	in, err := os.ReadFile("testdata/all-kinds.yaml")
	require.NoError(t, err)
	out, err := runInject(t, string(in), Options{Namespace: "fallback-ns", Registrations: true})
	require.NoError(t, err)
	docs := strings.Split(out, "---\n")

	inDocs := strings.Split(string(in), "---\n")
	// The comment-only document is dropped; order is kept; registrations come last.
	var kinds []string
	for _, d := range docs {
		var h header
		require.NoError(t, yaml.Unmarshal([]byte(d), &h), d)
		kinds = append(kinds, h.Kind+"/"+h.Metadata.Name)
	}
	assert.Equal(t, []string{"ConfigMap/settings", "Pod/standalone", "Deployment/web", "StatefulSet/db", "DaemonSet/agent", "ReplicaSet/rs",
		"ReplicationController/rc", "Job/once", "CronJob/nightly", "DeploymentConfig/legacy-dc", "Deployment/opted-out", "List/", "Service/web",
		"ClusterSPIFFEID/spire-mesh-injector-fallback-ns", "ClusterSPIFFEID/spire-mesh-injector-team-a", "ClusterSPIFFEID/spire-mesh-injector-team-b",
		"ClusterSPIFFEID/spire-mesh-injector-team-c", "ClusterSPIFFEID/spire-mesh-injector-team-d"}, kinds)

	// Untouched objects come out byte for byte, comments included.
	assert.Equal(t, strings.TrimPrefix(inDocs[0], "# Every kind the preview mutates, in a namespace each (a few share one), plus objects it must pass\n# through untouched, byte for byte.\n"), strings.TrimPrefix(docs[0], "# Every kind the preview mutates, in a namespace each (a few share one), plus objects it must pass\n# through untouched, byte for byte.\n"))
	assert.Contains(t, docs[0], "# a comment that must survive")
	assert.Equal(t, inDocs[len(inDocs)-1], docs[12])
	assert.Equal(t, strings.TrimPrefix(inDocs[11], ""), docs[10], "the opted-out Deployment is untouched")

	paths := map[string][]string{
		"Pod": nil, "Deployment": {"spec", "template"}, "StatefulSet": {"spec", "template"}, "DaemonSet": {"spec", "template"},
		"ReplicaSet": {"spec", "template"}, "ReplicationController": {"spec", "template"}, "Job": {"spec", "template"},
		"CronJob": {"spec", "jobTemplate", "spec", "template"}, "DeploymentConfig": {"spec", "template"},
	}
	wantNS := map[string]string{"standalone": "team-a", "web": "team-a", "db": "team-b", "agent": "team-b", "rs": "fallback-ns", "rc": "team-b", "once": "team-b", "nightly": "team-b", "legacy-dc": "team-c"}
	for i := 1; i <= 9; i++ {
		var doc map[string]any
		require.NoError(t, yaml.Unmarshal([]byte(docs[i]), &doc))
		kind := doc["kind"].(string)
		name := doc["metadata"].(map[string]any)["name"].(string)
		pod := podSpecAt(t, doc, paths[kind]...)
		st, err := annotations.ParseStatus(pod.Annotations[annotations.StatusAnnotation])
		require.NoError(t, err, kind)
		assert.Equal(t, annotations.ModeWorkload, st.Mode, kind)
		assert.Equal(t, "spire-mesh-injector-"+wantNS[name], st.Registration, kind)
		assert.Equal(t, "workload", pod.Labels[annotations.InjectedLabel], kind)
		assert.Equal(t, mutators.WorkloadAPIVolume, pod.Spec.Volumes[0].Name, kind)
		assert.Equal(t, "unix:///spiffe-workload-api/spire-agent.sock", pod.Spec.Containers[0].Env[0].Value, kind)
		if name == "web" {
			assert.Equal(t, mutators.JWTHelperContainer, pod.Spec.Containers[1].Name)
		}
	}
	if kinds := docs[2]; true {
		assert.Contains(t, kinds, "matchLabels:\n      app: web", "the selector is not touched")
	}

	var list map[string]any
	require.NoError(t, yaml.Unmarshal([]byte(docs[11]), &list))
	items := list["items"].([]any)
	require.Len(t, items, 2)
	assert.Equal(t, "Service", items[0].(map[string]any)["kind"])
	listed := podSpecAt(t, items[1].(map[string]any), "spec", "template")
	assert.Equal(t, "workload", listed.Labels[annotations.InjectedLabel])

	var reg spirev1alpha1.ClusterSPIFFEID
	require.NoError(t, yaml.UnmarshalStrict([]byte(docs[14]), &reg))
	assert.Equal(t, "team-a", reg.Spec.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"])
	assert.Equal(t, "zero-trust-workload-identity-manager-spire", reg.Spec.ClassName)
	assert.NotContains(t, docs[14], "status:", "registrations print without an empty status")
}

func TestInjectIsIdempotent(t *testing.T) {
	in, err := os.ReadFile("testdata/all-kinds.yaml")
	require.NoError(t, err)
	once, err := runInject(t, string(in), Options{})
	require.NoError(t, err)
	twice, err := runInject(t, once, Options{})
	require.NoError(t, err)
	assert.Equal(t, once, twice)
}

func TestInjectErrorsNameTheDocument(t *testing.T) {
	tests := []struct{ in, want string }{
		{"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a}]}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  template:\n    metadata:\n      annotations: {spiffe.io/audience: 'a,,b'}\n    spec: {containers: [{name: a}]}\n",
			"document 2: Deployment/d: metadata.annotation spiffe.io/audience: audience 2 is empty"},
		{"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n", "document 1: Deployment/d: spec.template is missing"},
		{"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 7}\n", "document 1: Pod/p: pod template:"},
		{"a: [b\n", "document 1: not valid YAML"},
		{"- just\n- a list\n", "document 1: not a Kubernetes object"},
	}
	for _, tt := range tests {
		_, err := runInject(t, tt.in, Options{})
		require.ErrorContains(t, err, tt.want)
	}
}

func TestInjectExample(t *testing.T) {
	in, err := os.ReadFile("../docs/examples/istio-injected-deployment.yaml")
	require.NoError(t, err)
	out, err := runInject(t, string(in), Options{Registrations: true})
	require.NoError(t, err)
	docs := strings.Split(out, "---\n")
	require.Len(t, docs, 4)
	var doc map[string]any
	require.NoError(t, yaml.Unmarshal([]byte(docs[2]), &doc))
	pod := podSpecAt(t, doc, "spec", "template")
	st, err := annotations.ParseStatus(pod.Annotations[annotations.StatusAnnotation])
	require.NoError(t, err)
	assert.Equal(t, annotations.ModeMesh, st.Mode)
	assert.Equal(t, "spiffe://example.org/ns/bookinfo/sa/reviews", st.SPIFFEID)
	assert.Equal(t, []string{"istio-validation", "istio-proxy", mutators.JWTHelperContainer}, []string{pod.Spec.InitContainers[0].Name, pod.Spec.InitContainers[1].Name, pod.Spec.InitContainers[2].Name})
	// Istio's socket volume is the SPIFFE CSI driver's, read-only, and istio-proxy mounts it where
	// pilot-agent looks.
	var socket *corev1.Volume
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == mutators.IstioSocketVolume {
			socket = &pod.Spec.Volumes[i]
		}
	}
	require.NotNil(t, socket, "the pod has the %s volume", mutators.IstioSocketVolume)
	require.NotNil(t, socket.CSI, "%s is a CSI volume: %+v", mutators.IstioSocketVolume, socket.VolumeSource)
	assert.Equal(t, "csi.spiffe.io", socket.CSI.Driver)
	require.NotNil(t, socket.CSI.ReadOnly)
	assert.True(t, *socket.CSI.ReadOnly)
	proxy, _, _ := mutators.FindContainer(pod, "istio-proxy")
	require.NotNil(t, proxy, "istio-proxy")
	mounted := false
	for _, m := range proxy.VolumeMounts {
		mounted = mounted || m.Name == mutators.IstioSocketVolume && m.MountPath == config.DefaultIstioSocketMountPath
	}
	assert.True(t, mounted, "istio-proxy mounts %s at %s: %+v", mutators.IstioSocketVolume, config.DefaultIstioSocketMountPath, proxy.VolumeMounts)
}

// TestInjectReportsWhatItLeavesUnwired: nothing holding a pod template passes through silently.
// Each object that comes out unwired is reported with the reason — opted out, skipped, a kind
// spire-mesh-injector does not wire — as is every warning admission would give; OpenShift's legacy
// group-less DeploymentConfig is wired like apps.openshift.io's, as istioctl kube-inject does.
func TestInjectReportsWhatItLeavesUnwired(t *testing.T) {
	in := `apiVersion: apps/v1
kind: Deployment
metadata: {name: opted-out}
spec:
  template:
    metadata: {labels: {spire-injection: disabled}}
    spec: {containers: [{name: a, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: win}
spec: {os: {name: windows}, containers: [{name: a, image: x}]}
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: canary}
spec:
  template:
    spec: {containers: [{name: a, image: x}]}
---
apiVersion: v1
kind: DeploymentConfig
metadata: {name: legacy}
spec:
  template:
    metadata:
      annotations: {inject.istio.io/templates: "sidecar,spire"}
    spec: {containers: [{name: a, image: x}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {k: v}
`
	var out, report bytes.Buffer
	sum, err := Inject(strings.NewReader(in), &out, mutators.NewChain(podtest.Config(t)), Options{Report: &report})
	require.NoError(t, err)
	assert.Equal(t, []string{
		"document 1: Deployment/opted-out: not wired: the pod template opts out (label spire-injection=disabled)",
		"document 2: Pod/win: not wired: skipped: windows-pod",
		"document 3: Rollout/canary: not wired: argoproj.io/v1alpha1 Rollout holds a pod template at /spec/template, but is not a kind spire-mesh-injector wires; its pods are wired when they are created, in an opted-in namespace",
	}, strings.Split(strings.TrimSpace(report.String()), "\n"))
	assert.Equal(t, 3, sum.Reported)
	assert.Equal(t, 2, sum.Changed, "the Windows pod's status, the legacy DeploymentConfig")
	docs := strings.Split(out.String(), "---\n")
	var dc map[string]any
	require.NoError(t, yaml.Unmarshal([]byte(docs[3]), &dc))
	assert.Equal(t, "v1", dc["apiVersion"], "kept as written")
	assert.Equal(t, "workload", podSpecAt(t, dc, "spec", "template").Labels[annotations.InjectedLabel], "the group-less DeploymentConfig is wired")
}

// TestInjectWarnsAsAdmissionWould: the warnings the webhook gives at admission are reported.
func TestInjectWarnsAsAdmissionWould(t *testing.T) {
	in, err := os.ReadFile("../mutators/testdata/spire-template-classic.yaml")
	require.NoError(t, err)
	var out, report bytes.Buffer
	sum, err := Inject(bytes.NewReader(in), &out, mutators.NewChain(podtest.Config(t)), Options{Report: &report})
	require.NoError(t, err)
	assert.Equal(t, 1, sum.Warnings)
	assert.Equal(t, "document 1: Pod/cart: warning: inject.istio.io/templates names Istio's \"spire\" template: redundant here, remove it\n", report.String())
}

// TestInjectDiff: with Diff, only the documents the webhook changes are written, as unified
// diffs of their normalized YAML, and Changed says whether there were any.
func TestInjectDiff(t *testing.T) {
	in := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {k: v}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\nspec: {serviceAccountName: sa, containers: [{name: a, image: x}]}\n"
	var out bytes.Buffer
	sum, err := Inject(strings.NewReader(in), &out, mutators.NewChain(podtest.Config(t)), Options{Diff: true})
	require.NoError(t, err)
	assert.Equal(t, 1, sum.Changed)
	d := out.String()
	assert.True(t, strings.HasPrefix(d, "--- document 2, as written\n+++ document 2, as the webhook wires it\n"), d)
	assert.Contains(t, d, "+    spire-mesh-injector.io/injected: workload\n")
	assert.Contains(t, d, "+      value: unix:///spiffe-workload-api/spire-agent.sock\n")
	assert.NotContains(t, d, "ConfigMap")

	out.Reset()
	sum, err = Inject(strings.NewReader(in[:strings.Index(in, "---")]), &out, mutators.NewChain(podtest.Config(t)), Options{Diff: true})
	require.NoError(t, err)
	assert.Zero(t, sum.Changed)
	assert.Empty(t, out.String())
}
