package mutators

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

func ptr[T any](v T) *T { return &v }

func emptyDir(name string) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
}

func meshPod(native bool) *corev1.Pod {
	proxy := corev1.Container{Name: "istio-proxy", VolumeMounts: []corev1.VolumeMount{{Name: IstioSocketVolume, MountPath: "/var/run/secrets/workload-spiffe-uds"}}}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns1"},
		Spec: corev1.PodSpec{
			ServiceAccountName: "sa1",
			Containers:         []corev1.Container{{Name: "app"}},
			Volumes:            []corev1.Volume{emptyDir(IstioSocketVolume)},
		},
	}
	if native {
		proxy.RestartPolicy = ptr(corev1.ContainerRestartPolicyAlways)
		p.Spec.InitContainers = []corev1.Container{proxy}
	} else {
		p.Spec.Containers = append(p.Spec.Containers, proxy)
	}
	return p
}

func plainPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns1"},
		Spec: corev1.PodSpec{
			ServiceAccountName: "sa1",
			InitContainers:     []corev1.Container{{Name: "init"}},
			Containers:         []corev1.Container{{Name: "app"}, {Name: "side"}},
		},
	}
}

func run(t *testing.T, cfg *config.Config, pod *corev1.Pod) (Result, error) {
	t.Helper()
	return NewChain(cfg).Run(pod, Request{Namespace: "ns1"})
}

func container(t *testing.T, pod *corev1.Pod, name string) *corev1.Container {
	t.Helper()
	c, _, ok := FindContainer(pod, name)
	require.True(t, ok, "container %s", name)
	return c
}

func withAudience(p *corev1.Pod, v string) *corev1.Pod {
	p.Annotations = map[string]string{annotations.AudienceAnnotation: v}
	return p
}

func TestIstioProxy(t *testing.T) {
	tests := []struct {
		name   string
		pod    func() *corev1.Pod
		socket string
		check  func(t *testing.T, p *corev1.Pod)
		err    string
	}{
		{
			name: "classic: emptyDir becomes the CSI volume, mount read-only, socket file set",
			pod:  func() *corev1.Pod { return meshPod(false) },
			check: func(t *testing.T, p *corev1.Pod) {
				require.Len(t, p.Spec.Volumes, 1)
				assert.Equal(t, csiVolume(IstioSocketVolume, "csi.spiffe.io"), p.Spec.Volumes[0])
				proxy := container(t, p, "istio-proxy")
				assert.Equal(t, []corev1.VolumeMount{{Name: IstioSocketVolume, MountPath: "/var/run/secrets/workload-spiffe-uds", ReadOnly: true}}, proxy.VolumeMounts)
				assert.Equal(t, []corev1.EnvVar{{Name: EnvIstioSocketFile, Value: "spire-agent.sock"}}, proxy.Env)
				assert.Empty(t, container(t, p, "app").VolumeMounts, "app containers of mesh pods get nothing")
			},
		},
		{
			name: "native sidecar in initContainers",
			pod:  func() *corev1.Pod { return meshPod(true) },
			check: func(t *testing.T, p *corev1.Pod) {
				assert.True(t, p.Spec.InitContainers[0].VolumeMounts[0].ReadOnly)
				assert.Equal(t, "spire-agent.sock", p.Spec.InitContainers[0].Env[0].Value)
			},
		},
		{
			name:   "Istio's default socket name needs no env",
			pod:    func() *corev1.Pod { return meshPod(false) },
			socket: "socket",
			check: func(t *testing.T, p *corev1.Pod) {
				assert.Empty(t, container(t, p, "istio-proxy").Env)
			},
		},
		{
			name: "a wrong socket file name is corrected",
			pod: func() *corev1.Pod {
				p := meshPod(false)
				p.Spec.Containers[1].Env = []corev1.EnvVar{{Name: EnvIstioSocketFile, Value: "agent.sock"}}
				return p
			},
			check: func(t *testing.T, p *corev1.Pod) {
				assert.Equal(t, []corev1.EnvVar{{Name: EnvIstioSocketFile, Value: "spire-agent.sock"}}, container(t, p, "istio-proxy").Env)
			},
		},
		{
			name: "an existing mount path is kept",
			pod: func() *corev1.Pod {
				p := meshPod(false)
				p.Spec.Containers[1].VolumeMounts[0].MountPath = "/custom/uds"
				return p
			},
			check: func(t *testing.T, p *corev1.Pod) {
				assert.Equal(t, "/custom/uds", container(t, p, "istio-proxy").VolumeMounts[0].MountPath)
			},
		},
		{
			name: "missing volume and mount are added (custom Istio templates)",
			pod: func() *corev1.Pod {
				p := meshPod(false)
				p.Spec.Volumes = nil
				p.Spec.Containers[1].VolumeMounts = nil
				return p
			},
			check: func(t *testing.T, p *corev1.Pod) {
				assert.Equal(t, []corev1.Volume{csiVolume(IstioSocketVolume, "csi.spiffe.io")}, p.Spec.Volumes)
				assert.Equal(t, []corev1.VolumeMount{{Name: IstioSocketVolume, MountPath: "/var/run/secrets/workload-spiffe-uds", ReadOnly: true}}, container(t, p, "istio-proxy").VolumeMounts)
			},
		},
		{
			name: "another volume at the socket path is refused",
			pod: func() *corev1.Pod {
				p := meshPod(false)
				p.Spec.Volumes = append(p.Spec.Volumes, emptyDir("other"))
				p.Spec.Containers[1].VolumeMounts = []corev1.VolumeMount{{Name: "other", MountPath: "/var/run/secrets/workload-spiffe-uds"}}
				return p
			},
			err: `spec.containers[istio-proxy].volumeMounts: volume "other" is mounted at /var/run/secrets/workload-spiffe-uds`,
		},
		{
			name: "a gateway: istio-proxy is the only container",
			pod: func() *corev1.Pod {
				p := meshPod(false)
				p.Spec.Containers = p.Spec.Containers[1:]
				return p
			},
			check: func(t *testing.T, p *corev1.Pod) {
				assert.Equal(t, "mesh", p.Labels[annotations.InjectedLabel])
				assert.True(t, p.Spec.Containers[0].VolumeMounts[0].ReadOnly)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := podtest.Config(t)
			if tt.socket != "" {
				cfg.SocketFileName = tt.socket
			}
			p := tt.pod()
			res, err := run(t, cfg, p)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				assert.True(t, IsInvalid(err))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, annotations.ModeMesh, res.Mode)
			tt.check(t, p)
		})
	}
}

