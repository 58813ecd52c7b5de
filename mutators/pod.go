package mutators

import (
	corev1 "k8s.io/api/core/v1"
)

// FindContainer returns the container called name in containers or, for native sidecars,
// initContainers.
func FindContainer(pod *corev1.Pod, name string) (c *corev1.Container, init bool, ok bool) {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			return &pod.Spec.Containers[i], false, true
		}
	}
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == name {
			return &pod.Spec.InitContainers[i], true, true
		}
	}
	return nil, false, false
}

// removeContainer removes the container called name from containers or initContainers.
func removeContainer(pod *corev1.Pod, name string) {
	pod.Spec.Containers = deleteByName(pod.Spec.Containers, name)
	pod.Spec.InitContainers = deleteByName(pod.Spec.InitContainers, name)
}

func deleteByName(cs []corev1.Container, name string) []corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			out := append(cs[:i:i], cs[i+1:]...)
			if len(out) == 0 {
				return nil
			}
			return out
		}
	}
	return cs
}

func volumeIndex(pod *corev1.Pod, name string) int {
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == name {
			return i
		}
	}
	return -1
}

func mountByName(c *corev1.Container, volume string) int {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].Name == volume {
			return i
		}
	}
	return -1
}

func mountByPath(c *corev1.Container, path string) int {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == path {
			return i
		}
	}
	return -1
}

func envIndex(c *corev1.Container, name string) int {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return i
		}
	}
	return -1
}

// volumeMounted reports whether any container of the pod still mounts volume.
func volumeMounted(pod *corev1.Pod, volume string) bool {
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			if mountByName(&list[i], volume) >= 0 {
				return true
			}
		}
	}
	return false
}

// isNativeSidecar reports whether an init container keeps running beside the app (Kubernetes 1.29+).
func isNativeSidecar(c *corev1.Container) bool {
	return c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

// csiVolume is the SPIFFE CSI volume the webhook puts into pods. The driver refuses volumes that
// are not read-only.
func csiVolume(name, driver string) corev1.Volume {
	readOnly := true
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: driver, ReadOnly: &readOnly}}}
}

// isCSIVolume reports whether v is a read-only CSI volume of driver.
func isCSIVolume(v *corev1.Volume, driver string) bool {
	return v.CSI != nil && v.CSI.Driver == driver && v.CSI.ReadOnly != nil && *v.CSI.ReadOnly &&
		v.CSI.FSType == nil && len(v.CSI.VolumeAttributes) == 0 && v.CSI.NodePublishSecretRef == nil
}

func setAnnotation(pod *corev1.Pod, key, value string) {
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[key] = value
}

func setLabel(pod *corev1.Pod, key, value string) {
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[key] = value
}

// recordMount and recordEnv note in the status what this run added to a container.
func (s *state) recordMount(container, volume string) {
	if s.status.Mounts == nil {
		s.status.Mounts = map[string][]string{}
	}
	s.status.Mounts[container] = append(s.status.Mounts[container], volume)
}

func (s *state) recordEnv(container, env string) {
	if s.status.Env == nil {
		s.status.Env = map[string][]string{}
	}
	s.status.Env[container] = append(s.status.Env[container], env)
}

// reservedNames refuses a pod that uses a container name the webhook owns. It runs after
// stripPrevious, which has taken back the webhook's own helper, so what is left is the user's.
type reservedNames struct{}

func (reservedNames) name() string { return "reserved-names" }

func (reservedNames) handles(*state) bool { return true }

func (reservedNames) mutate(pod *corev1.Pod, _ *state) error {
	if c, init, ok := FindContainer(pod, JWTHelperContainer); ok {
		return invalidf("%s: the name is reserved by spire-mesh-injector for the JWT-SVID helper; allowed: any other container name", containerField(init, c.Name))
	}
	return nil
}
