// Package registration builds the ClusterSPIFFEID that gives an opted-in namespace's wired pods
// their SPIRE identity, and renders the SPIFFE ID a pod will get. Everything is validated with
// spire-controller-manager's own parser (ParseClusterSPIFFEIDSpec), the same code its validating
// webhook and reconciler run, so nothing is created that spire-controller-manager would refuse.
package registration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

const (
	// NamePrefix starts the name of every ClusterSPIFFEID the webhook manages.
	NamePrefix = "spire-mesh-injector-"
	// ManagedByLabel and ManagedByValue mark the ClusterSPIFFEIDs the webhook manages.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	// ManagedByValue is the ManagedByLabel value.
	ManagedByValue = "spire-mesh-injector"
	// NamespaceLabel names the namespace a managed ClusterSPIFFEID serves.
	NamespaceLabel = "spire-mesh-injector.io/namespace"
	// namespaceNameLabel is set by the API server on every Namespace.
	namespaceNameLabel = "kubernetes.io/metadata.name"
)

// Name is the deterministic name of namespace ns's ClusterSPIFFEID. Namespace names are DNS labels
// (at most 63 characters), so the name is always NamePrefix+ns; the hashed form only guards the
// object-name limit should that ever change.
func Name(ns string) string {
	n := NamePrefix + ns
	if len(n) <= validation.DNS1123SubdomainMaxLength {
		return n
	}
	sum := sha256.Sum256([]byte(ns))
	keep := validation.DNS1123SubdomainMaxLength - len(NamePrefix) - 11
	return NamePrefix + strings.TrimRight(ns[:keep], "-.") + "-" + hex.EncodeToString(sum[:])[:10]
}

// ParseFederatesWith parses the Namespace annotation annotations.FederatesWithAnnotation: a
// comma-separated list of trust domain names.
func ParseFederatesWith(value string) ([]string, error) {
	var out []string
	for i, p := range strings.Split(value, ",") {
		td := strings.TrimSpace(p)
		if td == "" {
			continue
		}
		if _, err := spiffeid.TrustDomainFromString(td); err != nil || strings.Contains(td, "://") {
			return nil, fmt.Errorf("namespace annotation %s: entry %d %q is not a trust domain name; allowed: comma-separated names such as partner.example", annotations.FederatesWithAnnotation, i+1, td)
		}
		out = append(out, td)
	}
	return out, nil
}

// Build returns the ClusterSPIFFEID for namespace ns. nsObj, when known, contributes its
// annotations (per-namespace overrides) and becomes the owner. The object is validated with
// spire-controller-manager's parser before it is returned.
func Build(cfg *config.Config, ns string, nsObj *corev1.Namespace) (*spirev1alpha1.ClusterSPIFFEID, error) {
	r := cfg.Registration
	federates := slices.Clone(r.FederatesWith)
	if nsObj != nil {
		if v, ok := nsObj.Annotations[annotations.FederatesWithAnnotation]; ok {
			extra, err := ParseFederatesWith(v)
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
	}
	slices.Sort(federates)
	federates = slices.Compact(federates)

	obj := &spirev1alpha1.ClusterSPIFFEID{
		TypeMeta: metav1.TypeMeta{APIVersion: spirev1alpha1.GroupVersion.String(), Kind: "ClusterSPIFFEID"},
		ObjectMeta: metav1.ObjectMeta{
			Name: Name(ns),
			Labels: map[string]string{
				ManagedByLabel: ManagedByValue,
				NamespaceLabel: ns,
			},
		},
		Spec: spirev1alpha1.ClusterSPIFFEIDSpec{
			SPIFFEIDTemplate:     r.SPIFFEIDTemplate,
			TTL:                  metav1.Duration{Duration: r.TTL.Duration},
			JWTTTL:               metav1.Duration{Duration: r.JWTTTL.Duration},
			DNSNameTemplates:     slices.Clone(r.DNSNameTemplates),
			AutoPopulateDNSNames: r.AutoPopulateDNSNames,
			FederatesWith:        federates,
			ClassName:            r.ClassName,
			NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{namespaceNameLabel: ns},
			},
			PodSelector: wiredPodSelector(),
		},
	}
	if nsObj != nil && nsObj.UID != "" {
		obj.OwnerReferences = []metav1.OwnerReference{{
			APIVersion: "v1", Kind: "Namespace", Name: nsObj.Name, UID: nsObj.UID,
		}}
	}
	if _, err := spirev1alpha1.ParseClusterSPIFFEIDSpec(&obj.Spec); err != nil {
		return nil, fmt.Errorf("ClusterSPIFFEID %s rejected by spire-controller-manager's parser: %w", obj.Name, err)
	}
	return obj, nil
}

// wiredPodSelector selects only pods the webhook wired, and never a pod that opted out: a hand-set
// label on an opted-out pod (which the webhook never sees) must not attach identity. Every
// registration the webhook manages carries this same selector.
func wiredPodSelector() *metav1.LabelSelector {
	return &metav1.LabelSelector{
		MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: annotations.InjectedLabel, Operator: metav1.LabelSelectorOpIn, Values: []string{string(annotations.ModeMesh), string(annotations.ModeWorkload)}},
			{Key: annotations.InjectionLabel, Operator: metav1.LabelSelectorOpNotIn, Values: []string{annotations.InjectionDisabled}},
		},
	}
}

// templateData has the field names spire-controller-manager gives its templates.
type templateData struct {
	TrustDomain   string
	ClusterName   string
	ClusterDomain string
	PodMeta       *metav1.ObjectMeta
	PodSpec       *corev1.PodSpec
	NodeMeta      *metav1.ObjectMeta
	NodeSpec      *corev1.NodeSpec
}

// SPIFFEID renders the SPIFFE ID spire-controller-manager will give pod, as it will render it. It
// returns "" when the template depends on the node, which is unknown before scheduling.
func SPIFFEID(cfg *config.Config, pod *corev1.Pod) (string, error) {
	if cfg.SPIFFEIDUsesNode() {
		return "", nil
	}
	spec := pod.Spec
	if spec.ServiceAccountName == "" {
		// The ServiceAccount admission plugin sets this before webhooks run; offline input may lack it.
		spec.ServiceAccountName = "default"
	}
	var buf bytes.Buffer
	err := cfg.SPIFFEIDTemplate().Execute(&buf, &templateData{
		TrustDomain:   cfg.TrustDomain,
		ClusterName:   cfg.ClusterName,
		ClusterDomain: cfg.ClusterDomain,
		PodMeta:       &pod.ObjectMeta,
		PodSpec:       &spec,
		NodeMeta:      &metav1.ObjectMeta{},
		NodeSpec:      &corev1.NodeSpec{},
	})
	if err != nil {
		return "", fmt.Errorf("registration.spiffeIDTemplate cannot be rendered for this pod: %v", err)
	}
	id, err := spiffeid.FromString(buf.String())
	if err != nil {
		return "", fmt.Errorf("registration.spiffeIDTemplate renders %q for this pod, which is not a valid SPIFFE ID: %v", buf.String(), err)
	}
	if id.TrustDomain().Name() != cfg.TrustDomain {
		return "", fmt.Errorf("registration.spiffeIDTemplate renders %q for this pod, outside trust domain %s", buf.String(), cfg.TrustDomain)
	}
	return id.String(), nil
}

// Scheme knows the core types and spire-controller-manager's: what the server, the check command
// and the tests read and write.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := spirev1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}
