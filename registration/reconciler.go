package registration

import (
	"context"
	"maps"
	"sync"
	"time"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

// Reconciler repairs what admission could not, and keeps each namespace's registration true to the
// configuration. An opted-in namespace (label spire-injection=enabled) that holds a pod the webhook
// wired has exactly the ClusterSPIFFEID Build describes: the reconciler creates it when admission
// could not (an API error under failurePolicy Ignore), re-creates it when deleted by hand, undoes
// drift, and follows configuration and namespace annotation changes. A namespace that opts out, or
// is deleted, has none: deletion does not wait for garbage collection, the owner reference is only
// a backstop. A ClusterSPIFFEID the webhook does not manage is never touched. Nothing is created for
// a namespace before a pod is wired there, so a dry-run admission leaves no trace.
type Reconciler struct {
	cfg      *config.Config
	client   client.Client // reads from the cache, writes to the API server
	recorder record.EventRecorder
	metrics  *Metrics
	now      func() time.Time
	unused   sync.Map // namespace -> time.Time its registration was first seen without a wired pod
}

// ReasonNoWiredPods is why a registration was deleted from a namespace that is still opted in.
const ReasonNoWiredPods = "NoWiredPods"

// NewReconciler returns the reconciler.
func NewReconciler(cfg *config.Config, c client.Client, recorder record.EventRecorder, metrics *Metrics) *Reconciler {
	return &Reconciler{cfg: cfg, client: c, recorder: recorder, metrics: metrics, now: time.Now}
}

// UnusedGrace is how long a registration of an opted-in namespace may go without a wired pod before
// the reconciler removes it. Admission creates the registration before the pod exists, so the pod
// must have time to appear, and a rollout may briefly leave no pod; a registration nothing uses
// (the namespace was scaled to zero, or a review that never became a pod asked for it) does not
// stay. The next wired pod's admission creates it again before that pod is admitted.
const UnusedGrace = 2 * time.Minute

// IndexManaged registers ManagedIndex with the manager's cache. Call before the manager starts.
func IndexManaged(ctx context.Context, mgr manager.Manager) error {
	return mgr.GetFieldIndexer().IndexField(ctx, &spirev1alpha1.ClusterSPIFFEID{}, ManagedIndex, func(o client.Object) []string {
		if o.GetLabels()[identity.ManagedByLabel] == identity.ManagedByValue {
			return []string{"true"}
		}
		return []string{"false"}
	})
}

// WiredPods is the object the cache keeps for pods the webhook wired: metadata only, and only for
// pods carrying the injected label (see CacheOptions).
func WiredPods() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Pod"))
	return m
}

// SetupWithManager registers the controller: it watches Namespaces (metadata only), the
// ClusterSPIFFEIDs, the ClusterFederatedTrustDomains (what registrations may federate with) and the
// creation and deletion of wired pods, keyed by namespace name. Like every
// controller it runs only on the elected leader, so the webhook can run several replicas.
func (r *Reconciler) SetupWithManager(mgr manager.Manager) error {
	byNamespace := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: o.GetNamespace()}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("registration").
		For(&corev1.Namespace{}, builder.OnlyMetadata).
		Watches(&corev1.Pod{}, byNamespace, builder.OnlyMetadata, builder.WithPredicates(predicate.Funcs{
			UpdateFunc:  func(event.UpdateEvent) bool { return false },
			GenericFunc: func(event.GenericEvent) bool { return false },
		})).
		Watches(&spirev1alpha1.ClusterSPIFFEID{}, handler.EnqueueRequestsFromMapFunc(r.namespacesOf)).
		Watches(&spirev1alpha1.ClusterFederatedTrustDomain{}, handler.EnqueueRequestsFromMapFunc(r.federatingNamespaces)).
		// Name validation guards against two controllers of one name in a process; tests run
		// several servers (replicas) in one process on purpose.
		WithOptions(controller.Options{MaxConcurrentReconciles: 4, SkipNameValidation: ptr(true)}).
		Complete(r)
}

// namespacesOf maps a ClusterSPIFFEID event to the namespaces whose registration it may affect:
// the namespace of one of ours; for anybody else's, every namespace its namespace selector matches
// (it may stop or start covering them).
func (r *Reconciler) namespacesOf(ctx context.Context, o client.Object) []reconcile.Request {
	if o.GetLabels()[identity.ManagedByLabel] == identity.ManagedByValue {
		if ns := o.GetLabels()[identity.NamespaceLabel]; ns != "" {
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: ns}}}
		}
		return nil
	}
	csid, ok := o.(*spirev1alpha1.ClusterSPIFFEID)
	if !ok {
		return nil
	}
	sel := labels.Everything()
	if csid.Spec.NamespaceSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(csid.Spec.NamespaceSelector)
		if err != nil {
			return nil
		}
		sel = s
	}
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("NamespaceList"))
	if err := r.client.List(ctx, list, client.MatchingLabelsSelector{Selector: sel}, client.UnsafeDisableDeepCopy); err != nil {
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for _, ns := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: ns.Name}})
	}
	return reqs
}

