package xds

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	agentconfig "istio.io/istio/pilot/cmd/pilot-agent/config"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/bootstrap"
	pm "istio.io/istio/pkg/model"
	"istio.io/istio/pkg/security"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/inject"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/istio/istioinject"
)

// openshiftConfig is spire-mesh-injector's configuration as the OpenShift overlay ships it: the
// one the reference configurations in manifests/ go with.
var openshiftConfig = mustAbs("../../../kustomize/overlays/openshift/config.yaml")

// webhookConfig parses the OpenShift overlay's configuration with config.Parse, as the webhook
// does at start-up, with extra YAML lines appended (e.g. another socketFileName).
func webhookConfig(t *testing.T, extra string) *config.Config {
	t.Helper()
	b, err := os.ReadFile(openshiftConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(append(b, []byte("\n"+extra)...))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// istioInjector is Istio's injection webhook as Istio's installer renders it from the Sail values
// of manifests/ossm3 (their meshConfig and Helm values, over the default profile), with native
// sidecars as Istio 1.27+ injects them. Rendering takes seconds and depends only on the manifest,
// so the test binary does it once.
var istioInjector = sync.OnceValues(func() (*istioinject.Injector, error) {
	objs, err := loadObjects(manifestsDir)
	if err != nil {
		return nil, err
	}
	values, err := sailValues(objs)
	if err != nil {
		return nil, err
	}
	// The Sail operator's values are Istio's Helm values; istioctl takes the same as an
	// IstioOperator, where meshConfig sits beside values rather than in them.
	helm := map[string]any{}
	for k, v := range values {
		if k != "meshConfig" {
			helm[k] = v
		}
	}
	iop, err := yaml.Marshal(map[string]any{
		"apiVersion": "install.istio.io/v1alpha1",
		"kind":       "IstioOperator",
		"spec":       map[string]any{"meshConfig": values["meshConfig"], "values": helm},
	})
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp("", "ossm3-*.yaml")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(iop); err != nil {
		return nil, err
	}
	f.Close()
	return istioinject.New(istioinject.Options{Files: []string{f.Name()}, Native: true})
})

// podOf is the pod a Deployment's ReplicaSet creates, as the API server has it when the admission
// webhooks run: the template's metadata and spec, the namespace, and the service account the
// ServiceAccount admission plugin fills in.
func podOf(t *testing.T, o object) *corev1.Pod {
	t.Helper()
	var d appsv1.Deployment
	o.decode(t, &d)
	pod := &corev1.Pod{
		ObjectMeta: *d.Spec.Template.ObjectMeta.DeepCopy(),
		Spec:       *d.Spec.Template.Spec.DeepCopy(),
	}
	pod.Namespace = d.Namespace
	pod.GenerateName = d.Name + "-5d8f7c9b6-"
	pod.Name = pod.GenerateName + "x7k2p"
	if pod.Spec.ServiceAccountName == "" {
		pod.Spec.ServiceAccountName = "default"
	}
	return pod
}

// istioInjects runs Istio's injection webhook on pod, as the API server calls it for a pod created
// in an istio-injection=enabled namespace, and applies its patch.
func istioInjects(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	in, err := istioInjector()
	if err != nil {
		t.Fatalf("Istio's injector from manifests/ossm3: %v", err)
	}
	body, err := istioinject.ReviewFor(pod, pod.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	out, err := in.Review(body)
	if err != nil {
		t.Fatal(err)
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(out, &review); err != nil {
		t.Fatal(err)
	}
	if review.Response == nil || !review.Response.Allowed || len(review.Response.Patch) == 0 {
		t.Fatalf("Istio's webhook did not inject %s/%s: %s", pod.Namespace, pod.Name, out)
	}
	patch, err := jsonpatch.DecodePatch(review.Response.Patch)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(pod)
	if raw, err = patch.Apply(raw); err != nil {
		t.Fatal(err)
	}
	injected := &corev1.Pod{}
	if err := json.Unmarshal(raw, injected); err != nil {
		t.Fatal(err)
	}
	return injected
}

// wire is what the API server stores for pod created in a namespace opted in to Istio and SPIRE:
// Istio's injection, then spire-mesh-injector's (inject.Pod with the mutator chain, as the webhook
// runs it), then the status the kubelet reports once it runs at ip.
func wire(t *testing.T, cfg *config.Config, pod *corev1.Pod, ip string) *corev1.Pod {
	t.Helper()
	out, err := inject.Pod(mutators.NewChain(cfg).Run, istioInjects(t, pod), pod.Namespace)
	if err != nil {
		t.Fatalf("spire-mesh-injector refused %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	if out.Result.Mode != annotations.ModeMesh {
		t.Fatalf("spire-mesh-injector did not wire %s/%s as a meshed pod: %+v", pod.Namespace, pod.Name, out.Result)
	}
	wired := out.Pod.DeepCopy()
	wired.Spec.NodeName = "node-1"
	wired.Status = corev1.PodStatus{
		Phase:  corev1.PodRunning,
		PodIP:  ip,
		PodIPs: []corev1.PodIP{{IP: ip}},
		HostIP: "192.0.2.1",
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue},
		},
	}
	return wired
}

// istioProxy is the wired pod's istio-proxy container (a native sidecar or a classic one).
func istioProxy(t *testing.T, cfg *config.Config, pod *corev1.Pod) *corev1.Container {
	t.Helper()
	c, _, ok := mutators.FindContainer(pod, cfg.Istio.ProxyContainerName)
	if !ok {
		t.Fatalf("%s/%s has no %s", pod.Namespace, pod.Name, cfg.Istio.ProxyContainerName)
	}
	return c
}

// containerEnv is c's environment as the kubelet gives it to the process: values, and the
// downward-API fields Istio's template uses. A source this function does not resolve fails the
// test if pilot-agent would pass it on to Envoy (ISTIO_META_*), and is left out otherwise
// (resource limits, which only size pilot-agent and Envoy).
func containerEnv(t *testing.T, pod *corev1.Pod, c *corev1.Container) []string {
	t.Helper()
	var env []string
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			var ok bool
			if v, ok = fieldValue(pod, e.ValueFrom); !ok {
				if strings.HasPrefix(e.Name, "ISTIO_META") {
					t.Fatalf("%s.env[%s]: cannot resolve %+v", c.Name, e.Name, e.ValueFrom)
				}
				continue
			}
		}
		env = append(env, e.Name+"="+v)
	}
	return env
}

func fieldValue(pod *corev1.Pod, src *corev1.EnvVarSource) (string, bool) {
	if src.FieldRef == nil {
		return "", false
	}
	p := src.FieldRef.FieldPath
	switch {
	case p == "metadata.name":
		return pod.Name, true
	case p == "metadata.namespace":
		return pod.Namespace, true
	case p == "metadata.uid":
		return string(pod.UID), true
	case p == "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, true
	case p == "spec.nodeName":
		return pod.Spec.NodeName, true
	case p == "status.podIP":
		return pod.Status.PodIP, true
	case p == "status.hostIP":
		return pod.Status.HostIP, true
	case p == "status.podIPs":
		var ips []string
		for _, ip := range pod.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		return strings.Join(ips, ","), true
	case strings.HasPrefix(p, "metadata.labels['"):
		return pod.Labels[strings.TrimSuffix(strings.TrimPrefix(p, "metadata.labels['"), "']")], true
	case strings.HasPrefix(p, "metadata.annotations['"):
		return pod.Annotations[strings.TrimSuffix(strings.TrimPrefix(p, "metadata.annotations['"), "']")], true
	}
	return "", false
}

// downwardAPIFile renders m as the kubelet writes a downward-API volume's labels or annotations.
func downwardAPIFile(m map[string]string) []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q\n", k, m[k])
	}
	return b.Bytes()
}