func TestWorkloadSocket(t *testing.T) {
	uri := "unix:///spiffe-workload-api/spire-agent.sock"
	tests := []struct {
		name  string
		pod   func() *corev1.Pod
		check func(t *testing.T, p *corev1.Pod)
		err   string
	}{
		{
			name: "every container, init containers too, gets the socket and the variable",
			pod:  plainPod,
			check: func(t *testing.T, p *corev1.Pod) {
				assert.Equal(t, []corev1.Volume{csiVolume(WorkloadAPIVolume, "csi.spiffe.io")}, p.Spec.Volumes)
				for _, name := range []string{"init", "app", "side"} {
					c := container(t, p, name)
					assert.Equal(t, []corev1.VolumeMount{{Name: WorkloadAPIVolume, MountPath: "/spiffe-workload-api", ReadOnly: true}}, c.VolumeMounts, name)
					assert.Equal(t, []corev1.EnvVar{{Name: contract.EnvEndpointSocket, Value: uri}}, c.Env, name)
				}
			},
		},
		{
			name: "a variable the container sets is kept",
			pod: func() *corev1.Pod {
				p := plainPod()
				p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: contract.EnvEndpointSocket, Value: "unix:///run/own.sock"}}
				return p
			},
			check: func(t *testing.T, p *corev1.Pod) {
				assert.Equal(t, []corev1.EnvVar{{Name: contract.EnvEndpointSocket, Value: "unix:///run/own.sock"}}, container(t, p, "app").Env)
			},
		},
		{
			name: "the volume mounted elsewhere by the author points the variable there",
			pod: func() *corev1.Pod {
				p := plainPod()
				p.Spec.Volumes = []corev1.Volume{csiVolume(WorkloadAPIVolume, "csi.spiffe.io")}
				p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: WorkloadAPIVolume, MountPath: "/run/spire", ReadOnly: true}}
				return p
			},
			check: func(t *testing.T, p *corev1.Pod) {
				assert.Len(t, p.Spec.Volumes, 1)
				assert.Len(t, container(t, p, "app").VolumeMounts, 1)
				assert.Equal(t, "unix:///run/spire/spire-agent.sock", container(t, p, "app").Env[0].Value)
			},
		},
		{
			name: "a volume of the author's with the reserved name is refused",
			pod: func() *corev1.Pod {
				p := plainPod()
				p.Spec.Volumes = []corev1.Volume{emptyDir(WorkloadAPIVolume)}
				return p
			},
			err: "spec.volumes[spiffe-workload-api]: the name is reserved",
		},
		{
			name: "another volume at the mount path is refused",
			pod: func() *corev1.Pod {
				p := plainPod()
				p.Spec.Volumes = []corev1.Volume{emptyDir("data")}
				p.Spec.InitContainers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/spiffe-workload-api"}}
				return p
			},
			err: `spec.initContainers[init].volumeMounts: volume "data" is mounted at /spiffe-workload-api`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.pod()
			res, err := run(t, podtest.Config(t), p)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				assert.Contains(t, err.Error(), "allowed")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, annotations.ModeWorkload, res.Mode)
			tt.check(t, p)
		})
	}
}

