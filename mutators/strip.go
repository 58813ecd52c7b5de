package mutators

import (
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

// stripPrevious takes back what an earlier invocation of the webhook added, as recorded in the
// pod's status annotation, so that the chain then wires the pod from its current shape. This is
// what makes the result independent of webhook order: a pod first wired as a plain workload and
// then given a proxy by Istio's injector (which reinvokes us) ends up exactly as if Istio had run
// first. Only items with the webhook's reserved names (and, for environment variables, the values
// it sets) are taken back, so a status annotation written by hand cannot remove anything else;
// whatever is taken back is added again below if the pod still needs it.
type stripPrevious struct{}

func (stripPrevious) name() string { return "strip-previous" }

func (stripPrevious) handles(s *state) bool { return s.prev.Version != 0 }

func (stripPrevious) mutate(pod *corev1.Pod, s *state) error {
	p := &s.prev
	for _, name := range p.Containers {
		if name == JWTHelperContainer {
			removeContainer(pod, name)
			forgetInIstioProxy(pod, s.cfg, name)
		}
	}
	for cname, vols := range p.Mounts {
		c, _, ok := FindContainer(pod, cname)
		if !ok {
			continue
		}
		for _, v := range vols {
			if reservedVolume(v) {
				c.VolumeMounts = removeMounts(c.VolumeMounts, v)
			}
		}
	}
	for cname, envs := range p.Env {
		c, _, ok := FindContainer(pod, cname)
		if !ok {
			continue
		}
		for _, e := range envs {
			if i := envIndex(c, e); i >= 0 && isOurEnv(s.cfg, c.Env[i]) {
				c.Env = append(c.Env[:i:i], c.Env[i+1:]...)
				if len(c.Env) == 0 {
					c.Env = nil
				}
			}
		}
	}
	for _, v := range p.Volumes {
		// A volume something still mounts stays: removing it would make the pod invalid.
		if i := volumeIndex(pod, v); i >= 0 && reservedVolume(v) && !volumeMounted(pod, v) {
			pod.Spec.Volumes = append(pod.Spec.Volumes[:i:i], pod.Spec.Volumes[i+1:]...)
			if len(pod.Spec.Volumes) == 0 {
				pod.Spec.Volumes = nil
			}
		}
	}
	return nil
}

func reservedVolume(name string) bool {
	return name == IstioSocketVolume || name == WorkloadAPIVolume || name == JWTVolume
}

func removeMounts(ms []corev1.VolumeMount, volume string) []corev1.VolumeMount {
	out := ms[:0:0]
	for _, m := range ms {
		if m.Name != volume {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// isOurEnv reports whether e has one of the values the webhook sets.
func isOurEnv(cfg *config.Config, e corev1.EnvVar) bool {
	if e.ValueFrom != nil {
		return false
	}
	switch e.Name {
	case contract.EnvEndpointSocket:
		return strings.HasPrefix(e.Value, "unix:///") && strings.HasSuffix(e.Value, "/"+cfg.SocketFileName)
	case EnvIstioSocketFile:
		return e.Value == cfg.SocketFileName
	}
	return false
}