// agent is what pilot-agent in a wired pod's istio-proxy computes before it starts Envoy.
type agent struct {
	// SocketFile is the Workload API socket's file name pilot-agent looks for
	// (WORKLOAD_IDENTITY_SOCKET_FILE, default "socket").
	SocketFile string
	// Node is Envoy's node: its ID and the metadata istiod reads.
	Node *pm.Node
	// Bootstrap is the Envoy bootstrap pilot-agent writes (envoy-rev.json), decoded.
	Bootstrap map[string]any
}

// pilotAgent runs pilot-agent's own code for the wired pod: the proxy configuration
// (ConstructProxyConfig, from PROXY_CONFIG and the pod's annotations), the node metadata
// (GetNodeMetaData, from istio-proxy's environment and the downward-API files Istio's template
// mounts at /etc/istio/pod) and the Envoy bootstrap (bootstrap.New(...).WriteTo, with the template
// Istio ships). pilot-agent reads those files relative to its working directory, "/" in the
// container: the test writes them into a folder of its own and works there until it ends.
//
// pilot-agent finds SPIRE's socket where the SPIFFE CSI volume publishes it (the caller checks the
// mount: see TestBootstrapPointsEnvoyAtSPIRE), so it serves only file credentials itself
// (CustomCredentialsFileExists) and hands Envoy the socket file name.
func pilotAgent(t *testing.T, cfg *config.Config, pod *corev1.Pod) agent {
	t.Helper()
	root := t.TempDir()
	podInfo := filepath.Join(root, "etc/istio/pod")
	if err := os.MkdirAll(podInfo, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]map[string]string{"labels": pod.Labels, "annotations": pod.Annotations} {
		if err := os.WriteFile(filepath.Join(podInfo, name), downwardAPIFile(m), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(root)

	proxy := istioProxy(t, cfg, pod)
	env := containerEnv(t, pod, proxy)
	lookup := func(k string) string {
		for _, e := range env {
			if v, ok := strings.CutPrefix(e, k+"="); ok {
				return v
			}
		}
		return ""
	}
	pc, err := agentconfig.ConstructProxyConfig("./etc/istio/config/mesh", "istio-proxy", lookup("PROXY_CONFIG"), 0)
	if err != nil {
		t.Fatalf("pilot-agent's proxy configuration: %v", err)
	}
	socketFile := lookup("WORKLOAD_IDENTITY_SOCKET_FILE")
	if socketFile == "" {
		socketFile = security.DefaultWorkloadIdentitySocketFile
	}
	ip := lookup("INSTANCE_IP")
	// pilot-agent's service node (pkg/istio-agent's Proxy.ServiceNode, not imported here: that
	// package drags in Wasm image fetching): type~IP~pod.namespace~DNS domain. istiod parses it back
	// with its own code in mesh.proxy.
	ns := lookup("POD_NAMESPACE")
	id := strings.Join([]string{string(model.SidecarProxy), ip, lookup("POD_NAME") + "." + ns, ns + ".svc.cluster.local"}, "~")
	node, err := bootstrap.GetNodeMetaData(bootstrap.MetadataOptions{
		ID:                          id,
		Envs:                        env,
		InstanceIPs:                 []string{ip},
		ProxyConfig:                 pc,
		CustomCredentialsFileExists: true,
		WorkloadIdentitySocketFile:  socketFile,
	})
	if err != nil {
		t.Fatalf("pilot-agent's node metadata: %v", err)
	}
	var out bytes.Buffer
	tmpl := filepath.Join(istioModuleDir, "tools/packaging/common/envoy_bootstrap.json")
	if err := bootstrap.New(bootstrap.Config{Node: node}).WriteTo(tmpl, &out); err != nil {
		t.Fatalf("pilot-agent's Envoy bootstrap: %v", err)
	}
	var b map[string]any
	if err := json.Unmarshal(out.Bytes(), &b); err != nil {
		t.Fatalf("the Envoy bootstrap is not JSON: %v\n%s", err, out.String())
	}
	return agent{SocketFile: socketFile, Node: node, Bootstrap: b}
}

// volumeMount is where c mounts volume, or "".
func volumeMount(c *corev1.Container, volume string) string {
	i := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == volume })
	if i < 0 {
		return ""
	}
	return c.VolumeMounts[i].MountPath
}
