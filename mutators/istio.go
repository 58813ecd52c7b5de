package mutators

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// Everything the webhook knows about Istio's injection lives in this file: the names Istio's
// injection templates give things in a pod, how Istio marks a pod it injected, and Istio's probe
// rewriting, which the JWT helper joins in meshed pods.
const (
	// IstioSocketVolume is the volume Istio's injection template creates for the Workload API
	// socket; the webhook turns it into a SPIFFE CSI volume, keeping its name.
	IstioSocketVolume = "workload-socket"
	// IstioImagePlaceholder is the image a gateway's pod template gives istio-proxy for Istio's
	// injector to replace with the real proxy image.
	IstioImagePlaceholder = "auto"
	// IstioStatusAnnotation is written by Istio's injector on every pod it injected.
	IstioStatusAnnotation = "sidecar.istio.io/status"
	// EnvIstioSocketFile tells pilot-agent the socket's file name inside its socket directory.
	EnvIstioSocketFile = "WORKLOAD_IDENTITY_SOCKET_FILE"

	// Istio's injector describes the app containers it finds to pilot-agent in istio-proxy's
	// environment: their names, and the HTTP probes it rewrote to go through pilot-agent.
	envIstioAppContainers = "ISTIO_META_APP_CONTAINERS"
	envIstioAppProbers    = "ISTIO_KUBE_APP_PROBERS"

	// Istio's SPIRE injection template (Istio's samples/security/spire), which pods ask for with
	// inject.istio.io/templates: sidecar,spire (or gateway,spire), or which a mesh applies to all
	// with defaultTemplates. It mounts the socket volume a second time, read-only, at its own path.
	istioTemplatesAnnotation    = "inject.istio.io/templates"
	istioSPIRETemplateName      = "spire"
	istioSPIRETemplateMountPath = "/run/secrets/workload-spiffe-uds"

	// Istio's probe rewriting: pilot-agent serves each rewritten probe at
	// /app-health/<container>/<kind> on its status port and forwards it to the container, as
	// listed in ISTIO_KUBE_APP_PROBERS. A pod turns it off with the annotation.
	istioRewriteAnnotation = "sidecar.istio.io/rewriteAppHTTPProbers"
	istioAppHealthPrefix   = "/app-health/"
	istioStatusPort        = 15020
)

// isIstioControlPlane reports whether pod is istiod, by the labels Istio's charts give it (the
// webhook's configuration and the validating policy match the same labels).
func isIstioControlPlane(pod *corev1.Pod) bool {
	return pod.Labels["app"] == "istiod" || pod.Labels["istio"] == "pilot"
}

// istioInitContainers are Istio's own run-to-completion init containers (traffic redirection and
// its validation); they are not app containers.
var istioInitContainers = map[string]bool{"istio-init": true, "istio-validation": true}

// awaitingIstio reports whether proxy is still the placeholder a gateway's pod template carries
// and Istio's injector has not run yet: wiring it now would make Istio record our changes as the
// user's overrides. The webhook is called again after Istio (reinvocation).
func awaitingIstio(pod *corev1.Pod, proxy *corev1.Container) bool {
	return proxy.Image == IstioImagePlaceholder && pod.Annotations[IstioStatusAnnotation] == ""
}