func TestJWTHelper(t *testing.T) {
	tests := []struct {
		name   string
		pod    func() *corev1.Pod
		native config.NativeSidecarMode
		check  func(t *testing.T, p *corev1.Pod)
		err    string
	}{
		{
			name: "classic pod: classic helper appended, token volume mounted read-only in app containers",
			pod:  func() *corev1.Pod { return withAudience(meshPod(false), "a, b") },
			check: func(t *testing.T, p *corev1.Pod) {
				h := p.Spec.Containers[len(p.Spec.Containers)-1]
				assert.Equal(t, JWTHelperContainer, h.Name)
				assert.Nil(t, h.RestartPolicy)
				assert.Nil(t, h.StartupProbe)
				assert.Equal(t, []string{"--audience=a", "--audience=b", "--output-dir=/var/run/secrets/spiffe.io/jwt", "--file-mode=0444", "--health-addr=:15987"}, h.Args)
				assert.Equal(t, []corev1.VolumeMount{{Name: IstioSocketVolume, MountPath: "/spiffe-workload-api", ReadOnly: true}, {Name: JWTVolume, MountPath: "/var/run/secrets/spiffe.io/jwt"}}, h.VolumeMounts)
				assert.Contains(t, container(t, p, "app").VolumeMounts, corev1.VolumeMount{Name: JWTVolume, MountPath: "/var/run/secrets/spiffe.io/jwt", ReadOnly: true})
				assert.NotContains(t, container(t, p, "istio-proxy").VolumeMounts, corev1.VolumeMount{Name: JWTVolume, MountPath: "/var/run/secrets/spiffe.io/jwt", ReadOnly: true})
				sc := h.SecurityContext
				assert.True(t, *sc.RunAsNonRoot && *sc.ReadOnlyRootFilesystem && !*sc.AllowPrivilegeEscalation)
				assert.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop)
				assert.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, sc.SeccompProfile.Type)
				assert.Nil(t, sc.RunAsUser, "OpenShift assigns the UID")
			},
		},
		{
			name: "native pod: native helper right after istio-proxy, held by a startup probe",
			pod:  func() *corev1.Pod { return withAudience(meshPod(true), "a") },
			check: func(t *testing.T, p *corev1.Pod) {
				require.Len(t, p.Spec.InitContainers, 2)
				h := p.Spec.InitContainers[1]
				assert.Equal(t, JWTHelperContainer, h.Name)
				assert.Equal(t, corev1.ContainerRestartPolicyAlways, *h.RestartPolicy)
				require.NotNil(t, h.StartupProbe)
				// Through pilot-agent, which forwards it to the helper's /ready.
				assert.Equal(t, "/app-health/spiffe-jwt-helper/startupz", h.StartupProbe.HTTPGet.Path)
				assert.Equal(t, int32(15020), h.StartupProbe.HTTPGet.Port.IntVal)
				assert.Contains(t, envValue(container(t, p, "istio-proxy"), "ISTIO_KUBE_APP_PROBERS"),
					`"/app-health/spiffe-jwt-helper/startupz":{"httpGet":{"path":"/ready","port":15987,"scheme":"HTTP"},"timeoutSeconds":1}`)
			},
		},
		{
			name: "mesh pod: the helper's probes join the app's rewritten ones in pilot-agent",
			pod: func() *corev1.Pod {
				p := withAudience(meshPod(false), "a")
				proxy := container(t, p, "istio-proxy")
				proxy.Env = append(proxy.Env, corev1.EnvVar{Name: "ISTIO_KUBE_APP_PROBERS", Value: `{"/app-health/app/readyz":{"httpGet":{"path":"/ready","port":8080,"scheme":"HTTP"},"timeoutSeconds":1}}`})
				app := container(t, p, "app")
				app.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/app-health/app/readyz", Port: intstr.FromInt32(15099)}}}
				return p
			},
			check: func(t *testing.T, p *corev1.Pod) {
				h := container(t, p, JWTHelperContainer)
				assert.Equal(t, "/app-health/spiffe-jwt-helper/readyz", h.ReadinessProbe.HTTPGet.Path)
				assert.Equal(t, int32(15099), h.ReadinessProbe.HTTPGet.Port.IntVal, "the mesh's status port, as Istio used for the app")
				assert.JSONEq(t, `{
					"/app-health/app/readyz":{"httpGet":{"path":"/ready","port":8080,"scheme":"HTTP"},"timeoutSeconds":1},
					"/app-health/spiffe-jwt-helper/readyz":{"httpGet":{"path":"/ready","port":15987,"scheme":"HTTP"},"timeoutSeconds":1},
					"/app-health/spiffe-jwt-helper/livez":{"httpGet":{"path":"/healthz","port":15987,"scheme":"HTTP"},"timeoutSeconds":1}}`,
					envValue(container(t, p, "istio-proxy"), "ISTIO_KUBE_APP_PROBERS"))
			},
		},
		{
			name: "rewriting turned off on the pod: the helper is probed directly",
			pod: func() *corev1.Pod {
				p := withAudience(meshPod(false), "a")
				p.Annotations["sidecar.istio.io/rewriteAppHTTPProbers"] = "false"
				return p
			},
			check: func(t *testing.T, p *corev1.Pod) {
				assert.Equal(t, "/ready", container(t, p, JWTHelperContainer).ReadinessProbe.HTTPGet.Path)
				assert.Empty(t, envValue(container(t, p, "istio-proxy"), "ISTIO_KUBE_APP_PROBERS"))
			},
		},
		{
			name:   "nativeSidecar never keeps it classic",
			native: config.NativeNever,
			pod:    func() *corev1.Pod { return withAudience(meshPod(true), "a") },
			check: func(t *testing.T, p *corev1.Pod) {
				assert.Equal(t, JWTHelperContainer, p.Spec.Containers[len(p.Spec.Containers)-1].Name)
			},
		},
		{
			name:   "nativeSidecar always puts it first in a plain pod, before the app's init containers",
			native: config.NativeAlways,
			pod:    func() *corev1.Pod { return withAudience(plainPod(), "a") },
			check: func(t *testing.T, p *corev1.Pod) {
				assert.Equal(t, JWTHelperContainer, p.Spec.InitContainers[0].Name)
				assert.Equal(t, WorkloadAPIVolume, p.Spec.InitContainers[0].VolumeMounts[0].Name)
				assert.Contains(t, p.Spec.InitContainers[1].VolumeMounts, corev1.VolumeMount{Name: JWTVolume, MountPath: "/var/run/secrets/spiffe.io/jwt", ReadOnly: true}, "init containers after the helper read tokens")
			},
		},
		{
			name: "classic helper: init containers run before it and get no token mount",
			pod:  func() *corev1.Pod { return withAudience(plainPod(), "a") },
			check: func(t *testing.T, p *corev1.Pod) {
				assert.NotContains(t, container(t, p, "init").VolumeMounts, corev1.VolumeMount{Name: JWTVolume, MountPath: "/var/run/secrets/spiffe.io/jwt", ReadOnly: true})
			},
		},
		{
			name: "a container of the author's with the helper's name is refused",
			pod: func() *corev1.Pod {
				p := withAudience(plainPod(), "a")
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: JWTHelperContainer})
				return p
			},
			err: "spec.containers[spiffe-jwt-helper]: the name is reserved",
		},
		{
			name: "a volume of the author's with the token volume's name is refused",
			pod: func() *corev1.Pod {
				p := withAudience(plainPod(), "a")
				p.Spec.Volumes = []corev1.Volume{emptyDir(JWTVolume)}
				return p
			},
			err: "spec.volumes[spiffe-jwt-svids]: the name is reserved",
		},
		{
			name: "another volume at the token directory is refused",
			pod: func() *corev1.Pod {
				p := withAudience(plainPod(), "a")
				p.Spec.Volumes = []corev1.Volume{emptyDir("data")}
				p.Spec.Containers[1].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/var/run/secrets/spiffe.io/jwt"}}
				return p
			},
			err: `spec.containers[side].volumeMounts: volume "data" is mounted at /var/run/secrets/spiffe.io/jwt`,
		},
		{
			name: "audiences that would share a token file are refused",
			pod:  func() *corev1.Pod { return withAudience(plainPod(), "a/b,a:b") },
			err:  `metadata.annotation spiffe.io/audience: audiences "a/b" and "a:b" would share the token file a_b.jwt`,
		},
		{
			name: "ext_authz mode adds its loopback listener and audience",
			pod: func() *corev1.Pod {
				p := withAudience(meshPod(false), "a,b")
				p.Annotations[annotations.ExtAuthzAnnotation] = "b"
				return p
			},
			check: func(t *testing.T, p *corev1.Pod) {
				h := container(t, p, JWTHelperContainer)
				assert.Equal(t, []string{"--ext-authz-addr=127.0.0.1:15988", "--ext-authz-audience=b"}, h.Args[len(h.Args)-2:])
			},
		},
		{
			name: "ext_authz for an audience the pod does not ask for is refused",
			pod: func() *corev1.Pod {
				p := withAudience(plainPod(), "a")
				p.Annotations[annotations.ExtAuthzAnnotation] = "c"
				return p
			},
			err: `metadata.annotation spire-mesh-injector.io/jwt-ext-authz: "c" is not one of the audiences in spiffe.io/audience; allowed: a`,
		},
		{
			name: "too many audiences are refused",
			pod:  func() *corev1.Pod { return withAudience(plainPod(), "1,2,3,4,5,6,7,8,9") },
			err:  "9 audiences; allowed: at most 8",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := podtest.Config(t)
			if tt.native != "" {
				cfg.JWTHelper.NativeSidecar = tt.native
			}
			p := tt.pod()
			_, err := run(t, cfg, p)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				assert.True(t, IsInvalid(err))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, []corev1.Volume{tokenVolume()}, p.Spec.Volumes[len(p.Spec.Volumes)-1:])
			tt.check(t, p)
		})
	}
}

