package registration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"golang.org/x/sync/singleflight"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

// ManagedIndex is the cache field index that tells the webhook's ClusterSPIFFEIDs ("true") from
// everybody else's ("false"), so that looking at other registrations costs no scan of ours.
const ManagedIndex = "spire-mesh-injector.io/managed"

// unmanaged lists, from the cache, the ClusterSPIFFEIDs that are not the webhook's (ManagedIndex
// "false"); built once, not on every admission.
var unmanaged = client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector(ManagedIndex, "false")}

// recentTTL is how long a namespace whose registration was just created is trusted to have one
// while the cache catches up with the create: admissions in the meantime need no API call.
const recentTTL = 30 * time.Second

// Reason values of an EnsureError, used as metric labels and Event reasons.
const (
	ReasonCRDMissing = "CRDMissing"
	ReasonForbidden  = "Forbidden"
	ReasonConflict   = "Conflict"
	ReasonInvalid    = "InvalidNamespaceAnnotation"
	ReasonAPIError   = "APIError"
	// ReasonNotOptedIn is a skip, not an error: the namespace is not opted in as far as the cache
	// knows, so nothing is written for it.
	ReasonNotOptedIn = "NamespaceNotOptedIn"
)

// EnsureError says why a namespace's ClusterSPIFFEID could not be ensured and what to do about it.
type EnsureError struct {
	Namespace, Name, Reason string
	Err                     error
}

func (e *EnsureError) Error() string {
	return fmt.Sprintf("ClusterSPIFFEID %s for namespace %s could not be ensured: %v", e.Name, e.Namespace, e.Err)
}

func (e *EnsureError) Unwrap() error { return e.Err }

// Ensurer makes sure, at admission, that the namespace of a pod the webhook wired has its
// ClusterSPIFFEID, so spire-controller-manager attaches identity with nothing written by hand. In
// the steady state it reads only the controller-runtime cache: no API call per admission.
type Ensurer struct {
	cfg      *config.Config
	reader   client.Reader // the cache
	writer   client.Writer // the API server
	recorder record.EventRecorder
	metrics  *Metrics
	now      func() time.Time

	inflight singleflight.Group
	recent   sync.Map // namespace -> time.Time of the last create (or AlreadyExists)
}

// NewEnsurer returns an Ensurer reading through reader (a cache with the ManagedIndex field index)
// and creating through writer.
func NewEnsurer(cfg *config.Config, reader client.Reader, writer client.Writer, recorder record.EventRecorder, metrics *Metrics) *Ensurer {
	return &Ensurer{cfg: cfg, reader: reader, writer: writer, recorder: recorder, metrics: metrics, now: time.Now}
}

// Ensure makes sure namespace ns's ClusterSPIFFEID exists before pod, already wired, is admitted,
// and that no registration of somebody else's gives the same pod another SPIFFE ID. It returns
// warnings for the pod's author: trust domains held back from the registration (no
// ClusterFederatedTrustDomain of the class names them yet), and another registration that masks
// ours for this pod. It is never called for dry-run requests.
func (e *Ensurer) Ensure(ctx context.Context, ns string, pod *corev1.Pod) ([]string, error) {
	warnings, err := e.ensure(ctx, ns, pod)
	if err != nil {
		var ee *EnsureError
		if !errors.As(err, &ee) {
			ee = &EnsureError{Namespace: ns, Name: identity.Name(ns), Reason: ReasonAPIError, Err: err}
			err = ee
		}
		e.metrics.ensures.WithLabelValues("error", ee.Reason).Inc()
		if e.recorder != nil {
			e.recorder.Eventf(namespaceRef(ns, ""), corev1.EventTypeWarning, "Registration"+ee.Reason, "%v", ee.Err)
		}
	}
	return warnings, err
}

