package mutators

import (
	"encoding/json"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
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
		c, _, ok := findContainer(pod, cname)
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
		c, _, ok := findContainer(pod, cname)
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

// Istio's injector describes the app containers it finds to pilot-agent in istio-proxy's
// environment: their names, and the HTTP probes it rewrote to go through pilot-agent, keyed
// /app-health/<container>/<probe>.
const (
	envIstioAppContainers = "ISTIO_META_APP_CONTAINERS"
	envIstioAppProbers    = "ISTIO_KUBE_APP_PROBERS"
)

// forgetInIstioProxy takes container, which an earlier invocation added, out of what Istio's
// injector recorded about it in istio-proxy when Istio ran after that invocation. Without this,
// a pod wired before Istio's injector would keep istio-proxy forwarding probes of a container
// Istio did not see when it ran first, and the result would depend on webhook order.
func forgetInIstioProxy(pod *corev1.Pod, cfg *config.Config, container string) {
	proxy, _, ok := findContainer(pod, cfg.Istio.ProxyContainerName)
	if !ok {
		return
	}
	if i := envIndex(proxy, envIstioAppContainers); i >= 0 && proxy.Env[i].ValueFrom == nil {
		names := strings.Split(proxy.Env[i].Value, ",")
		kept := names[:0]
		for _, n := range names {
			if n != container {
				kept = append(kept, n)
			}
		}
		proxy.Env[i].Value = strings.Join(kept, ",")
	}
	if i := envIndex(proxy, envIstioAppProbers); i >= 0 && proxy.Env[i].ValueFrom == nil {
		var probers map[string]json.RawMessage
		if json.Unmarshal([]byte(proxy.Env[i].Value), &probers) != nil {
			return // not Istio's format: leave it alone
		}
		prefix := istioAppHealthPrefix + container + "/"
		removed := false
		for k := range probers {
			if strings.HasPrefix(k, prefix) {
				delete(probers, k)
				removed = true
			}
		}
		switch {
		case !removed:
		case len(probers) == 0:
			// Istio sets the variable only when some container has probes to forward.
			proxy.Env = append(proxy.Env[:i:i], proxy.Env[i+1:]...)
		default:
			if b, err := json.Marshal(probers); err == nil {
				proxy.Env[i].Value = string(b)
			}
		}
	}
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
	case EnvEndpointSocket:
		return strings.HasPrefix(e.Value, "unix:///") && strings.HasSuffix(e.Value, "/"+cfg.SocketFileName)
	case EnvIstioSocketFile:
		return e.Value == cfg.SocketFileName
	}
	return false
}