// TestAppProbersFromElsewhereAreKept: ISTIO_KUBE_APP_PROBERS given through valueFrom holds the
// app's own probe forwarding, which the webhook cannot read or merge into: it is left as it is,
// the helper is probed directly, and the admission says why.
func TestAppProbersFromElsewhereAreKept(t *testing.T) {
	p := withAudience(meshPod(false), "a")
	proxy := container(t, p, "istio-proxy")
	ref := corev1.EnvVar{Name: "ISTIO_KUBE_APP_PROBERS", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: "probers"}, Key: "probers"}}}
	proxy.Env = append(proxy.Env, ref)
	res, err := run(t, podtest.Config(t), p)
	require.NoError(t, err)
	proxy = container(t, p, "istio-proxy")
	assert.Equal(t, ref, proxy.Env[envIndex(proxy, "ISTIO_KUBE_APP_PROBERS")], "the app's probe forwarding is kept")
	assert.Equal(t, "/ready", container(t, p, JWTHelperContainer).ReadinessProbe.HTTPGet.Path, "probed directly")
	require.Len(t, res.Warnings, 1)
	assert.Contains(t, res.Warnings[0], "ISTIO_KUBE_APP_PROBERS")
	assert.LessOrEqual(t, len(res.Warnings[0]), MaxWarning)
}