// probeThroughPilotAgent routes the helper's probes through pilot-agent, as Istio's injector does
// for the app containers it finds. In a meshed pod the kubelet's plain-HTTP probe of the helper's
// port would reach Envoy's inbound listener, which refuses it under STRICT mutual TLS: the helper
// would never be ready. Istio does not do it for the helper itself, because the helper is added
// after Istio's injector ran (or taken back and added again when we are reinvoked after it).
// Nothing is done where the pod turns Istio's rewriting off.
//
// ISTIO_KUBE_APP_PROBERS given through valueFrom (not Istio's own way) holds the app's probe
// forwarding, which the webhook can neither read nor merge into: it is left as it is, the helper is
// probed directly, and the admission warns that under STRICT mutual TLS those probes fail.
func probeThroughPilotAgent(pod *corev1.Pod, s *state, helper *corev1.Container) error {
	if pod.Annotations[istioRewriteAnnotation] == "false" {
		return nil
	}
	proxy, init, ok := FindContainer(pod, s.cfg.Istio.ProxyContainerName)
	if !ok {
		return nil
	}
	i := envIndex(proxy, envIstioAppProbers)
	if i >= 0 && proxy.Env[i].ValueFrom != nil {
		s.warn(envIstioAppProbers + " uses valueFrom: helper probes not via pilot-agent; STRICT mTLS fails them")
		return nil
	}
	port := int32(istioStatusPort)
	// Istio rewrote the app's probes to the mesh's status port, if it is not the default.
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			for _, p := range []*corev1.Probe{cs[i].ReadinessProbe, cs[i].LivenessProbe, cs[i].StartupProbe} {
				if p != nil && p.HTTPGet != nil && strings.HasPrefix(p.HTTPGet.Path, istioAppHealthPrefix) && p.HTTPGet.Port.IntVal != 0 {
					port = p.HTTPGet.Port.IntVal
				}
			}
		}
	}
	probers := map[string]json.RawMessage{}
	if i >= 0 && proxy.Env[i].Value != "" {
		if err := json.Unmarshal([]byte(proxy.Env[i].Value), &probers); err != nil {
			return invalidf("%s.env[%s]: not the JSON object Istio's injector writes: %v; allowed: Istio's own value",
				containerField(init, proxy.Name), envIstioAppProbers, err)
		}
	}
	for kind, p := range map[string]*corev1.Probe{"readyz": helper.ReadinessProbe, "livez": helper.LivenessProbe, "startupz": helper.StartupProbe} {
		if p == nil || p.HTTPGet == nil {
			continue
		}
		path := istioAppHealthPrefix + helper.Name + "/" + kind
		// pilot-agent's prober format: the original HTTP action and its timeout.
		b, err := json.Marshal(struct {
			HTTPGet        *corev1.HTTPGetAction `json:"httpGet"`
			TimeoutSeconds int32                 `json:"timeoutSeconds,omitempty"`
		}{p.HTTPGet, p.TimeoutSeconds})
		if err != nil {
			return err
		}
		probers[path] = b
		p.HTTPGet = &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(port), Scheme: corev1.URISchemeHTTP}
	}
	b, err := json.Marshal(probers)
	if err != nil {
		return err
	}
	if i >= 0 {
		proxy.Env[i] = corev1.EnvVar{Name: envIstioAppProbers, Value: string(b)}
	} else {
		proxy.Env = append(proxy.Env, corev1.EnvVar{Name: envIstioAppProbers, Value: string(b)})
	}
	return nil
}

// forgetInIstioProxy takes container, which an earlier invocation added, out of what Istio's
// injector recorded about it in istio-proxy when Istio ran after that invocation. Without this,
// a pod wired before Istio's injector would keep istio-proxy forwarding probes of a container
// Istio did not see when it ran first, and the result would depend on webhook order.
func forgetInIstioProxy(pod *corev1.Pod, cfg *config.Config, container string) {
	proxy, _, ok := FindContainer(pod, cfg.Istio.ProxyContainerName)
	if !ok {
		return
	}
	if i := envIndex(proxy, envIstioAppContainers); i >= 0 && proxy.Env[i].ValueFrom == nil {
		names := strings.Split(proxy.Env[i].Value, ",")
		kept := names[:0]
		for _, n := range names {
			if n != container {
				kept = append(kept, n)
			}
		}
		proxy.Env[i].Value = strings.Join(kept, ",")
	}
	if i := envIndex(proxy, envIstioAppProbers); i >= 0 && proxy.Env[i].ValueFrom == nil {
		var probers map[string]json.RawMessage
		if json.Unmarshal([]byte(proxy.Env[i].Value), &probers) != nil {
			return // not Istio's format: leave it alone
		}
		prefix := istioAppHealthPrefix + container + "/"
		removed := false
		for k := range probers {
			if strings.HasPrefix(k, prefix) {
				delete(probers, k)
				removed = true
			}
		}
		switch {
		case !removed:
		case len(probers) == 0:
			// Istio sets the variable only when some container has probes to forward.
			proxy.Env = append(proxy.Env[:i:i], proxy.Env[i+1:]...)
		default:
			if b, err := json.Marshal(probers); err == nil {
				proxy.Env[i].Value = string(b)
			}
		}
	}
}

// spireTemplate undoes what Istio's SPIRE injection template leaves in a pod beyond what
// spire-mesh-injector itself does, so that a pod that still asks for the template (a namespace
// migrating from it) comes out exactly as the same pod without it:
//
//   - the template's second, read-only mount of the socket volume in istio-proxy, at its own path;
//   - in native-sidecar mode, the image-less istio-proxy the template leaves in containers beside
//     the real, native one in initContainers (Istio's injector moves istio-proxy to
//     initContainers only if the pod had it in containers before the templates ran). The API
//     server refuses such a pod (two containers of one name, one without an image), so the stub
//     is removed rather than the pod refused: it holds nothing but the template's mount, and the
//     real istio-proxy is wired as in any other pod.
//
// The template itself is redundant: the pod's author is told so, in a warning.
type spireTemplate struct{}

func (spireTemplate) name() string { return "istio-spire-template" }

func (spireTemplate) handles(s *state) bool { return s.mode == annotations.ModeMesh }

