package mutators

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

// workloadSocket wires a pod without a proxy (a plain app, or one that runs its own Envoy as in
// the spiffe.io Envoy tutorials) to the SPIFFE Workload API: a read-only SPIFFE CSI volume, mounted
// in every app container, and SPIFFE_ENDPOINT_SOCKET pointing at the agent's socket, unless the
// container already sets it.
type workloadSocket struct{}

func (workloadSocket) name() string { return "workload-socket" }

func (workloadSocket) handles(s *state) bool { return s.mode == annotations.ModeWorkload }

func (workloadSocket) mutate(pod *corev1.Pod, s *state) error {
	cfg := s.cfg
	if i := volumeIndex(pod, WorkloadAPIVolume); i < 0 {
		pod.Spec.Volumes = append(pod.Spec.Volumes, csiVolume(WorkloadAPIVolume, cfg.CSIDriver))
		s.status.Volumes = append(s.status.Volumes, WorkloadAPIVolume)
	} else if !isCSIVolume(&pod.Spec.Volumes[i], cfg.CSIDriver) {
		return invalidf("spec.volumes[%s]: the name is reserved by spire-mesh-injector for the SPIFFE CSI volume; allowed: rename the volume, or make it exactly {csi: {driver: %s, readOnly: true}}", WorkloadAPIVolume, cfg.CSIDriver)
	}
	wire := func(c *corev1.Container, init bool) error {
		if c.Name == JWTHelperContainer {
			return nil
		}
		at, added, err := ensureMount(c, init, WorkloadAPIVolume, cfg.Workload.MountPath, "the SPIFFE Workload API socket")
		if err != nil {
			return err
		}
		if added {
			s.recordMount(c.Name, WorkloadAPIVolume)
		}
		if envIndex(c, contract.EnvEndpointSocket) < 0 {
			c.Env = append(c.Env, corev1.EnvVar{Name: contract.EnvEndpointSocket, Value: cfg.WorkloadSocketURI(at)})
			s.recordEnv(c.Name, contract.EnvEndpointSocket)
		}
		return nil
	}
	for i := range pod.Spec.InitContainers {
		if err := wire(&pod.Spec.InitContainers[i], true); err != nil {
			return err
		}
	}
	for i := range pod.Spec.Containers {
		if err := wire(&pod.Spec.Containers[i], false); err != nil {
			return err
		}
	}
	return nil
}