// TestIstiosSPIRETemplateIsUndone: a pod that still carries Istio's SPIRE template (a namespace
// migrating from it) comes out as the same pod without it, and its author is told the template is
// redundant; a pod the template reached through a mesh-wide default is told so too.
func TestIstiosSPIRETemplateIsUndone(t *testing.T) {
	cfg := podtest.Config(t)
	withImage := func(p *corev1.Pod) *corev1.Pod {
		container(t, p, "istio-proxy").Image = "docker.io/istio/proxyv2:1.27.3"
		return p
	}
	templated := func(native, annotated bool) *corev1.Pod {
		p := withImage(meshPod(native))
		p.Spec.Volumes = []corev1.Volume{csiVolume(IstioSocketVolume, cfg.CSIDriver)}
		if annotated {
			p.Annotations = map[string]string{istioTemplatesAnnotation: "sidecar, spire"}
		}
		mount := corev1.VolumeMount{Name: IstioSocketVolume, MountPath: istioSPIRETemplateMountPath, ReadOnly: true}
		if native {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "istio-proxy", VolumeMounts: []corev1.VolumeMount{mount}})
		} else {
			proxy := container(t, p, "istio-proxy")
			proxy.VolumeMounts = append(proxy.VolumeMounts, mount)
		}
		return p
	}
	for _, native := range []bool{false, true} {
		want := withImage(meshPod(native))
		_, err := run(t, cfg, want)
		require.NoError(t, err)
		for _, annotated := range []bool{true, false} {
			p := templated(native, annotated)
			res, err := run(t, cfg, p)
			require.NoError(t, err)
			delete(p.Annotations, istioTemplatesAnnotation)
			assert.Equal(t, want.Spec, p.Spec, "native %v, annotated %v: as without the template", native, annotated)
			require.Len(t, res.Warnings, 1)
			assert.LessOrEqual(t, len(res.Warnings[0]), MaxWarning)
			if annotated {
				assert.Equal(t, `inject.istio.io/templates names Istio's "spire" template: redundant here, remove it`, res.Warnings[0])
			} else {
				assert.Contains(t, res.Warnings[0], "defaultTemplates")
			}
		}
	}
	res, err := run(t, cfg, meshPod(true))
	require.NoError(t, err)
	assert.Empty(t, res.Warnings, "no template, no warning")

	// The template's initContainers variant on a gateway: a pod that cannot run is refused, naming
	// the annotation.
	gw := withImage(meshPod(true))
	gw.Spec.InitContainers[0].RestartPolicy = nil
	gw.Spec.Containers = append(gw.Spec.Containers, corev1.Container{Name: "istio-proxy"})
	gw.Annotations = map[string]string{istioTemplatesAnnotation: "gateway,spire"}
	_, err = run(t, cfg, gw)
	require.ErrorContains(t, err, `allowed: remove "spire" from annotation inject.istio.io/templates`)
	assert.True(t, IsInvalid(err))
}

