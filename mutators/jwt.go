package mutators

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

// jwtVolumeSize bounds the in-memory token volume: a JWT-SVID is a few KB.
var jwtVolumeSize = resource.MustParse("1Mi")

// jwtHelper adds the JWT-SVID helper sidecar to pods that ask for JWT-SVIDs with the audience
// annotation. The helper fetches one token per audience from the Workload API and writes it to an
// in-memory volume that app containers mount read-only at jwtHelper.tokenDir, as
// <tokenDir>/<audience>.jwt (see contract.TokenFileName), with the JWKS bundle beside them. As a
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

	socketVolume := WorkloadAPIVolume
	if s.mode == annotations.ModeMesh {
		socketVolume = IstioSocketVolume
	}
	native := cfg.JWTHelper.NativeSidecar == config.NativeAlways ||
		(cfg.JWTHelper.NativeSidecar == config.NativeAuto && hasNativeSidecar(pod))
	helper := helperContainer(cfg, s.audiences, s.extAuthz, socketVolume, native)
	if s.mode == annotations.ModeMesh {
		if err := probeThroughPilotAgent(pod, s, &helper); err != nil {
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
	args := contract.Args{
		Audiences: audiences, OutputDir: j.TokenDir, FileMode: j.FileMode, HealthPort: j.HealthPort,
		ExtAuthzPort: j.ExtAuthzPort, ExtAuthzAudience: extAuthz,
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
		Command:         []string{contract.Command},
		Args:            args.Flags(),
		Env:             []corev1.EnvVar{{Name: contract.EnvEndpointSocket, Value: cfg.WorkloadSocketURI(cfg.Workload.MountPath)}},
		Resources:       *j.Resources.DeepCopy(),
		VolumeMounts: []corev1.VolumeMount{
			{Name: socketVolume, MountPath: cfg.Workload.MountPath, ReadOnly: true},
			{Name: JWTVolume, MountPath: j.TokenDir},
		},
		ReadinessProbe: probe(contract.ReadyPath, 5, 3),
		LivenessProbe:  probe(contract.LivePath, 10, 3),
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
		c.StartupProbe = probe(contract.ReadyPath, 1, 120)
	}
	return c
}
