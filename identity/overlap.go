package identity

import (
	"text/template"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// Registration is a ClusterSPIFFEID as spire-controller-manager's parser reads it: the parts that
// decide which pods it selects and which SPIFFE ID it gives them.
type Registration struct {
	Name      string
	ClassName string
	// Fallback registrations (ZTWIM's default) yield to any other registration of the pod.
	Fallback bool
	// Managed registrations are the webhook's own.
	Managed bool
	// Deleting registrations (deletionTimestamp set) no longer count.
	Deleting bool
	// SPIFFEID is the parsed SPIFFE ID template.
	SPIFFEID *template.Template
	// NamespaceSelector and PodSelector are nil when the registration selects every one.
	NamespaceSelector, PodSelector labels.Selector
}

// Competitor is another registration that would give a pod a SPIFFE ID other than ours.
type Competitor struct {
	// Theirs is the SPIFFE ID the other registration renders for the pod ("" when it cannot);
	// Ours is the one the webhook's registration gives it.
	Theirs, Ours string
}

// Competes is the one rule for "another registration gives this pod a different identity": r is
// not the webhook's, not a fallback and not being deleted, selects pod (in a namespace whose labels
// nsLabels returns; it is called only when r has a namespace selector, and its error is the only
// one returned) and renders a SPIFFE ID
// other than ours. spire-controller-manager would then create an entry for each registration and
// the workload could receive either identity. The same ID from both is no competition: the two
// entries are one (spire-controller-manager keeps one per ID, parent and selectors). Whether
// spire-controller-manager reconciles r's class at all is the caller's judgement. pod must carry
// its namespace.
func (r *Registration) Competes(cfg *config.Config, pod *corev1.Pod, nsLabels func() (labels.Set, error)) (*Competitor, error) {
	if r.Managed || r.Fallback || r.Deleting {
		return nil, nil
	}
	if r.PodSelector != nil && !r.PodSelector.Matches(labels.Set(pod.Labels)) {
		return nil, nil
	}
	if r.NamespaceSelector != nil {
		set, err := nsLabels()
		if err != nil {
			return nil, err
		}
		if !r.NamespaceSelector.Matches(set) {
			return nil, nil
		}
	}
	// Either ID may be unknown before scheduling (a template that reads the node) or unrenderable:
	// then the two cannot be shown to be one.
	ours, _ := SPIFFEID(cfg, pod)
	theirs, err := Render(r.SPIFFEID, cfg, pod)
	if err != nil {
		theirs = ""
	}
	if theirs == ours && ours != "" {
		return nil, nil
	}
	return &Competitor{Theirs: theirs, Ours: ours}, nil
}

// NamespaceLabels returns a namespace's labels as the API server stores them: with the
// NamespaceNameLabel it sets on every namespace (objects built by hand may lack it).
func NamespaceLabels(name string, nsLabels map[string]string) labels.Set {
	set := make(labels.Set, len(nsLabels)+1)
	for k, v := range nsLabels {
		set[k] = v
	}
	set[NamespaceNameLabel] = name
	return set
}
