package identity

import (
	"fmt"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// Spec is the ClusterSPIFFEID spec the webhook wants for one namespace, field for field as
// spire-controller-manager names them. The registration package turns it into the API object and
// validates it with spire-controller-manager's own parser.
type Spec struct {
	SPIFFEIDTemplate     string
	TTL, JWTTTL          time.Duration
	DNSNameTemplates     []string
	AutoPopulateDNSNames bool
	FederatesWith        []string
	ClassName            string
	NamespaceSelector    *metav1.LabelSelector
	PodSelector          *metav1.LabelSelector
}

// DesiredSpec is namespace ns's registration spec under cfg. nsAnnotations, the namespace's
// annotations when known, add per-namespace trust domains to federate with.
func DesiredSpec(cfg *config.Config, ns string, nsAnnotations map[string]string) (Spec, error) {
	federates, err := FederatesWith(cfg, nsAnnotations)
	if err != nil {
		return Spec{}, err
	}
	return SpecWith(cfg, ns, federates), nil
}

// FederatesWith is the trust domains namespace ns's registration asks to federate with under cfg:
// the configured ones and those the namespace's annotations add, sorted, each once; nil when none.
// It is DesiredSpec's only check of the namespace's annotations.
func FederatesWith(cfg *config.Config, nsAnnotations map[string]string) ([]string, error) {
	federates := slices.Clone(cfg.Registration.FederatesWith)
	if v, ok := nsAnnotations[annotations.FederatesWithAnnotation]; ok {
		extra, err := annotations.ParseFederatesWith(v)
		if err != nil {
			return nil, err
		}
		for _, td := range extra {
			if td == cfg.TrustDomain {
				return nil, fmt.Errorf("namespace annotation %s: %q is the cluster's own trust domain; allowed: other trust domains", annotations.FederatesWithAnnotation, td)
			}
		}
		federates = append(federates, extra...)
	}
	slices.Sort(federates)
	return slices.Compact(federates), nil
}

// SpecWith is namespace ns's registration spec under cfg, federating with federates (as
// FederatesWith gives them, or fewer).
func SpecWith(cfg *config.Config, ns string, federates []string) Spec {
	r := cfg.Registration
	return Spec{
		SPIFFEIDTemplate:     r.SPIFFEIDTemplate,
		TTL:                  r.TTL.Duration,
		JWTTTL:               r.JWTTTL.Duration,
		DNSNameTemplates:     slices.Clone(r.DNSNameTemplates),
		AutoPopulateDNSNames: r.AutoPopulateDNSNames,
		FederatesWith:        federates,
		ClassName:            r.ClassName,
		NamespaceSelector:    &metav1.LabelSelector{MatchLabels: map[string]string{NamespaceNameLabel: ns}},
		PodSelector:          WiredPodSelector(),
	}
}

// Federation is what spire-controller-manager can federate with: each trust domain a
// ClusterFederatedTrustDomain of the reconciled class names, and whether that object carries the
// partner's bundle inline (spec.trustDomainBundle). Otherwise SPIRE holds the bundle only once it
// has fetched it from the partner's endpoint.
type Federation map[string]bool

// HoldBack returns s federating only with the trust domains fed names, and the ones it held back,
// sorted. SPIRE refuses an entry whose federatesWith names a trust domain it holds no bundle for
// ("unable to find federated bundle"), and spire-controller-manager checks only the names' syntax:
// one trust domain that no ClusterFederatedTrustDomain backs (a typo) would leave every pod the
// registration selects without an SVID. A nil fed (unknown, as offline) holds nothing back.
func (s Spec) HoldBack(fed Federation) (Spec, []string) {
	var held []string
	s.FederatesWith, held = HoldBack(s.FederatesWith, fed)
	return s, held
}

// HoldBack splits the trust domains federates into those fed names (kept) and the others (held),
// keeping their order; a nil fed holds nothing back (Spec.HoldBack).
func HoldBack(federates []string, fed Federation) (kept, held []string) {
	if fed == nil || len(federates) == 0 {
		return federates, nil
	}
	for _, td := range federates {
		if _, ok := fed[td]; ok {
			kept = append(kept, td)
		} else {
			held = append(held, td)
		}
	}
	return kept, held
}

// WiredPodSelector selects only pods the webhook wired, and never a pod that opted out: a hand-set
// label on an opted-out pod (which the webhook never sees) must not attach identity. Every
// registration the webhook manages carries this same selector.
func WiredPodSelector() *metav1.LabelSelector {
	return &metav1.LabelSelector{
		MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: annotations.InjectedLabel, Operator: metav1.LabelSelectorOpIn, Values: []string{string(annotations.ModeMesh), string(annotations.ModeWorkload)}},
			{Key: annotations.InjectionLabel, Operator: metav1.LabelSelectorOpNotIn, Values: []string{annotations.InjectionDisabled}},
		},
	}
}
