package mutators

import (
	"encoding/json"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// JWTHelperCommand is the helper's entrypoint in the project image.
const JWTHelperCommand = "/spiffe-jwt-helper"

// Helper HTTP paths, served on jwtHelper.healthPort inside the pod.
const (
	// ReadyPath answers 200 once every requested token has been written and is unexpired.
	ReadyPath = "/ready"
	// LivePath answers 200 while the helper's refresh loop is alive.
	LivePath = "/healthz"
)

// jwtVolumeSize bounds the in-memory token volume: a JWT-SVID is a few KB.
var jwtVolumeSize = resource.MustParse("1Mi")

// jwtHelper adds the JWT-SVID helper sidecar to pods that ask for JWT-SVIDs with the audience
// annotation. The helper fetches one token per audience from the Workload API and writes it to an
// in-memory volume that app containers mount read-only at jwtHelper.tokenDir, as
// <tokenDir>/<audience>.jwt (see annotations.TokenFileName), with the JWKS bundle beside them. As a
// native sidecar it holds the app containers, with a startup probe, until every token exists.
type jwtHelper struct{}

func (jwtHelper) name() string { return "jwt-helper" }

func (jwtHelper) handles(s *state) bool { return len(s.audiences) > 0 }

func (jwtHelper) mutate(pod *corev1.Pod, s *state) error {
	cfg := s.cfg
	want := tokenVolume()
	if i := volumeIndex(pod, JWTVolume); i < 0 {
		pod.Spec.Volumes = append(pod.Spec.Volumes, want)
		s.status.Volumes = append(s.status.Volumes, JWTVolume)
	} else if !isTokenVolume(&pod.Spec.Volumes[i]) {
		return invalidf("spec.volumes[%s]: the name is reserved by spire-mesh-injector for the JWT-SVID token volume; allowed: any other volume name", JWTVolume)
	}
	if c, init, ok := findContainer(pod, JWTHelperContainer); ok {
		return invalidf("%s: the name is reserved by spire-mesh-injector for the JWT-SVID helper; allowed: any other container name", containerField(init, c.Name))
	}

	socketVolume := WorkloadAPIVolume
	if s.mode == annotations.ModeMesh {
		socketVolume = IstioSocketVolume
	}
	native := cfg.JWTHelper.NativeSidecar == config.NativeAlways ||
		(cfg.JWTHelper.NativeSidecar == config.NativeAuto && hasNativeSidecar(pod))
	helper := helperContainer(cfg, s.audiences, s.extAuthz, socketVolume, native)
	if s.mode == annotations.ModeMesh {
		if err := probeThroughPilotAgent(pod, cfg, &helper); err != nil {
			return err
		}
	}

	helperAt := -1
	if native {
		// Right after Istio's proxy when it is a native sidecar, so the helper's own traffic is
		// already in the mesh; otherwise first. Either way before the app's own init containers,
		// which may then read tokens.
		helperAt = 0
		for i := range pod.Spec.InitContainers {
			if pod.Spec.InitContainers[i].Name == cfg.Istio.ProxyContainerName {
				helperAt = i + 1
			}
		}
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{})
		copy(pod.Spec.InitContainers[helperAt+1:], pod.Spec.InitContainers[helperAt:])
		pod.Spec.InitContainers[helperAt] = helper
	} else {
		pod.Spec.Containers = append(pod.Spec.Containers, helper)
	}
	s.status.Containers = append(s.status.Containers, JWTHelperContainer)

	// App containers that start after the helper can read the tokens.
	mount := func(c *corev1.Container, init bool) error {
		if c.Name == JWTHelperContainer || c.Name == cfg.Istio.ProxyContainerName || istioInitContainers[c.Name] {
			return nil
		}
		_, added, err := ensureMount(c, init, JWTVolume, cfg.JWTHelper.TokenDir, "JWT-SVIDs")
		if err == nil && added {
			s.recordMount(c.Name, JWTVolume)
		}
		return err
	}
	if native {
		for i := helperAt + 1; i < len(pod.Spec.InitContainers); i++ {
			if err := mount(&pod.Spec.InitContainers[i], true); err != nil {
				return err
			}
		}
	}
	for i := range pod.Spec.Containers {
		if err := mount(&pod.Spec.Containers[i], false); err != nil {
			return err
		}
	}
	return nil
}

// Istio's probe rewriting: pilot-agent serves each rewritten probe at
// /app-health/<container>/<kind> on its status port and forwards it to the container, as listed
// in istio-proxy's ISTIO_KUBE_APP_PROBERS.
const (
	istioRewriteAnnotation = "sidecar.istio.io/rewriteAppHTTPProbers"
	istioAppHealthPrefix   = "/app-health/"
	istioStatusPort        = 15020
)

