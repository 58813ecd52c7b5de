package registration

import (
	"unique"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

// CacheOptions are the manager cache settings registration needs. The cache holds every
// Namespace, every ClusterSPIFFEID and every wired pod of the cluster, which makes it most of the
// webhook's memory at scale (profiled at 10,000 opted-in namespaces: ~4.4 KB of live heap per
// namespace before these transforms, ~3 KB after; see docs/performance.md). So each kind keeps only
// what this package reads:
//
//   - pods are cached only when the webhook wired them (a label selector on the watch: a
//     cluster's pods would otherwise dominate), and only as their name: the reconciler needs to
//     know that a namespace holds one, and when one is created;
//   - namespaces keep their labels (selectors are matched against them), UID (owner references,
//     Events), deletion timestamp, and of their annotations only the ones the registration reads;
//   - ClusterSPIFFEIDs lose their status, and strings every one of ours repeats (label keys, the
//     template, the class name, the pod selector) are shared rather than held once per object.
//
// Managed fields are dropped from everything.
func CacheOptions() cache.Options {
	wired, err := labels.Parse(annotations.InjectedLabel)
	if err != nil {
		panic(err)
	}
	strip := cache.TransformStripManagedFields()
	return cache.Options{
		// ClusterSPIFFEIDs are slimmed by the default transform rather than a ByObject entry: a
		// ByObject entry makes the manager map the kind when it is created, and the webhook must
		// start before spire-controller-manager's CRD is installed.
		DefaultTransform: func(o any) (any, error) {
			if c, ok := o.(*spirev1alpha1.ClusterSPIFFEID); ok {
				return slimClusterSPIFFEID(c)
			}
			return strip(o)
		},
		ByObject: map[client.Object]cache.ByObject{
			WiredPods():     {Label: wired, Transform: slimPod},
			namespaceMeta(): {Transform: slimNamespace},
		},
	}
}

// Transforms are applied to objects from the API server before they are stored, and must accept
// an object they already transformed (client-go may re-apply them). Objects of other types
// (tombstones) pass through.

func slimPod(o any) (any, error) {
	if m, ok := o.(*metav1.PartialObjectMetadata); ok {
		m.TypeMeta = internTypeMeta(m.TypeMeta)
		m.ObjectMeta = metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, ResourceVersion: m.ResourceVersion}
	}
	return o, nil
}

// namespaceAnnotations are the Namespace annotations registration reads (Build).
var namespaceAnnotations = []string{annotations.FederatesWithAnnotation}

func slimNamespace(o any) (any, error) {
	m, ok := o.(*metav1.PartialObjectMetadata)
	if !ok {
		return o, nil
	}
	var keep map[string]string
	for _, k := range namespaceAnnotations {
		if v, ok := m.Annotations[k]; ok {
			if keep == nil {
				keep = map[string]string{}
			}
			keep[k] = v
		}
	}
	m.TypeMeta = internTypeMeta(m.TypeMeta)
	m.ObjectMeta = metav1.ObjectMeta{Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion,
		DeletionTimestamp: m.DeletionTimestamp, Labels: internKeys(m.Labels), Annotations: keep}
	return m, nil
}

// sharedPodSelector is the pod selector of every registration the webhook manages, held once.
// Objects read from the cache are deep copies, and event handlers only read, so sharing it is
// safe.
var sharedPodSelector = identity.WiredPodSelector()

func slimClusterSPIFFEID(o any) (any, error) {
	c, ok := o.(*spirev1alpha1.ClusterSPIFFEID)
	if !ok {
		return o, nil
	}
	c.TypeMeta = internTypeMeta(c.TypeMeta)
	c.ManagedFields = nil
	// spire-controller-manager's counters; nothing here reads them, and updates go to the main
	// resource, which ignores status.
	c.Status = spirev1alpha1.ClusterSPIFFEIDStatus{}
	c.Labels = internKeys(c.Labels)
	if v, ok := c.Labels[identity.ManagedByLabel]; ok {
		c.Labels[identity.ManagedByLabel] = intern(v)
	}
	for i := range c.OwnerReferences {
		c.OwnerReferences[i].APIVersion = intern(c.OwnerReferences[i].APIVersion)
		c.OwnerReferences[i].Kind = intern(c.OwnerReferences[i].Kind)
	}
	c.Spec.SPIFFEIDTemplate = intern(c.Spec.SPIFFEIDTemplate)
	c.Spec.ClassName = intern(c.Spec.ClassName)
	if c.Spec.NamespaceSelector != nil {
		c.Spec.NamespaceSelector.MatchLabels = internKeys(c.Spec.NamespaceSelector.MatchLabels)
	}
	if c.Labels[identity.ManagedByLabel] == identity.ManagedByValue && c.Spec.PodSelector != sharedPodSelector &&
		equality.Semantic.DeepEqual(c.Spec.PodSelector, sharedPodSelector) {
		c.Spec.PodSelector = sharedPodSelector
	}
	return c, nil
}

// intern returns the one copy of s shared by every object that holds the same string.
func intern(s string) string { return unique.Make(s).Value() }

func internTypeMeta(t metav1.TypeMeta) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: intern(t.APIVersion), Kind: intern(t.Kind)}
}

// internKeys returns m with its keys shared (label keys repeat across objects; values such as a
// namespace's name mostly do not).
func internKeys(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[intern(k)] = v
	}
	return out
}
