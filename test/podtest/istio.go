package podtest

import (
	corev1 "k8s.io/api/core/v1"
)

// IstioStandIn plays Istio's sidecar injector on pod (a stand-in: Istio's control plane cannot
// run here). Like Istio's default injection template it adds istio-init or istio-validation, the
// istio-proxy container (a native sidecar in initContainers when native is true, as Istio 1.27+
// does by default) with its volume mounts, the emptyDir workload-socket, credential-socket and
// workload-certs volumes and its other volumes, and its labels and annotations. It leaves the app's
// containers alone and appends what it adds, as Istio's strategic merge does.
func IstioStandIn(pod *corev1.Pod, native bool) {
	always := corev1.ContainerRestartPolicyAlways
	proxy := corev1.Container{
		Name:  "istio-proxy",
		Image: "docker.io/istio/proxyv2:1.27.3",
		Args:  []string{"proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"},
		Env: []corev1.EnvVar{
			{Name: "PILOT_CERT_PROVIDER", Value: "istiod"},
			{Name: "CA_ADDR", Value: "istiod.istio-system.svc:15012"},
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "workload-socket", MountPath: "/var/run/secrets/workload-spiffe-uds"},
			{Name: "credential-socket", MountPath: "/var/run/secrets/credential-uds"},
			{Name: "workload-certs", MountPath: "/var/run/secrets/workload-spiffe-credentials"},
			{Name: "istiod-ca-cert", MountPath: "/var/run/secrets/istio"},
			{Name: "istio-data", MountPath: "/var/lib/istio/data"},
			{Name: "istio-envoy", MountPath: "/etc/istio/proxy"},
			{Name: "istio-token", MountPath: "/var/run/secrets/tokens"},
		},
	}
	initName := "istio-init"
	if native {
		initName = "istio-validation"
	}
	init := corev1.Container{Name: initName, Image: "docker.io/istio/proxyv2:1.27.3", Args: []string{"istio-iptables"}}
	if native {
		proxy.RestartPolicy = &always
		pod.Spec.InitContainers = append([]corev1.Container{init, proxy}, pod.Spec.InitContainers...)
	} else {
		pod.Spec.InitContainers = append([]corev1.Container{init}, pod.Spec.InitContainers...)
		pod.Spec.Containers = append(pod.Spec.Containers, proxy)
	}
	empty := func(name string) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
	}
	pod.Spec.Volumes = append(pod.Spec.Volumes,
		empty("workload-socket"), empty("credential-socket"), empty("workload-certs"),
		corev1.Volume{Name: "istio-envoy", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
		empty("istio-data"),
		corev1.Volume{Name: "istio-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
			ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "istio-ca", Path: "istio-token"},
		}}}}},
		corev1.Volume{Name: "istiod-ca-cert", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "istio-ca-root-cert"},
		}}},
	)
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels["security.istio.io/tlsMode"] = "istio"
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations["sidecar.istio.io/status"] = `{"containers":["istio-proxy"],"revision":"default"}`
}