func (e *Ensurer) ensure(ctx context.Context, ns string, pod *corev1.Pod) ([]string, error) {
	name := identity.Name(ns)
	// The namespace is read only (its labels, annotations and UID), never changed: the cache's own
	// object, not a deep copy of it on every admission.
	var nsMeta *metav1.PartialObjectMetadata
	getNamespace := func() (*metav1.PartialObjectMetadata, error) {
		if nsMeta != nil {
			return nsMeta, nil
		}
		m := namespaceMeta()
		if err := e.reader.Get(ctx, types.NamespacedName{Name: ns}, m, client.UnsafeDisableDeepCopy); err != nil {
			return nil, fmt.Errorf("reading namespace %s: %w", ns, err)
		}
		nsMeta = m
		return m, nil
	}
	// The review may come from anyone who can reach the webhook's port: nothing is written for a
	// namespace the cluster's own state does not show opted in. A namespace whose label the cache
	// has not seen yet loses nothing: the reconciler creates its registration once it sees the
	// label and a wired pod.
	if !e.servesMeta(getNamespace) {
		e.metrics.ensures.WithLabelValues("skipped", ReasonNotOptedIn).Inc()
		return nil, nil
	}
	m, err := getNamespace()
	if err != nil {
		return nil, err
	}
	// The namespace's annotations are checked on every admission; the whole spec is built only
	// when another registration must be compared with it (checkOthers) or ours created.
	requested, err := identity.FederatesWith(e.cfg, m.Annotations)
	if err != nil {
		return nil, &EnsureError{Namespace: ns, Name: name, Reason: ReasonInvalid, Err: err}
	}
	var fed identity.Federation
	if len(requested) > 0 {
		if fed, err = Federation(ctx, e.reader, e.cfg.Registration.ClassName); err != nil {
			return nil, err
		}
	}
	federates, held := identity.HoldBack(requested, fed)
	spec := func() identity.Spec { return identity.SpecWith(e.cfg, ns, federates) }
	var warnings []string
	if len(held) > 0 {
		e.metrics.federationHeldBack.Inc()
		warnings = append(warnings, heldBackWarning(held))
	}

	// Read only (its labels, creation time and UID), never changed or written back: the cache's
	// own object, not a deep copy of it on every admission.
	existing := &spirev1alpha1.ClusterSPIFFEID{}
	err = e.reader.Get(ctx, types.NamespacedName{Name: name}, existing, client.UnsafeDisableDeepCopy)
	switch {
	case err == nil:
	case meta.IsNoMatchError(err):
		return warnings, crdMissing(ns, name, err)
	case !apierrors.IsNotFound(err):
		return warnings, fmt.Errorf("reading ClusterSPIFFEID %s from the cache: %w", name, err)
	default:
		existing = nil
	}
	var created time.Time
	var uid string
	if existing != nil {
		created, uid = existing.CreationTimestamp.Time, string(existing.UID)
	}
	masked, err := e.checkOthers(ctx, ns, pod, getNamespace, spec, created, uid)
	if err != nil {
		return warnings, err
	}
	warnings = append(warnings, masked...)

	if existing != nil {
		if !identity.IsManaged(existing.Labels) {
			return warnings, &EnsureError{Namespace: ns, Name: name, Reason: ReasonConflict,
				Err: fmt.Errorf("a ClusterSPIFFEID named %s exists but is not managed by spire-mesh-injector (label %s=%s missing); rename or delete it", name, identity.ManagedByLabel, identity.ManagedByValue)}
		}
		e.metrics.ensures.WithLabelValues("exists", "").Inc()
		return warnings, nil
	}
	if t, ok := e.recent.Load(ns); ok && e.now().Sub(t.(time.Time)) < recentTTL {
		e.metrics.ensures.WithLabelValues("exists", "").Inc()
		return warnings, nil
	}

	// Concurrent admissions in one namespace create it once.
	_, err, _ = e.inflight.Do(ns, func() (any, error) {
		obj, _, err := BuildFederating(e.cfg, ns, asNamespace(m), fed)
		if err != nil {
			return nil, &EnsureError{Namespace: ns, Name: name, Reason: ReasonInvalid, Err: err}
		}
		switch err := e.writer.Create(ctx, obj); {
		case err == nil:
			e.metrics.ensures.WithLabelValues("created", "").Inc()
			if len(held) > 0 && e.recorder != nil {
				e.recorder.Eventf(namespaceRef(ns, m.UID), corev1.EventTypeWarning, "RegistrationFederationHeldBack", "%s", heldBackWarning(held))
			}
		case apierrors.IsAlreadyExists(err):
			e.metrics.ensures.WithLabelValues("exists", "").Inc()
		case meta.IsNoMatchError(err) || apierrors.IsNotFound(err):
			// The API server answers 404 for a resource whose CRD is gone.
			return nil, crdMissing(ns, name, err)
		case apierrors.IsForbidden(err):
			return nil, &EnsureError{Namespace: ns, Name: name, Reason: ReasonForbidden,
				Err: fmt.Errorf("the webhook's service account may not create clusterspiffeids.spire.spiffe.io (apply the RBAC in kustomize/base): %w", err)}
		default:
			return nil, fmt.Errorf("creating ClusterSPIFFEID %s: %w", name, err)
		}
		e.recent.Store(ns, e.now())
		return nil, nil
	})
	return warnings, err
}

