// Package registration keeps each opted-in namespace's ClusterSPIFFEID in the cluster: it builds
// the API object from identity.DesiredSpec, ensures it at admission through the cache (Ensurer),
// and reconciles it (Reconciler). Everything is validated with spire-controller-manager's own
// parser (ParseClusterSPIFFEIDSpec), the same code its validating webhook and reconciler run, so
// nothing is created that spire-controller-manager would refuse; what a registration means for a
// pod is decided in package identity.
package registration

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

// Build returns the ClusterSPIFFEID for namespace ns, with the spec identity.DesiredSpec gives,
// federating with every trust domain asked for (as the configuration means it; BuildFederating is
// what the webhook writes). nsObj, when known, contributes its annotations (per-namespace
// overrides) and becomes the owner. The object is validated with spire-controller-manager's parser
// before it is returned.
func Build(cfg *config.Config, ns string, nsObj *corev1.Namespace) (*spirev1alpha1.ClusterSPIFFEID, error) {
	obj, _, err := BuildFederating(cfg, ns, nsObj, nil)
	return obj, err
}

// BuildFederating is Build federating only with the trust domains fed names (identity.Spec.HoldBack);
// it also returns the ones held back.
func BuildFederating(cfg *config.Config, ns string, nsObj *corev1.Namespace, fed identity.Federation) (*spirev1alpha1.ClusterSPIFFEID, []string, error) {
	var nsAnnotations map[string]string
	if nsObj != nil {
		nsAnnotations = nsObj.Annotations
	}
	requested, err := identity.DesiredSpec(cfg, ns, nsAnnotations)
	if err != nil {
		return nil, nil, err
	}
	spec, held := requested.HoldBack(fed)
	obj := &spirev1alpha1.ClusterSPIFFEID{
		TypeMeta: metav1.TypeMeta{APIVersion: spirev1alpha1.GroupVersion.String(), Kind: "ClusterSPIFFEID"},
		ObjectMeta: metav1.ObjectMeta{
			Name: identity.Name(ns),
			Labels: map[string]string{
				identity.ManagedByLabel: identity.ManagedByValue,
				identity.NamespaceLabel: ns,
			},
		},
		Spec: spirev1alpha1.ClusterSPIFFEIDSpec{
			SPIFFEIDTemplate:     spec.SPIFFEIDTemplate,
			TTL:                  metav1.Duration{Duration: spec.TTL},
			JWTTTL:               metav1.Duration{Duration: spec.JWTTTL},
			DNSNameTemplates:     spec.DNSNameTemplates,
			AutoPopulateDNSNames: spec.AutoPopulateDNSNames,
			FederatesWith:        spec.FederatesWith,
			ClassName:            spec.ClassName,
			NamespaceSelector:    spec.NamespaceSelector,
			PodSelector:          spec.PodSelector,
		},
	}
	if nsObj != nil && nsObj.UID != "" {
		obj.OwnerReferences = []metav1.OwnerReference{{
			APIVersion: "v1", Kind: "Namespace", Name: nsObj.Name, UID: nsObj.UID,
		}}
	}
	if _, err := spirev1alpha1.ParseClusterSPIFFEIDSpec(&obj.Spec); err != nil {
		return nil, nil, fmt.Errorf("ClusterSPIFFEID %s rejected by spire-controller-manager's parser: %w", obj.Name, err)
	}
	return obj, held, nil
}

// Federation reads, from reader (the cache), what spire-controller-manager of className can
// federate with: the ClusterFederatedTrustDomains of that class (spire-controller-manager's own
// class rule), by trust domain. With the CRD missing there is nothing to federate with.
func Federation(ctx context.Context, reader client.Reader, className string) (identity.Federation, error) {
	var list spirev1alpha1.ClusterFederatedTrustDomainList
	if err := reader.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		if meta.IsNoMatchError(err) {
			return identity.Federation{}, nil
		}
		return nil, fmt.Errorf("listing ClusterFederatedTrustDomains from the cache: %w", err)
	}
	fed := identity.Federation{}
	for i := range list.Items {
		o := &list.Items[i]
		if o.Spec.ClassName != className || o.DeletionTimestamp != nil {
			continue
		}
		if td, err := spiffeid.TrustDomainFromString(o.Spec.TrustDomain); err == nil {
			fed[td.Name()] = fed[td.Name()] || o.Spec.TrustDomainBundle != ""
		}
	}
	return fed, nil
}

// Parse reads another ClusterSPIFFEID as spire-controller-manager's parser does, for the overlap
// rule (identity.Registration.Competes). An error means spire-controller-manager ignores it.
func Parse(o *spirev1alpha1.ClusterSPIFFEID) (*identity.Registration, error) {
	parsed, err := spirev1alpha1.ParseClusterSPIFFEIDSpec(&o.Spec)
	if err != nil {
		return nil, err
	}
	fed := make([]string, 0, len(parsed.FederatesWith))
	for _, td := range parsed.FederatesWith {
		fed = append(fed, td.Name())
	}
	return &identity.Registration{
		Name:                 o.Name,
		ClassName:            o.Spec.ClassName,
		Created:              o.CreationTimestamp.Time,
		UID:                  string(o.UID),
		Fallback:             o.Spec.Fallback,
		Managed:              identity.IsManaged(o.Labels),
		Deleted:              deleted(o.DeletionTimestamp),
		SPIFFEID:             parsed.SPIFFEIDTemplate,
		NamespaceSelector:    parsed.NamespaceSelector,
		PodSelector:          parsed.PodSelector,
		TTL:                  parsed.TTL,
		JWTTTL:               parsed.JWTTTL,
		FederatesWith:        fed,
		DNSNameTemplates:     parsed.DNSNameTemplates,
		AutoPopulateDNSNames: parsed.AutoPopulateDNSNames,
		Hint:                 parsed.Hint,
		Admin:                parsed.Admin,
		Downstream:           parsed.Downstream,
		WorkloadSelectors:    slices.Clone(o.Spec.WorkloadSelectorTemplates),
	}, nil
}

func deleted(t *metav1.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.Time
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
