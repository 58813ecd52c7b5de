package mutators

import (
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

// stripPrevious takes back what an earlier invocation of the webhook added, as recorded in the
// pod's status annotation, so that the chain then wires the pod from its current shape. This is
// what makes the result independent of webhook order: a pod first wired as a plain workload and
// then given a proxy by Istio's injector (which reinvokes us) ends up exactly as if Istio had run
// first. Only what is exactly what the webhook would inject is taken back — a reserved name and the
// value, path or command the webhook gives it — so a status annotation written by hand, or copied
// with a manifest from a wired pod, cannot remove or overwrite anything of the user's; whatever is
// taken back is added again below if the pod still needs it.
type stripPrevious struct{}

func (stripPrevious) name() string { return "strip-previous" }

func (stripPrevious) handles(s *state) bool { return s.prev.Version != 0 }

func (stripPrevious) mutate(pod *corev1.Pod, s *state) error {
	p := &s.prev
	for _, name := range p.Containers {
		if c, _, ok := FindContainer(pod, name); ok && name == JWTHelperContainer && isOurHelper(c) {
			removeContainer(pod, name)
			forgetInIstioProxy(pod, s.cfg, name)
		}
	}
	// Env before mounts: whether SPIFFE_ENDPOINT_SOCKET is ours depends on where the container
	// mounts the socket.
	for cname, envs := range p.Env {
		c, _, ok := FindContainer(pod, cname)
		if !ok {
			continue
		}
		for _, e := range envs {
			if i := envIndex(c, e); i >= 0 && isOurEnv(s.cfg, c, c.Env[i]) {
				c.Env = append(c.Env[:i:i], c.Env[i+1:]...)
				if len(c.Env) == 0 {
					c.Env = nil
				}
			}
		}
	}
	for cname, vols := range p.Mounts {
		c, _, ok := FindContainer(pod, cname)
		if !ok {
			continue
		}
		for _, v := range vols {
			c.VolumeMounts = removeOurMount(s.cfg, c.VolumeMounts, v)
		}
	}
	for _, v := range p.Volumes {
		// A volume something still mounts stays: removing it would make the pod invalid.
		if i := volumeIndex(pod, v); i >= 0 && isOurVolume(s.cfg, &pod.Spec.Volumes[i]) && !volumeMounted(pod, v) {
			pod.Spec.Volumes = append(pod.Spec.Volumes[:i:i], pod.Spec.Volumes[i+1:]...)
			if len(pod.Spec.Volumes) == 0 {
				pod.Spec.Volumes = nil
			}
		}
	}
	return nil
}

// isOurHelper reports whether c runs the JWT helper of the project's image, as the webhook builds
// it; a container of the user's that merely has the helper's name is not taken back (and is then
// refused for its reserved name).
func isOurHelper(c *corev1.Container) bool {
	return slices.Equal(c.Command, []string{contract.Command})
}

// ourMountPath is where the webhook mounts one of its reserved volumes when it adds the mount.
func ourMountPath(cfg *config.Config, volume string) string {
	switch volume {
	case WorkloadAPIVolume:
		return cfg.Workload.MountPath
	case JWTVolume:
		return cfg.JWTHelper.TokenDir
	case IstioSocketVolume:
		return cfg.Istio.SocketMountPath
	}
	return ""
}

// removeOurMount removes the mount of volume that is exactly the one the webhook adds: the volume
// at its path, read-only, nothing else set. The user's own mounts of the volume stay.
func removeOurMount(cfg *config.Config, ms []corev1.VolumeMount, volume string) []corev1.VolumeMount {
	path := ourMountPath(cfg, volume)
	if path == "" {
		return ms
	}
	ours := corev1.VolumeMount{Name: volume, MountPath: path, ReadOnly: true}
	for i := range ms {
		if ms[i] == ours {
			out := append(ms[:i:i], ms[i+1:]...)
			if len(out) == 0 {
				return nil
			}
			return out
		}
	}
	return ms
}

// isOurVolume reports whether v is exactly a volume the webhook adds: a reserved name with the
// source the webhook gives it. A volume of the user's that a status annotation written by hand
// names (Istio's own emptyDir workload-socket, say) is not taken back: it stays where it is, and
// the chain changes it there if it must, field by field.
func isOurVolume(cfg *config.Config, v *corev1.Volume) bool {
	switch v.Name {
	case IstioSocketVolume, WorkloadAPIVolume:
		return isCSIVolume(v, cfg.CSIDriver)
	case JWTVolume:
		return isTokenVolume(v)
	}
	return false
}

// isOurEnv reports whether e, in container c, holds exactly the value the webhook sets.
func isOurEnv(cfg *config.Config, c *corev1.Container, e corev1.EnvVar) bool {
	if e.ValueFrom != nil {
		return false
	}
	switch e.Name {
	case contract.EnvEndpointSocket:
		// The webhook points the variable at where the container mounts the socket volume.
		at := cfg.Workload.MountPath
		if i := mountByName(c, WorkloadAPIVolume); i >= 0 {
			at = c.VolumeMounts[i].MountPath
		}
		return e.Value == cfg.WorkloadSocketURI(at)
	case EnvIstioSocketFile:
		return e.Value == cfg.SocketFileName
	}
	return false
}