func TestExtAuthzNeedsAudiences(t *testing.T) {
	p := plainPod()
	p.Annotations = map[string]string{annotations.ExtAuthzAnnotation: "a"}
	_, err := run(t, podtest.Config(t), p)
	require.ErrorContains(t, err, "annotation spire-mesh-injector.io/jwt-ext-authz: needs annotation spiffe.io/audience")
	assert.True(t, IsInvalid(err))
}

// TestStripTakesBackOnlyWhatIsOurs: a status annotation written by hand (or copied from another
// pod) cannot make the webhook remove anything that is not one of its own reserved items.
func TestStripTakesBackOnlyWhatIsOurs(t *testing.T) {
	p := plainPod()
	p.Spec.Volumes = []corev1.Volume{emptyDir("data")}
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "debug"}, {Name: contract.EnvEndpointSocket, Value: "tcp://127.0.0.1:8081"}}
	forged := annotations.Status{Mode: annotations.ModeWorkload, Volumes: []string{"data"}, Containers: []string{"app", "side"},
		Mounts: map[string][]string{"app": {"data"}}, Env: map[string][]string{"app": {"LOG_LEVEL", contract.EnvEndpointSocket}}}
	p.Annotations = map[string]string{annotations.StatusAnnotation: forged.Encode()}

	_, err := run(t, podtest.Config(t), p)
	require.NoError(t, err)
	app := container(t, p, "app")
	assert.Equal(t, "data", p.Spec.Volumes[0].Name)
	assert.Equal(t, corev1.VolumeMount{Name: "data", MountPath: "/data"}, app.VolumeMounts[0])
	assert.Equal(t, []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "debug"}, {Name: contract.EnvEndpointSocket, Value: "tcp://127.0.0.1:8081"}}, app.Env)
	assert.Len(t, p.Spec.Containers, 2)
}

