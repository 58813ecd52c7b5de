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

	id, err := identity.SPIFFEID(s.cfg, identity.InNamespace(pod, s.namespace))
	if err != nil {
		return invalidf("%v; allowed: pods whose metadata renders a valid SPIFFE ID in trust domain %s", err, s.cfg.TrustDomain)
	}
	s.status.Mode = s.mode
	s.status.SPIFFEID = id
	s.status.Registration = identity.Name(s.namespace)
	s.status.Audiences = s.audiences
	s.status.ConfigVersion = s.cfg.Version()
	setAnnotation(pod, annotations.StatusAnnotation, s.status.Encode())
	return nil
}