// heldBackWarning says which trust domains the registration does not federate with yet, and why
// (short enough for an admission warning, which the webhook cuts at 120 characters).
func heldBackWarning(held []string) string {
	return fmt.Sprintf("not federating with %s yet: no ClusterFederatedTrustDomain of the class names it", strings.Join(held, ","))
}

// Serves reports whether namespace ns is opted in and not being deleted, as the cache knows it: the
// webhook writes nothing (registrations, Events) for any other namespace.
func (e *Ensurer) Serves(ns string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return e.servesMeta(func() (*metav1.PartialObjectMetadata, error) {
		m := namespaceMeta()
		return m, e.reader.Get(ctx, types.NamespacedName{Name: ns}, m, client.UnsafeDisableDeepCopy)
	})
}

func (e *Ensurer) servesMeta(get func() (*metav1.PartialObjectMetadata, error)) bool {
	m, err := get()
	return err == nil && m.DeletionTimestamp == nil && identity.OptedIn(m.Labels)
}

// checkOthers looks at every other registration of the class for pod: one that competes with ours
// (identity.Registration.Competes: another SPIFFE ID) refuses ours — the workload could get either
// identity; one that masks ours (identity.Registration.Masks: the same entry with another spec)
// is a warning, since spire-controller-manager keeps the older one's spec. ZTWIM's fallback default
// (fallback: true) yields to ours and is neither.
func (e *Ensurer) checkOthers(ctx context.Context, ns string, pod *corev1.Pod, getNamespace func() (*metav1.PartialObjectMetadata, error), ours func() identity.Spec, oursCreated time.Time, oursUID string) ([]string, error) {
	var others spirev1alpha1.ClusterSPIFFEIDList
	if err := e.reader.List(ctx, &others, unmanaged, client.UnsafeDisableDeepCopy); err != nil {
		if meta.IsNoMatchError(err) {
			return nil, crdMissing(ns, identity.Name(ns), err)
		}
		return nil, fmt.Errorf("listing ClusterSPIFFEIDs from the cache: %w", err)
	}
	if len(others.Items) == 0 {
		return nil, nil
	}
	pod = identity.InNamespace(pod, ns)
	nsLabels := func() (labels.Set, error) {
		m, err := getNamespace()
		if err != nil {
			return nil, err
		}
		return labels.Set(m.Labels), nil
	}
	var warnings []string
	var oursSpec *identity.Spec // built once, for the first registration of the class
	for i := range others.Items {
		o := &others.Items[i]
		if o.Spec.ClassName != e.cfg.Registration.ClassName {
			continue
		}
		r, err := Parse(o)
		if err != nil {
			continue // spire-controller-manager ignores what it cannot parse
		}
		c, err := r.Competes(e.cfg, pod, nsLabels)
		if err != nil {
			return nil, err
		}
		if c != nil {
			return nil, &EnsureError{Namespace: ns, Name: identity.Name(ns), Reason: ReasonConflict,
				Err: fmt.Errorf("ClusterSPIFFEID %s (className %q, not managed by spire-mesh-injector) already selects this pod with SPIFFE ID %q, not %q; give it fallback: true, narrow its selectors, or label the pod %s=%s",
					o.Name, o.Spec.ClassName, c.Theirs, c.Ours, annotations.InjectionLabel, annotations.InjectionDisabled)}
		}
		if oursSpec == nil {
			s := ours()
			oursSpec = &s
		}
		mk, err := r.Masks(e.cfg, pod, nsLabels, *oursSpec, oursCreated, oursUID)
		if err != nil {
			return nil, err
		}
		if mk != nil && mk.TheirsWins {
			e.metrics.masked.Inc()
			warnings = append(warnings, fmt.Sprintf("older ClusterSPIFFEID %s masks this pod's entry (other %s)", o.Name, strings.Join(mk.Fields, ", ")))
		}
	}
	return warnings, nil
}

func crdMissing(ns, name string, err error) error {
	return &EnsureError{Namespace: ns, Name: name, Reason: ReasonCRDMissing,
		Err: fmt.Errorf("the ClusterSPIFFEID CRD (clusterspiffeids.spire.spiffe.io/v1alpha1) is not installed: install ZTWIM or spire-controller-manager first (%v)", err)}
}

func namespaceMeta() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
	return m
}

func asNamespace(m *metav1.PartialObjectMetadata) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: m.ObjectMeta}
}

// namespaceRef is the object Events about a namespace's registration are recorded on.
func namespaceRef(name string, uid types.UID) *corev1.Namespace {
	return &corev1.Namespace{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: uid},
	}
}
