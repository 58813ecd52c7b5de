package xds

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	meshconfig "istio.io/api/mesh/v1alpha1"
	"istio.io/istio/pilot/pkg/model"
	xdsfake "istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/config/constants"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

// mesh is the reference configuration running: Istio's control plane (the fake discovery server
// of Istio's xDS tests) with the mesh configuration and the Istio resources of manifests/, the
// Kubernetes objects of manifests/ and testdata/, and the sample workloads wired as the API
// server stores them.
type mesh struct {
	cfg     *config.Config
	objects []object
	env     map[string]string // istiod's environment (values.pilot.env)
	config  *meshconfig.MeshConfig
	pods    map[string]*corev1.Pod // wired pods by namespace/app label
	agents  map[string]agent       // their pilot-agents, by the same key
	server  *xdsfake.FakeDiscoveryServer
}

// variant changes the shipped configuration, to show what a setting the manifests make is for.
type variant struct {
	// withoutEnv removes istiod environment variables the Istio resource sets.
	withoutEnv []string
	// mesh changes the rendered mesh configuration.
	mesh func(*meshconfig.MeshConfig)
}

// newMesh starts Istio's control plane on the shipped reference configuration.
func newMesh(t *testing.T) *mesh { return newMeshVariant(t, variant{}) }

func newMeshVariant(t *testing.T, v variant) *mesh {
	t.Helper()
	m := &mesh{cfg: webhookConfig(t, ""), pods: map[string]*corev1.Pod{}, agents: map[string]agent{}}
	m.objects = append(readObjects(t, manifestsDir), readObjects(t, testdataDir)...)

	values, err := sailValues(m.objects)
	if err != nil {
		t.Fatal(err)
	}
	m.env = pilotEnv(t, values)
	for _, k := range v.withoutEnv {
		delete(m.env, k)
	}
	applyPilotEnv(t, m.env)

	in, err := istioInjector()
	if err != nil {
		t.Fatalf("Istio's installer on manifests/ossm3: %v", err)
	}
	m.config = proto.Clone(in.Mesh()).(*meshconfig.MeshConfig)
	if v.mesh != nil {
		v.mesh(m.config)
	}
	m.requireOneTrustDomain(t)

	kube := []runtime.Object{&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}}
	var istioConfig []string
	var services []*corev1.Service
	var running []*corev1.Pod
	ip := 10
	for _, o := range m.objects {
		switch {
		case o.isIstioConfig():
			istioConfig = append(istioConfig, string(o.Raw))
		case o.APIVersion == "v1" && o.Kind == "Namespace":
			var ns corev1.Namespace
			o.decode(t, &ns)
			kube = append(kube, &ns)
		case o.APIVersion == "v1" && o.Kind == "Service":
			svc := &corev1.Service{}
			o.decode(t, svc)
			services = append(services, svc)
		case o.APIVersion == "v1" && o.Kind == "Pod":
			// Pods outside the mesh (ZTWIM's OIDC provider), as they run.
			pod := &corev1.Pod{}
			o.decode(t, pod)
			ip++
			pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.0.0.%d", ip), Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
			running = append(running, pod)
		case o.APIVersion == "apps/v1" && o.Kind == "Deployment":
			if !m.optedIn(o.Metadata.Namespace) {
				t.Fatalf("%s: Deployment %s is in a namespace not opted in to Istio and SPIRE", o.File, o.key())
			}
			ip++
			pod := wire(t, m.cfg, podOf(t, o), fmt.Sprintf("10.0.0.%d", ip))
			key := pod.Namespace + "/" + pod.Labels["app"]
			m.pods[key] = pod
			m.agents[key] = pilotAgent(t, m.cfg, pod)
			running = append(running, pod)
		}
	}
	for _, svc := range services {
		kube = append(kube, svc, endpointSlice(t, svc, running))
	}
	for _, pod := range running {
		kube = append(kube, pod)
	}
	m.server = xdsfake.NewFakeDiscoveryServer(t, xdsfake.FakeOptions{
		KubernetesObjects: kube,
		ConfigString:      strings.Join(istioConfig, "\n---\n"),
		MeshConfig:        m.config,
	})
	return m
}

// optedIn reports whether namespace ns, as manifests/ or testdata/ define it, is opted in to both
// Istio's injection and spire-mesh-injector's.
func (m *mesh) optedIn(ns string) bool {
	for _, o := range m.objects {
		if o.Kind == "Namespace" && o.Metadata.Name == ns {
			return o.Metadata.Labels["istio-injection"] == "enabled" && identity.OptedIn(o.Metadata.Labels)
		}
	}
	return false
}

