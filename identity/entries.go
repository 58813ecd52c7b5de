package identity

import (
	"fmt"
	"slices"
	"text/template"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// Which entries spire-controller-manager makes for one pod (pkg/spireentry): the one model of its
// rules, for the webhook's warnings and for check.

// EntryID renders any registration's SPIFFE ID template for pod and validates the result as
// spire-controller-manager validates the entry it renders: a SPIFFE ID in the trust domain.
func EntryID(t *template.Template, cfg *config.Config, pod *corev1.Pod) (string, error) {
	s, err := Render(t, cfg, pod)
	if err != nil {
		return "", fmt.Errorf("cannot be rendered: %v", err)
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return "", fmt.Errorf("renders %q, which is not a valid SPIFFE ID: %v", s, err)
	}
	if id.TrustDomain().Name() != cfg.TrustDomain {
		return "", fmt.Errorf("renders %q, outside trust domain %s", s, cfg.TrustDomain)
	}
	return id.String(), nil
}

// Prefers reports whether spire-controller-manager keeps a's entry over b's when both make the same
// entry (pkg/spireentry objectCmp): the older registration, then the one not being deleted (or
// deleted later), then the lower UID.
func Prefers(a, b *Registration) bool {
	if !a.Created.Equal(b.Created) {
		return a.Created.Before(b.Created)
	}
	switch ad, bd := a.Deleting(), b.Deleting(); {
	case !ad && bd:
		return true
	case ad && !bd:
		return false
	case ad && bd && !a.Deleted.Equal(b.Deleted):
		return b.Deleted.Before(a.Deleted)
	}
	return a.UID < b.UID
}

// Entry is what one registration makes for one pod.
type Entry struct {
	Registration *Registration
	// ID is the SPIFFE ID; "" when it reads the node (NodeDependent) or cannot be rendered (Err).
	ID            string
	NodeDependent bool
	// Err is why spire-controller-manager cannot render the entry: it counts a
	// podEntryRenderFailure, makes nothing, and the pod stays open to fallbacks.
	Err error
	// MaskedBy is the registration whose entry spire-controller-manager keeps instead: the same
	// SPIFFE ID, parent and selectors, preferred by Prefers. This entry's spec is dropped.
	MaskedBy *Registration
}

// Entries applies spire-controller-manager's rules to one pod in a namespace labelled nsLabels
// (NamespaceLabels), over the registrations it reconciles (of its class, parsed by its parser, the
// caller having left out namespaces it ignores): every registration that selects the pod makes an
// entry; fallback registrations only when no other rendered one; entries with the same SPIFFE ID
// and workload selector templates are one, from the preferred registration (the others carry
// MaskedBy). A node-dependent ID is not rendered: its entries cannot be compared. Failures are the
// registrations that select the pod and cannot render its entry. pod must carry its namespace.
func Entries(cfg *config.Config, pod *corev1.Pod, nsLabels labels.Set, regs []*Registration) (entries, failures []Entry) {
	served := false
	for _, fallbacks := range []bool{false, true} {
		if fallbacks && served {
			break
		}
		for _, r := range regs {
			if r.Fallback != fallbacks {
				continue
			}
			if (r.NamespaceSelector != nil && !r.NamespaceSelector.Matches(nsLabels)) ||
				(r.PodSelector != nil && !r.PodSelector.Matches(labels.Set(pod.Labels))) {
				continue
			}
			e := Entry{Registration: r}
			if ReadsNode(r.SPIFFEID) {
				e.NodeDependent = true
			} else if e.ID, e.Err = EntryID(r.SPIFFEID, cfg, pod); e.Err != nil {
				failures = append(failures, e)
				continue
			}
			entries = append(entries, e)
			served = served || !fallbacks
		}
	}
	for i := range entries {
		a := &entries[i]
		for j := range entries {
			b := &entries[j]
			if i == j || a.ID == "" || a.ID != b.ID || !slices.Equal(a.Registration.WorkloadSelectors, b.Registration.WorkloadSelectors) {
				continue
			}
			if Prefers(b.Registration, a.Registration) && (a.MaskedBy == nil || Prefers(b.Registration, a.MaskedBy)) {
				a.MaskedBy = b.Registration
			}
		}
	}
	return entries, failures
}