func (spireTemplate) mutate(pod *corev1.Pod, s *state) error {
	name := s.cfg.Istio.ProxyContainerName
	found := false
	if brokenGateway(pod, name) {
		return invalidf(`spec.containers[%s]: an image-less %s beside the %s Istio's injector put in initContainers as a run-to-completion container: the shape Istio's "spire" template (its initContainers variant) gives a gateway, which cannot run; allowed: remove "spire" from annotation %s: spire-mesh-injector wires the gateway without it`,
			name, name, name, istioTemplatesAnnotation)
	}
	if list, field := strayProxy(pod, name); list != nil {
		*list = slices.DeleteFunc(*list, func(c corev1.Container) bool { return c.Name == name && c.Image == "" })
		if len(*list) == 0 {
			*list = nil
		}
		if st, ok := forgetStubInIstioStatus(pod.Annotations[IstioStatusAnnotation], field, name); ok {
			pod.Annotations[IstioStatusAnnotation] = st
		}
		found = true
	}
	if proxy, _, ok := FindContainer(pod, name); ok && s.cfg.Istio.SocketMountPath != istioSPIRETemplateMountPath {
		templates := func(m corev1.VolumeMount) bool {
			return m.Name == IstioSocketVolume && m.MountPath == istioSPIRETemplateMountPath
		}
		if slices.ContainsFunc(proxy.VolumeMounts, templates) {
			proxy.VolumeMounts = slices.DeleteFunc(proxy.VolumeMounts, templates)
			found = true
		}
	}
	switch {
	case asksForSPIRETemplate(pod):
		s.warn(istioTemplatesAnnotation + ` names Istio's "spire" template: redundant here, remove it`)
	case found:
		s.warn(`Istio's "spire" template was applied (defaultTemplates?): redundant here, remove it`)
	}
	return nil
}

// strayProxy finds an image-less istio-proxy the template left beside the real one: in containers
// beside a native istio-proxy in initContainers (the template as shipped, native mode), or in
// initContainers beside a gateway's istio-proxy in containers (the template's native variant on a
// gateway). It returns the list holding the stub and that list's name in Istio's status
// annotation, or nil.
func strayProxy(pod *corev1.Pod, name string) (*[]corev1.Container, string) {
	find := func(cs []corev1.Container) *corev1.Container {
		for i := range cs {
			if cs[i].Name == name {
				return &cs[i]
			}
		}
		return nil
	}
	inits, cs := find(pod.Spec.InitContainers), find(pod.Spec.Containers)
	switch {
	case inits == nil || cs == nil:
		return nil, ""
	case cs.Image == "" && inits.Image != "" && isNativeSidecar(inits):
		return &pod.Spec.Containers, "containers"
	case inits.Image == "" && cs.Image != "":
		return &pod.Spec.InitContainers, "initContainers"
	}
	return nil, ""
}

// brokenGateway reports the shape the SPIRE template's initContainers variant gives a gateway:
// Istio's injector moves the gateway's istio-proxy to initContainers, where it is not a native
// sidecar and would never complete, and leaves an image-less stub in containers.
func brokenGateway(pod *corev1.Pod, name string) bool {
	var inits, cs *corev1.Container
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == name {
			inits = &pod.Spec.InitContainers[i]
		}
	}
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			cs = &pod.Spec.Containers[i]
		}
	}
	return inits != nil && cs != nil && cs.Image == "" && inits.Image != "" && !isNativeSidecar(inits)
}

// asksForSPIRETemplate reports whether the pod names Istio's SPIRE template among the templates
// it asks Istio's injector for.
func asksForSPIRETemplate(pod *corev1.Pod) bool {
	for _, t := range strings.Split(pod.Annotations[istioTemplatesAnnotation], ",") {
		if strings.TrimSpace(t) == istioSPIRETemplateName {
			return true
		}
	}
	return false
}

// forgetStubInIstioStatus takes container name out of the list (field: "containers" or
// "initContainers") where Istio's injector recorded the stray stub in its status annotation; the
// real proxy stays listed in the other. The annotation's other fields, and their order, are kept
// as Istio wrote them.
func forgetStubInIstioStatus(status, field, name string) (string, bool) {
	dec := json.NewDecoder(strings.NewReader(status))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return "", false
	}
	var out bytes.Buffer
	out.WriteByte('{')
	changed := false
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return "", false
		}
		key, _ := t.(string)
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return "", false
		}
		if key == field {
			var names []string
			if json.Unmarshal(val, &names) == nil {
				kept := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == name })
				if len(kept) != len(names) {
					changed = true
					if len(kept) == 0 {
						kept = nil
					}
					if val, err = json.Marshal(kept); err != nil {
						return "", false
					}
				}
			}
		}
		if out.Len() > 1 {
			out.WriteByte(',')
		}
		k, _ := json.Marshal(key)
		out.Write(k)
		out.WriteByte(':')
		out.Write(val)
	}
	out.WriteByte('}')
	return out.String(), changed
}