// requireOneTrustDomain checks the one fact the whole configuration rests on: Istio's trust
// domain, ZTWIM's and spire-mesh-injector's are the same.
func (m *mesh) requireOneTrustDomain(t *testing.T) {
	t.Helper()
	for _, o := range m.objects {
		if o.Kind == "ZeroTrustWorkloadIdentityManager" {
			var z struct {
				Spec struct {
					TrustDomain string `json:"trustDomain"`
				} `json:"spec"`
			}
			o.decode(t, &z)
			if z.Spec.TrustDomain != m.cfg.TrustDomain || m.config.TrustDomain != m.cfg.TrustDomain {
				t.Fatalf("trust domains differ: ZTWIM %q, Istio %q, spire-mesh-injector %q", z.Spec.TrustDomain, m.config.TrustDomain, m.cfg.TrustDomain)
			}
			return
		}
	}
	t.Fatal("manifests/ has no ZeroTrustWorkloadIdentityManager")
}

// pod is the wired pod of workload app in namespace ns.
func (m *mesh) pod(t *testing.T, ns, app string) *corev1.Pod {
	t.Helper()
	p, ok := m.pods[ns+"/"+app]
	if !ok {
		t.Fatalf("no wired pod %s/%s; have %v", ns, app, slices.Sorted(maps.Keys(m.pods)))
	}
	return p
}

// spiffeID is the SPIFFE ID spire-mesh-injector's registration gives the workload (identity.SPIFFEID).
func (m *mesh) spiffeID(t *testing.T, ns, app string) string {
	t.Helper()
	return spiffeIDOf(t, m.cfg, m.pod(t, ns, app))
}

// spiffeIDOf is identity.SPIFFEID for pod under cfg.
func spiffeIDOf(t *testing.T, cfg *config.Config, pod *corev1.Pod) string {
	t.Helper()
	id, err := identity.SPIFFEID(cfg, pod)
	if err != nil || id == "" {
		t.Fatalf("identity.SPIFFEID(%s/%s) = %q, %v", pod.Namespace, pod.Name, id, err)
	}
	return id
}

// proxy is the wired pod's sidecar as istiod sees it once Envoy connects with the node pilot-agent
// wrote into its bootstrap: istiod's own parsing of the node (ParseMetadata,
// ParseServiceNodeWithMetadata, the config namespace), the workload's labels from the registry,
// and the rest of istiod's per-proxy setup (SetupProxy: sidecar scope, service targets).
func (m *mesh) proxy(t *testing.T, ns, app string) *model.Proxy {
	t.Helper()
	a, ok := m.agents[ns+"/"+app]
	if !ok {
		t.Fatalf("no wired pod %s/%s", ns, app)
	}
	node, _ := a.Bootstrap["node"].(map[string]any)
	raw, err := structpb.NewStruct(node["metadata"].(map[string]any))
	if err != nil {
		t.Fatal(err)
	}
	meta, err := model.ParseMetadata(raw)
	if err != nil {
		t.Fatalf("istiod cannot parse the node metadata pilot-agent wrote: %v\n%s", err, jsonOf(raw))
	}
	p, err := model.ParseServiceNodeWithMetadata(node["id"].(string), meta)
	if err != nil {
		t.Fatal(err)
	}
	p.ConfigNamespace = model.GetProxyConfigNamespace(p)
	p.SetWorkloadLabels(m.server.Env())
	if p.Metadata.ClusterID == "" {
		t.Fatalf("pilot-agent's node for %s/%s names no cluster", ns, app)
	}
	if p.Metadata.ClusterID != constants.DefaultClusterName {
		// The fake discovery server's registry is the default cluster's.
		t.Fatalf("pilot-agent's node for %s/%s is in cluster %q, the registry is %q", ns, app, p.Metadata.ClusterID, constants.DefaultClusterName)
	}
	return m.server.SetupProxy(p)
}

// podsSelected are the wired pods in ns that selector (a workload selector's matchLabels; empty:
// every pod) selects.
func (m *mesh) podsSelected(ns string, selector map[string]string) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range m.pods {
		if p.Namespace == ns && labels.SelectorFromSet(selector).Matches(labels.Set(p.Labels)) {
			out = append(out, p)
		}
	}
	return out
}

// endpointSlice is the EndpointSlice Kubernetes' EndpointSlice controller (which does not run here)
// keeps for svc: the ready pods it selects, with the target ports resolved against their
// containers' named ports.
func endpointSlice(t *testing.T, svc *corev1.Service, pods []*corev1.Pod) *discoveryv1.EndpointSlice {
	t.Helper()
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      svc.Name + "-x9d2k",
			Namespace: svc.Namespace,
			Labels:    map[string]string{discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	var selected []*corev1.Pod
	for _, p := range pods {
		if p.Namespace == svc.Namespace && len(svc.Spec.Selector) > 0 && labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(p.Labels)) {
			selected = append(selected, p)
			es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{p.Status.PodIP},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name},
				NodeName:   ptr.To(p.Spec.NodeName),
			})
		}
	}
	for _, sp := range svc.Spec.Ports {
		port := sp.TargetPort.IntVal
		if sp.TargetPort.StrVal != "" && len(selected) > 0 {
			for _, c := range selected[0].Spec.Containers {
				for _, cp := range c.Ports {
					if cp.Name == sp.TargetPort.StrVal {
						port = cp.ContainerPort
					}
				}
			}
		}
		if port == 0 {
			port = sp.Port
		}
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr.To(sp.Name), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)})
	}
	return es
}