// TestCopiedStatusKeepsWhatIsTheUsers: a manifest copied from a wired pod carries the status
// annotation, which lists what the webhook injected there. Only what is exactly what the webhook
// would inject (name and value, mount and path) is taken back; the user's own values under the
// same names stay, and a container of the user's with the helper's reserved name is refused.
func TestCopiedStatusKeepsWhatIsTheUsers(t *testing.T) {
	cfg := podtest.Config(t)
	copied := func() *corev1.Pod {
		p := plainPod()
		st := annotations.Status{Mode: annotations.ModeWorkload, Volumes: []string{WorkloadAPIVolume},
			Mounts: map[string][]string{"app": {WorkloadAPIVolume}, "side": {WorkloadAPIVolume}}, Env: map[string][]string{"app": {contract.EnvEndpointSocket}, "side": {contract.EnvEndpointSocket}}}
		p.Annotations = map[string]string{annotations.StatusAnnotation: st.Encode()}
		return p
	}
	t.Run("the user's socket address under our variable's name", func(t *testing.T) {
		p := copied()
		own := corev1.EnvVar{Name: contract.EnvEndpointSocket, Value: "unix:///run/elsewhere/" + cfg.SocketFileName}
		p.Spec.Containers[0].Env = []corev1.EnvVar{own}
		_, err := run(t, cfg, p)
		require.NoError(t, err)
		assert.Equal(t, []corev1.EnvVar{own}, container(t, p, "app").Env)
	})
	t.Run("the user's mount of our volume at a path of theirs", func(t *testing.T) {
		p := copied()
		own := corev1.VolumeMount{Name: WorkloadAPIVolume, MountPath: "/custom", ReadOnly: true}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{own}
		_, err := run(t, cfg, p)
		require.NoError(t, err)
		assert.Equal(t, []corev1.VolumeMount{own}, container(t, p, "app").VolumeMounts)
		assert.Equal(t, []corev1.EnvVar{{Name: contract.EnvEndpointSocket, Value: cfg.WorkloadSocketURI("/custom")}}, container(t, p, "app").Env)
	})
	t.Run("what the webhook injected is taken back and wired again", func(t *testing.T) {
		p := copied()
		for i := range p.Spec.Containers {
			p.Spec.Containers[i].VolumeMounts = []corev1.VolumeMount{{Name: WorkloadAPIVolume, MountPath: cfg.Workload.MountPath, ReadOnly: true}}
			p.Spec.Containers[i].Env = []corev1.EnvVar{{Name: contract.EnvEndpointSocket, Value: cfg.WorkloadSocketURI(cfg.Workload.MountPath)}}
		}
		p.Spec.Volumes = []corev1.Volume{csiVolume(WorkloadAPIVolume, cfg.CSIDriver)}
		again := p.DeepCopy()
		_, err := run(t, cfg, p)
		require.NoError(t, err)
		assert.Equal(t, again.Spec.Containers[0].VolumeMounts, container(t, p, "app").VolumeMounts)
		assert.Equal(t, again.Spec.Containers[0].Env, container(t, p, "app").Env)
	})
	t.Run("Istio's emptyDir workload-socket listed as ours is not taken back", func(t *testing.T) {
		// A status naming workload-socket, on a pod whose workload-socket is Istio's emptyDir that
		// no container mounts: the volume was never the webhook's, so it stays where it is and is
		// turned into the CSI volume there, and the status does not claim it.
		p := meshPod(false)
		p.Spec.Containers[1].VolumeMounts = nil
		p.Spec.Volumes = []corev1.Volume{emptyDir("data"), emptyDir(IstioSocketVolume), emptyDir("cache")}
		st := annotations.Status{Mode: annotations.ModeMesh, Volumes: []string{IstioSocketVolume}}
		p.Annotations = map[string]string{annotations.StatusAnnotation: st.Encode()}
		res, err := run(t, cfg, p)
		require.NoError(t, err)
		require.Equal(t, []string{"data", IstioSocketVolume, "cache"}, volumeNames(p))
		assert.True(t, isCSIVolume(&p.Spec.Volumes[1], cfg.CSIDriver))
		assert.NotContains(t, res.Status.Volumes, IstioSocketVolume)
	})
	t.Run("the webhook's own volume nothing needs any more is taken back", func(t *testing.T) {
		p := plainPod()
		p.Spec.Volumes = []corev1.Volume{emptyDir("data"), tokenVolume()}
		st := annotations.Status{Mode: annotations.ModeWorkload, Volumes: []string{JWTVolume}}
		p.Annotations = map[string]string{annotations.StatusAnnotation: st.Encode()}
		res, err := run(t, cfg, p)
		require.NoError(t, err)
		assert.Equal(t, []string{"data", WorkloadAPIVolume}, volumeNames(p))
		assert.Equal(t, []string{WorkloadAPIVolume}, res.Status.Volumes)
	})
	for name, audience := range map[string]string{"without an audience": "", "with an audience": "a"} {
		t.Run("a user container named like the helper, "+name, func(t *testing.T) {
			p := copied()
			st, err := annotations.ParseStatus(p.Annotations[annotations.StatusAnnotation])
			require.NoError(t, err)
			st.Containers = []string{JWTHelperContainer}
			p.Annotations[annotations.StatusAnnotation] = st.Encode()
			if audience != "" {
				p.Annotations[annotations.AudienceAnnotation] = audience
			}
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: JWTHelperContainer, Image: "registry.example/their-own:1"})
			_, err = run(t, cfg, p)
			require.ErrorContains(t, err, "spec.containers["+JWTHelperContainer+"]: the name is reserved by spire-mesh-injector for the JWT-SVID helper")
			assert.True(t, IsInvalid(err))
		})
	}
	t.Run("a user container named like the helper in a pod never wired", func(t *testing.T) {
		p := plainPod()
		p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: JWTHelperContainer, Image: "registry.example/their-own:1"})
		_, err := run(t, cfg, p)
		require.ErrorContains(t, err, "spec.initContainers["+JWTHelperContainer+"]: the name is reserved")
	})
}

// TestStatusStaysBounded: the status annotation grows with the containers the webhook wires; it
// stays within MaxStatusBytes, and with the pod's own annotations within the API server's limit,
// or the pod is refused with a message naming the webhook's limit, not the API server's.
func TestStatusStaysBounded(t *testing.T) {
	cfg := podtest.Config(t)
	many := func(n int) *corev1.Pod {
		p := plainPod()
		p.Spec.Containers = nil
		for i := range n {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i)})
		}
		return p
	}
	p := many(50)
	_, err := run(t, cfg, p)
	require.NoError(t, err)
	assert.Less(t, len(p.Annotations[annotations.StatusAnnotation]), MaxStatusBytes)

	_, err = run(t, cfg, many(2000))
	require.ErrorContains(t, err, "metadata.annotations[spire-mesh-injector.io/status]: recording what spire-mesh-injector injected into 2001 containers takes")
	assert.ErrorContains(t, err, fmt.Sprintf("over its limit of %d bytes", MaxStatusBytes))
	assert.True(t, IsInvalid(err))

	p = plainPod()
	p.Annotations = map[string]string{"big": strings.Repeat("x", 256<<10-200)}
	_, err = run(t, cfg, p)
	require.ErrorContains(t, err, "metadata.annotations: with spire-mesh-injector's status annotation")
	assert.ErrorContains(t, err, "over the API server's limit of 262144 bytes")
}