// Reconcile brings namespace req.Name's registration to its desired state.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	ns := req.Name
	logger := log.FromContext(ctx).WithValues("namespace", ns, "clusterSPIFFEID", identity.Name(ns))
	var requeue time.Duration
	result, reason, err := r.reconcile(ctx, ns, &requeue)
	r.metrics.reconciles.WithLabelValues(result, reason).Inc()
	if err != nil {
		logger.Error(err, "reconcile failed", "reason", reason)
		return reconcile.Result{}, err
	}
	if result != "unchanged" {
		logger.Info("registration reconciled", "result", result, "reason", reason)
	}
	return reconcile.Result{RequeueAfter: requeue}, nil
}

func (r *Reconciler) reconcile(ctx context.Context, ns string, requeue *time.Duration) (result, reason string, err error) {
	nsMeta := namespaceMeta()
	switch err := r.client.Get(ctx, types.NamespacedName{Name: ns}, nsMeta); {
	case apierrors.IsNotFound(err):
		nsMeta = nil
	case err != nil:
		return "error", ReasonAPIError, err
	}
	want := nsMeta != nil && nsMeta.DeletionTimestamp == nil && identity.OptedIn(nsMeta.Labels)

	name := identity.Name(ns)
	current := &spirev1alpha1.ClusterSPIFFEID{}
	switch err := r.client.Get(ctx, types.NamespacedName{Name: name}, current); {
	case apierrors.IsNotFound(err):
		current = nil
	case err != nil:
		return "error", ReasonAPIError, err
	}
	if current != nil && current.Labels[identity.ManagedByLabel] != identity.ManagedByValue {
		if want {
			r.event(nsMeta, corev1.EventTypeWarning, "Registration"+ReasonConflict,
				"ClusterSPIFFEID %s exists but is not managed by spire-mesh-injector; rename or delete it", name)
		}
		return "skipped", "NotManaged", nil
	}

	if !want {
		if current == nil {
			return "unchanged", "", nil
		}
		if err := r.client.Delete(ctx, current, client.Preconditions{UID: &current.UID}); err != nil && !apierrors.IsNotFound(err) {
			return "error", ReasonAPIError, err
		}
		return "deleted", "", nil
	}

	fed, err := Federation(ctx, r.client, r.cfg.Registration.ClassName)
	if err != nil {
		return "error", ReasonAPIError, err
	}
	desired, held, err := BuildFederating(r.cfg, ns, asNamespace(nsMeta), fed)
	if err != nil {
		r.event(nsMeta, corev1.EventTypeWarning, "Registration"+ReasonInvalid, "%v", err)
		// Nothing to retry until the annotation changes, which triggers a new reconcile.
		return "skipped", ReasonInvalid, nil
	}
	if current == nil {
		wired, err := r.hasWiredPods(ctx, ns)
		if err != nil {
			return "error", ReasonAPIError, err
		}
		if !wired {
			return "unchanged", "", nil
		}
		if other := r.coveringRegistration(ctx, nsMeta); other != "" {
			r.event(nsMeta, corev1.EventTypeWarning, "Registration"+ReasonConflict,
				"ClusterSPIFFEID %s (not managed by spire-mesh-injector) already selects every pod of this namespace with another SPIFFE ID; not creating %s", other, name)
			return "skipped", ReasonConflict, nil
		}
		if err := r.client.Create(ctx, desired); err != nil {
			if apierrors.IsAlreadyExists(err) {
				return "unchanged", "", nil
			}
			return "error", ReasonAPIError, err
		}
		r.event(nsMeta, corev1.EventTypeNormal, "RegistrationCreated", "created ClusterSPIFFEID %s", name)
		r.heldBack(nsMeta, held)
		return "created", "", nil
	}

	wired, err := r.hasWiredPods(ctx, ns)
	if err != nil {
		return "error", ReasonAPIError, err
	}
	if wired {
		r.unused.Delete(ns)
	} else {
		since, _ := r.unused.LoadOrStore(ns, r.now())
		if wait := UnusedGrace - r.now().Sub(since.(time.Time)); wait > 0 {
			*requeue = wait
		} else {
			if err := r.client.Delete(ctx, current, client.Preconditions{UID: &current.UID}); err != nil && !apierrors.IsNotFound(err) {
				return "error", ReasonAPIError, err
			}
			r.unused.Delete(ns)
			return "deleted", ReasonNoWiredPods, nil
		}
	}
	if equality.Semantic.DeepEqual(current.Spec, desired.Spec) && hasLabels(current.Labels, desired.Labels) &&
		equality.Semantic.DeepEqual(current.OwnerReferences, desired.OwnerReferences) {
		return "unchanged", "", nil
	}
	updated := current.DeepCopy()
	updated.Spec = desired.Spec
	if updated.Labels == nil {
		updated.Labels = map[string]string{}
	}
	maps.Copy(updated.Labels, desired.Labels)
	updated.OwnerReferences = desired.OwnerReferences
	if err := r.client.Update(ctx, updated); err != nil {
		return "error", ReasonAPIError, err
	}
	r.event(nsMeta, corev1.EventTypeNormal, "RegistrationUpdated", "updated ClusterSPIFFEID %s to the current configuration", name)
	r.heldBack(nsMeta, held)
	return "updated", "", nil
}