// probeThroughPilotAgent routes the helper's probes through pilot-agent, as Istio's injector does
// for the app containers it finds. In a meshed pod the kubelet's plain-HTTP probe of the helper's
// port would reach Envoy's inbound listener, which refuses it under STRICT mutual TLS: the helper
// would never be ready. Istio does not do it for the helper itself, because the helper is added
// after Istio's injector ran (or taken back and added again when we are reinvoked after it).
// Nothing is done where the pod turns Istio's rewriting off.
func probeThroughPilotAgent(pod *corev1.Pod, cfg *config.Config, helper *corev1.Container) error {
	if pod.Annotations[istioRewriteAnnotation] == "false" {
		return nil
	}
	proxy, _, ok := findContainer(pod, cfg.Istio.ProxyContainerName)
	if !ok {
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
	i := envIndex(proxy, envIstioAppProbers)
	if i >= 0 && proxy.Env[i].Value != "" {
		if err := json.Unmarshal([]byte(proxy.Env[i].Value), &probers); err != nil {
			return invalidf("%s.env[%s]: not the JSON object Istio's injector writes: %v; allowed: Istio's own value",
				containerField(false, proxy.Name), envIstioAppProbers, err)
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

func hasNativeSidecar(pod *corev1.Pod) bool {
	for i := range pod.Spec.InitContainers {
		if isNativeSidecar(&pod.Spec.InitContainers[i]) {
			return true
		}
	}
	return false
}

func tokenVolume() corev1.Volume {
	size := jwtVolumeSize
	return corev1.Volume{Name: JWTVolume, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
		Medium: corev1.StorageMediumMemory, SizeLimit: &size,
	}}}
}

func isTokenVolume(v *corev1.Volume) bool {
	return v.EmptyDir != nil && v.EmptyDir.Medium == corev1.StorageMediumMemory && v.EmptyDir.SizeLimit != nil &&
		v.EmptyDir.SizeLimit.Cmp(jwtVolumeSize) == 0
}

// helperContainer is the helper's container spec. Every field the API server would default is set
// here, so that on reinvocation the stored helper equals a freshly built one and the patch is empty.
func helperContainer(cfg *config.Config, audiences []string, extAuthz, socketVolume string, native bool) corev1.Container {
	j := cfg.JWTHelper
	args := make([]string, 0, len(audiences)+4)
	for _, a := range audiences {
		args = append(args, "--audience="+a)
	}
	args = append(args,
		"--output-dir="+j.TokenDir,
		"--file-mode="+j.FileMode,
		"--health-addr=:"+strconv.Itoa(int(j.HealthPort)),
	)
	if extAuthz != "" {
		// Loopback only: Envoy in the same pod is the only client.
		args = append(args, "--ext-authz-addr=127.0.0.1:"+strconv.Itoa(int(j.ExtAuthzPort)), "--ext-authz-audience="+extAuthz)
	}
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(j.HealthPort), Scheme: corev1.URISchemeHTTP,
			}},
			TimeoutSeconds: 1, PeriodSeconds: period, SuccessThreshold: 1, FailureThreshold: failures,
		}
	}
	yes, no := true, false
	c := corev1.Container{
		Name:            JWTHelperContainer,
		Image:           j.Image,
		ImagePullPolicy: j.ImagePullPolicy,
		Command:         []string{JWTHelperCommand},
		Args:            args,
		Env:             []corev1.EnvVar{{Name: EnvEndpointSocket, Value: cfg.WorkloadSocketURI(cfg.Workload.MountPath)}},
		Resources:       *j.Resources.DeepCopy(),
		VolumeMounts: []corev1.VolumeMount{
			{Name: socketVolume, MountPath: cfg.Workload.MountPath, ReadOnly: true},
			{Name: JWTVolume, MountPath: j.TokenDir},
		},
		ReadinessProbe: probe(ReadyPath, 5, 3),
		LivenessProbe:  probe(LivePath, 10, 3),
		// Passes OpenShift's restricted-v2 SCC and the "restricted" Pod Security Standard; the
		// UID is left to the platform (OpenShift assigns one from the namespace's range).
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             &yes,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &yes,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePath:   corev1.TerminationMessagePathDefault,
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if native {
		always := corev1.ContainerRestartPolicyAlways
		c.RestartPolicy = &always
		// The kubelet starts the next container only once this probe passes: app containers
		// start with their tokens already written. Two minutes covers a slow first attestation.
		c.StartupProbe = probe(ReadyPath, 1, 120)
	}
	return c
}
