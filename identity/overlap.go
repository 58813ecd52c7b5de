package identity

import (
	"slices"
	"text/template"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// Registration is a ClusterSPIFFEID as spire-controller-manager's parser reads it: the parts that
// decide which pods it selects, which SPIFFE ID it gives them, and the rest of the entry it makes.
type Registration struct {
	Name      string
	ClassName string
	// Created and UID decide which of two registrations that make the same entry
	// spire-controller-manager keeps: the older, then the lower UID.
	Created time.Time
	UID     string
	// Fallback registrations (ZTWIM's default) yield to any other registration of the pod.
	Fallback bool
	// Managed registrations are the webhook's own.
	Managed bool
	// Deleted is its deletionTimestamp (zero when it is not being deleted). A registration being
	// deleted no longer competes or masks (it is about to go), but until it goes
	// spire-controller-manager still makes its entries, preferring those deleted later.
	Deleted time.Time
	// SPIFFEID is the parsed SPIFFE ID template.
	SPIFFEID *template.Template
	// NamespaceSelector and PodSelector are nil when the registration selects every one.
	NamespaceSelector, PodSelector labels.Selector

	// The rest of each entry it makes.
	TTL, JWTTTL          time.Duration
	FederatesWith        []string
	DNSNameTemplates     []*template.Template
	AutoPopulateDNSNames bool
	Hint                 string
	Admin, Downstream    bool
	// WorkloadSelectors are its workloadSelectorTemplates: they add selectors to its entries, which
	// then share a key only with a registration's that adds the same.
	WorkloadSelectors []string
}

// Deleting reports whether r is being deleted.
func (r *Registration) Deleting() bool { return !r.Deleted.IsZero() }

// selects reports whether r selects pod, in a namespace whose labels nsLabels returns (called
// only when r has a namespace selector).
func (r *Registration) selects(pod *corev1.Pod, nsLabels func() (labels.Set, error)) (bool, error) {
	if r.PodSelector != nil && !r.PodSelector.Matches(labels.Set(pod.Labels)) {
		return false, nil
	}
	if r.NamespaceSelector != nil {
		set, err := nsLabels()
		if err != nil {
			return false, err
		}
		if !r.NamespaceSelector.Matches(set) {
			return false, nil
		}
	}
	return true, nil
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
	if r.Managed || r.Fallback || r.Deleting() {
		return nil, nil
	}
	if ok, err := r.selects(pod, nsLabels); err != nil || !ok {
		return nil, err
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

// Masking is another registration whose entry for a pod is the same entry as ours — the same SPIFFE
// ID, parent and selectors — with another spec. spire-controller-manager keeps one entry per (SPIFFE
// ID, parent, selectors): the older registration's (then the one with the lower UID), whose whole
// spec the entry gets; the other reports the pod in its entriesMasked, and nothing else shows.
type Masking struct {
	// Fields are the entry fields that differ, as spire-controller-manager's spec names them.
	Fields []string
	// TheirsWins says that the other registration's spec is the one SPIRE gets.
	TheirsWins bool
}

// Masks is the one rule for "another registration would mask ours with a different spec": r is not
// the webhook's, not a fallback (a fallback makes no entry for a pod another registration of the
// class serves), not being deleted, adds no selectors, selects pod, renders the SPIFFE ID ours
// renders, and makes the entry with another TTL, JWT TTL, federatesWith, DNS names, hint, admin or
// downstream. ours is the webhook's spec for the pod's namespace; oursCreated and oursUID are its
// registration's (zero when it does not exist yet: it will be the newer). pod must carry its
// namespace.
func (r *Registration) Masks(cfg *config.Config, pod *corev1.Pod, nsLabels func() (labels.Set, error), ours Spec, oursCreated time.Time, oursUID string) (*Masking, error) {
	if r.Managed || r.Fallback || r.Deleting() || len(r.WorkloadSelectors) > 0 {
		return nil, nil
	}
	if ok, err := r.selects(pod, nsLabels); err != nil || !ok {
		return nil, err
	}
	id, _ := SPIFFEID(cfg, pod)
	theirs, err := Render(r.SPIFFEID, cfg, pod)
	if err != nil || id == "" || theirs != id {
		return nil, nil
	}
	var fields []string
	if r.TTL != ours.TTL {
		fields = append(fields, "ttl")
	}
	if r.JWTTTL != ours.JWTTTL {
		fields = append(fields, "jwtTtl")
	}
	if !sameSet(r.FederatesWith, ours.FederatesWith) {
		fields = append(fields, "federatesWith")
	}
	oursDNS, err := renderAll(ours.DNSNameTemplates, cfg, pod)
	if err != nil {
		return nil, nil
	}
	var theirsDNS []string
	for _, t := range r.DNSNameTemplates {
		if d, err := Render(t, cfg, pod); err == nil {
			theirsDNS = append(theirsDNS, d)
		}
	}
	if !sameSet(theirsDNS, oursDNS) || r.AutoPopulateDNSNames != ours.AutoPopulateDNSNames {
		fields = append(fields, "dnsNames")
	}
	if r.Hint != "" || r.Admin || r.Downstream {
		fields = append(fields, "hint/admin/downstream")
	}
	if len(fields) == 0 {
		return nil, nil
	}
	theirsWins := oursCreated.IsZero() || Prefers(r, &Registration{Created: oursCreated, UID: oursUID})
	return &Masking{Fields: fields, TheirsWins: theirsWins}, nil
}

// renderAll renders DNS name templates (as spire-controller-manager parses them) for pod.
func renderAll(tmpls []string, cfg *config.Config, pod *corev1.Pod) ([]string, error) {
	var out []string
	for _, s := range tmpls {
		t, err := template.New("dnsName").Parse(s)
		if err != nil {
			return nil, err
		}
		d, err := Render(t, cfg, pod)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}