// hasWiredPods reports whether the namespace holds a pod the webhook wired (from the cache).
func (r *Reconciler) hasWiredPods(ctx context.Context, ns string) (bool, error) {
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PodList"))
	if err := r.client.List(ctx, list, client.InNamespace(ns), client.UnsafeDisableDeepCopy); err != nil {
		return false, err
	}
	return len(list.Items) > 0, nil
}

// coveringRegistration names another non-fallback ClusterSPIFFEID of the same class that selects
// every pod of the namespace (no pod selector) with another SPIFFE ID template: creating ours would
// give each wired pod two identities. Overlaps that depend on pod labels are checked per pod at
// admission.
func (r *Reconciler) coveringRegistration(ctx context.Context, nsMeta *metav1.PartialObjectMetadata) string {
	var others spirev1alpha1.ClusterSPIFFEIDList
	if err := r.client.List(ctx, &others, unmanaged, client.UnsafeDisableDeepCopy); err != nil {
		return ""
	}
	for i := range others.Items {
		o := &others.Items[i]
		if o.Spec.Fallback || o.Spec.ClassName != r.cfg.Registration.ClassName || o.Spec.SPIFFEIDTemplate == r.cfg.Registration.SPIFFEIDTemplate {
			continue
		}
		parsed, err := spirev1alpha1.ParseClusterSPIFFEIDSpec(&o.Spec)
		if err != nil || (parsed.PodSelector != nil && !parsed.PodSelector.Empty()) {
			continue
		}
		if parsed.NamespaceSelector == nil || parsed.NamespaceSelector.Matches(labels.Set(nsMeta.Labels)) {
			return o.Name
		}
	}
	return ""
}

// heldBack records the trust domains a registration it wrote leaves out; once a
// ClusterFederatedTrustDomain of the class names one, the watch brings the namespace back and the
// registration gets it.
func (r *Reconciler) heldBack(nsMeta *metav1.PartialObjectMetadata, held []string) {
	if len(held) > 0 {
		r.event(nsMeta, corev1.EventTypeWarning, "RegistrationFederationHeldBack", "%s", heldBackWarning(held))
	}
}

// federatingNamespaces maps a ClusterFederatedTrustDomain event to the namespaces whose
// registration may now federate with it, or must stop: every opted-in namespace when the
// configuration federates, otherwise those that ask for it with their annotation.
func (r *Reconciler) federatingNamespaces(ctx context.Context, _ client.Object) []reconcile.Request {
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("NamespaceList"))
	if err := r.client.List(ctx, list, client.UnsafeDisableDeepCopy); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for _, ns := range list.Items {
		_, asks := ns.Annotations[annotations.FederatesWithAnnotation]
		if identity.OptedIn(ns.Labels) && (asks || len(r.cfg.Registration.FederatesWith) > 0) {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: ns.Name}})
		}
	}
	return reqs
}

func (r *Reconciler) event(nsMeta *metav1.PartialObjectMetadata, eventType, reason, format string, args ...any) {
	if r.recorder == nil || nsMeta == nil {
		return
	}
	r.recorder.Eventf(namespaceRef(nsMeta.Name, nsMeta.UID), eventType, reason, format, args...)
}

func hasLabels(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

func ptr[T any](v T) *T { return &v }
