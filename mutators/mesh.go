package mutators

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// istioProxy wires a pod that runs Istio's proxy (classic sidecar, native sidecar or gateway) the
// way Istio's own SPIRE injection template does, without the per-pod template annotation: the
// workload-socket volume becomes a read-only SPIFFE CSI volume (keeping its name, so Istio's mounts
// still refer to it), istio-proxy mounts it read-only where pilot-agent looks for the socket, and
// pilot-agent is told the socket's file name when it is not Istio's default. pilot-agent then finds
// SPIRE's Workload API on the socket and Envoy gets its SVIDs from SPIRE over SDS.
type istioProxy struct{}

func (istioProxy) name() string { return "istio-proxy" }

func (istioProxy) handles(s *state) bool { return s.mode == annotations.ModeMesh }

func (istioProxy) mutate(pod *corev1.Pod, s *state) error {
	cfg := s.cfg
	if i := volumeIndex(pod, IstioSocketVolume); i < 0 {
		pod.Spec.Volumes = append(pod.Spec.Volumes, csiVolume(IstioSocketVolume, cfg.CSIDriver))
		s.status.Volumes = append(s.status.Volumes, IstioSocketVolume)
	} else if !isCSIVolume(&pod.Spec.Volumes[i], cfg.CSIDriver) {
		// Istio's template makes it an emptyDir that pilot-agent would serve its own CA's
		// certificates through; the CSI volume publishes the SPIRE agent's socket instead.
		pod.Spec.Volumes[i] = csiVolume(IstioSocketVolume, cfg.CSIDriver)
	}

	proxy, init, _ := FindContainer(pod, cfg.Istio.ProxyContainerName)
	mounted := false
	for i := range proxy.VolumeMounts {
		if proxy.VolumeMounts[i].Name == IstioSocketVolume {
			mounted = true
			proxy.VolumeMounts[i].ReadOnly = true
		}
	}
	if !mounted {
		if _, _, err := ensureMount(proxy, init, IstioSocketVolume, cfg.Istio.SocketMountPath, "the Workload API socket for pilot-agent"); err != nil {
			return err
		}
		s.recordMount(proxy.Name, IstioSocketVolume)
	}

	if i := envIndex(proxy, EnvIstioSocketFile); i >= 0 {
		if proxy.Env[i].ValueFrom != nil || proxy.Env[i].Value != cfg.SocketFileName {
			proxy.Env[i] = corev1.EnvVar{Name: EnvIstioSocketFile, Value: cfg.SocketFileName}
		}
	} else if cfg.SocketFileName != config.IstioDefaultSocketFileName {
		proxy.Env = append(proxy.Env, corev1.EnvVar{Name: EnvIstioSocketFile, Value: cfg.SocketFileName})
		s.recordEnv(proxy.Name, EnvIstioSocketFile)
	}
	return nil
}

// ensureMount makes c mount volume read-only at path unless c already mounts that volume, and
// returns where the volume is mounted and whether the mount was added. Another volume mounted at
// path is the pod author's mistake.
func ensureMount(c *corev1.Container, init bool, volume, path, purpose string) (string, bool, error) {
	if i := mountByName(c, volume); i >= 0 {
		return c.VolumeMounts[i].MountPath, false, nil
	}
	if i := mountByPath(c, path); i >= 0 {
		return "", false, invalidf("%s.volumeMounts: volume %q is mounted at %s, where spire-mesh-injector mounts %s; allowed: any other mount path",
			containerField(init, c.Name), c.VolumeMounts[i].Name, path, purpose)
	}
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: volume, MountPath: path, ReadOnly: true})
	return path, true, nil
}

func containerField(init bool, name string) string {
	if init {
		return "spec.initContainers[" + name + "]"
	}
	return "spec.containers[" + name + "]"
}