func TestChainDecisions(t *testing.T) {
	t.Run("opt-out label: nothing changes", func(t *testing.T) {
		p := plainPod()
		p.Labels = map[string]string{annotations.InjectionLabel: annotations.InjectionDisabled}
		before := p.DeepCopy()
		res, err := run(t, podtest.Config(t), p)
		require.NoError(t, err)
		assert.Equal(t, annotations.SkipOptOut, res.Skipped)
		assert.Equal(t, before, p)
	})
	t.Run("gateway placeholder before Istio: nothing changes until reinvoked", func(t *testing.T) {
		p := plainPod()
		p.Spec.Containers = []corev1.Container{{Name: "istio-proxy", Image: IstioImagePlaceholder}}
		before := p.DeepCopy()
		res, err := run(t, podtest.Config(t), p)
		require.NoError(t, err)
		assert.Equal(t, annotations.SkipAwaitingIstio, res.Skipped)
		assert.Equal(t, before, p)

		// Once Istio's injector has run (its status written), the gateway is wired.
		p.Annotations = map[string]string{IstioStatusAnnotation: `{"containers":["istio-proxy"]}`}
		res, err = run(t, podtest.Config(t), p)
		require.NoError(t, err)
		assert.Equal(t, annotations.ModeMesh, res.Mode)
	})
	t.Run("windows pod: only the status says why", func(t *testing.T) {
		p := plainPod()
		p.Spec.OS = &corev1.PodOS{Name: corev1.Windows}
		res, err := run(t, podtest.Config(t), p)
		require.NoError(t, err)
		assert.Equal(t, annotations.SkipWindows, res.Skipped)
		assert.Nil(t, p.Spec.Volumes)
		st, err := annotations.ParseStatus(p.Annotations[annotations.StatusAnnotation])
		require.NoError(t, err)
		assert.Equal(t, annotations.SkipWindows, st.Skipped)
	})
	t.Run("a hand-set injected label on a pod the webhook does not wire is removed", func(t *testing.T) {
		win := plainPod()
		win.Spec.OS = &corev1.PodOS{Name: corev1.Windows}
		gw := meshPod(false)
		container(t, gw, "istio-proxy").Image = IstioImagePlaceholder
		for name, p := range map[string]*corev1.Pod{"windows": win, "gateway awaiting Istio": gw} {
			p.Labels = map[string]string{annotations.InjectedLabel: string(annotations.ModeMesh), "app": "x"}
			res, err := run(t, podtest.Config(t), p)
			require.NoError(t, err, name)
			assert.NotEmpty(t, res.Skipped, name)
			assert.Equal(t, map[string]string{"app": "x"}, p.Labels, name)
		}
	})
	t.Run("istiod is never wired", func(t *testing.T) {
		for _, labels := range []map[string]string{{"app": "istiod"}, {"istio": "pilot"}} {
			p := meshPod(false)
			p.Labels = labels
			before := p.DeepCopy()
			res, err := run(t, podtest.Config(t), p)
			require.NoError(t, err)
			assert.Equal(t, annotations.SkipIstioControlPlane, res.Skipped)
			assert.Equal(t, before, p, "nothing changes")
		}
	})
	t.Run("status names the identity and the registration", func(t *testing.T) {
		p := plainPod()
		p.Spec.ServiceAccountName = ""
		res, err := run(t, podtest.Config(t), p)
		require.NoError(t, err)
		assert.Equal(t, "spiffe://example.org/ns/ns1/sa/default", res.Status.SPIFFEID)
		assert.Equal(t, "spire-mesh-injector-ns1", res.Status.Registration)
		assert.Equal(t, "true", p.Labels[annotations.ManagedIdentityLabel])
		assert.Equal(t, "workload", p.Labels[annotations.InjectedLabel])
	})
	t.Run("a template that renders an invalid SPIFFE ID refuses the pod", func(t *testing.T) {
		cfg, err := config.Parse([]byte(podtest.TestConfigYAML + "registration:\n  spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/{{ index .PodMeta.Labels \"tier\" }}'\n"))
		require.NoError(t, err)
		p := plainPod()
		p.Labels = map[string]string{"tier": "a..b/../c"}
		_, err = run(t, cfg, p)
		require.Error(t, err)
		assert.True(t, IsInvalid(err))
		assert.Contains(t, err.Error(), "registration.spiffeIDTemplate renders")
	})
	t.Run("a node-dependent template leaves the SPIFFE ID out of the status", func(t *testing.T) {
		cfg, err := config.Parse([]byte(podtest.TestConfigYAML + "registration:\n  spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/node/{{ .NodeMeta.Name }}'\n"))
		require.NoError(t, err)
		res, err := run(t, cfg, plainPod())
		require.NoError(t, err)
		assert.Empty(t, res.Status.SPIFFEID)
	})
}

func envValue(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func volumeNames(p *corev1.Pod) []string {
	var out []string
	for _, v := range p.Spec.Volumes {
		out = append(out, v.Name)
	}
	return out
}
