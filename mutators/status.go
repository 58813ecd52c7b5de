package mutators

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

// labelsAndStatus labels the wired pod, so that its namespace's ClusterSPIFFEID selects it (and
// Istio's SPIRE tooling recognizes it), and records the outcome in the status annotation: the mode,
// the SPIFFE ID the pod will get, the registration that gives it, and what the webhook added.
type labelsAndStatus struct{}

func (labelsAndStatus) name() string { return "labels-and-status" }

func (labelsAndStatus) handles(*state) bool { return true }

func (labelsAndStatus) mutate(pod *corev1.Pod, s *state) error {
	setLabel(pod, annotations.ManagedIdentityLabel, "true")
	setLabel(pod, annotations.InjectedLabel, string(s.mode))

	id, err := s.ids.For(identity.InNamespace(pod, s.namespace))
	if err != nil {
		return invalidf("%v; allowed: pods whose metadata renders a valid SPIFFE ID in trust domain %s", err, s.cfg.TrustDomain)
	}
	s.status.Mode = s.mode
	s.status.SPIFFEID = id
	s.status.Registration = identity.Name(s.namespace)
	s.status.Audiences = s.audiences
	s.status.ConfigVersion = s.cfg.Version()
	enc := s.status.Encode()
	if len(enc) > MaxStatusBytes {
		return invalidf("metadata.annotations[%s]: recording what spire-mesh-injector injected into %d containers takes %d bytes, over its limit of %d bytes; allowed: pods with fewer containers",
			annotations.StatusAnnotation, len(pod.Spec.InitContainers)+len(pod.Spec.Containers), len(enc), MaxStatusBytes)
	}
	setAnnotation(pod, annotations.StatusAnnotation, enc)
	if n := annotationsSize(pod.Annotations); n > maxAnnotationsBytes {
		return invalidf("metadata.annotations: with spire-mesh-injector's status annotation (%d bytes) the pod's annotations take %d bytes, over the API server's limit of %d bytes; allowed: smaller annotations",
			len(enc), n, maxAnnotationsBytes)
	}
	return nil
}

// MaxStatusBytes bounds the status annotation, which lists what the webhook added to each
// container: a few dozen bytes a container, so about 400 containers.
const MaxStatusBytes = 32 << 10

// maxAnnotationsBytes is the API server's limit on a pod's annotations, keys and values together
// (apimachinery's TotalAnnotationSizeLimitB).
const maxAnnotationsBytes = 256 << 10

func annotationsSize(a map[string]string) int {
	n := 0
	for k, v := range a {
		n += len(k) + len(v)
	}
	return n
}
