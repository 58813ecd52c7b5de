// Package benchpod builds the pods the performance figures are measured on. It imports nothing
// but Kubernetes' API types, so that the separate module test/istio (Istio's own injector, which
// pins another controller-runtime) measures Istio on exactly the same pods as the main module
// measures spire-mesh-injector.
package benchpod

import (
	"encoding/json"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TypicalFixture is the typical post-Istio pod (Istio 1.27+, native sidecar), relative to the
// repository root.
const TypicalFixture = "mutators/testdata/native-sidecar.yaml"

// LargeSize is the size of the large pod's JSON.
const LargeSize = 64 << 10

// Load reads a YAML pod.
func Load(path string) (*corev1.Pod, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pod := &corev1.Pod{}
	if err := yaml.UnmarshalStrict(b, pod); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pod, nil
}

// Enlarge adds app containers, each with environment variables and mounts of its own, until the
// pod's JSON is at least size bytes: a large but realistic pod (big pods are many containers with
// long environments, not one huge field).
func Enlarge(pod *corev1.Pod, size int) (*corev1.Pod, error) {
	pod = pod.DeepCopy()
	for i := 0; ; i++ {
		b, err := json.Marshal(pod)
		if err != nil {
			return nil, err
		}
		if len(b) >= size {
			return pod, nil
		}
		c := corev1.Container{
			Name:  fmt.Sprintf("worker-%d", i),
			Image: fmt.Sprintf("quay.io/example/worker-%d:1.%d.0", i, i),
			Args:  []string{"--queue", fmt.Sprintf("jobs-%d", i), "--concurrency", "4"},
			Ports: []corev1.ContainerPort{{Name: fmt.Sprintf("metrics-%d", i), ContainerPort: int32(9100 + i), Protocol: corev1.ProtocolTCP}},
			VolumeMounts: []corev1.VolumeMount{
				{Name: "kube-api-access-x7k2p", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true},
			},
			TerminationMessagePath:   corev1.TerminationMessagePathDefault,
			TerminationMessagePolicy: corev1.TerminationMessageReadFile,
			ImagePullPolicy:          corev1.PullIfNotPresent,
		}
		for j := 0; j < 24; j++ {
			c.Env = append(c.Env, corev1.EnvVar{Name: fmt.Sprintf("WORKER_%d_SETTING_%d", i, j), Value: fmt.Sprintf("value-%d-%d-with-some-length", i, j)})
		}
		pod.Spec.Containers = append(pod.Spec.Containers, c)
	}
}
