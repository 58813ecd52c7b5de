// Package webhook is the thin admission adapter: it decodes the AdmissionReview, fills the
// namespace from the request, runs the mutator chain, computes one JSON patch in one place, applies
// the failure policy to internal faults and encodes the response. It does no mutation itself.
package webhook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/record"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
)

// Path is where the server serves pod mutations.
const Path = "/mutate-pods"

// MaxRequestBytes bounds an admission request body. The API server limits objects to about
// 3 MiB; an AdmissionReview of a pod create carries one object.
const MaxRequestBytes = 7 << 20

// maxWarning is the longest admission warning the API server shows unshortened.
const maxWarning = 120

var (
	podKind     = metav1.GroupVersionKind{Group: "", Version: "v1", Kind: "Pod"}
	podResource = metav1.GroupVersionResource{Group: "", Version: "v1", Resource: "pods"}
	reviewGV    = schema.GroupVersion{Group: "admission.k8s.io", Version: "v1"}
)

// RegistrationTimeout bounds the registration ensure inside one admission; the webhook's
// timeoutSeconds (5) must leave room for it.
const RegistrationTimeout = 3 * time.Second

// Registrar ensures that the namespace of a pod the webhook wired has its ClusterSPIFFEID
// (registration.Ensurer). It is the handler's only side effect, skipped on dry runs.
type Registrar interface {
	Ensure(ctx context.Context, namespace string, pod *corev1.Pod) error
}

// Handler serves admission reviews for pod creation.
type Handler struct {
	run       func(*corev1.Pod, mutators.Request) (mutators.Result, error)
	registrar Registrar
	policy    config.FailurePolicy
	log       logr.Logger
	metrics   *Metrics
	recorder  record.EventRecorder
	now       func() time.Time
}

// Event reasons the handler records.
const (
	EventDenied  = "SPIREInjectionDenied"
	EventSkipped = "SPIREInjectionSkipped"
	EventFailed  = "SPIREInjectionFailed"
)

// WithRecorder makes the handler record Events for denials, skips worth knowing and internal
// faults. A pod being admitted does not exist yet, so the Event goes to its controller (the
// ReplicaSet, Job, ... whose FailedCreate the user is looking at) or, for a bare pod, to its
// namespace.
func (h *Handler) WithRecorder(r record.EventRecorder) *Handler {
	h.recorder = r
	return h
}

func (h *Handler) event(req *admissionv1.AdmissionRequest, pod *corev1.Pod, eventType, reason, message string) {
	if h.recorder == nil {
		return
	}
	var obj runtime.Object = &corev1.Namespace{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: req.Namespace},
	}
	if pod != nil {
		if owner := metav1.GetControllerOf(pod); owner != nil {
			obj = &metav1.PartialObjectMetadata{
				TypeMeta:   metav1.TypeMeta{APIVersion: owner.APIVersion, Kind: owner.Kind},
				ObjectMeta: metav1.ObjectMeta{Name: owner.Name, Namespace: req.Namespace, UID: owner.UID},
			}
		}
	}
	h.recorder.Event(obj, eventType, reason, message)
}

// NewHandler returns a handler that runs chain, ensures registrations with registrar (nil: none,
// as in the offline preview) and reports to log and metrics.
func NewHandler(chain *mutators.Chain, registrar Registrar, log logr.Logger, metrics *Metrics) *Handler {
	return &Handler{run: chain.Run, registrar: registrar, policy: chain.Config().FailurePolicy, log: log, metrics: metrics, now: time.Now}
}

// ServeHTTP decodes an AdmissionReview, reviews its request and writes the response review.
// Requests that are not AdmissionReviews get an HTTP error naming what is wrong.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.now()
	if r.Method != http.MethodPost {
		http.Error(w, "method "+r.Method+" not allowed; allowed: POST", http.StatusMethodNotAllowed)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" && !strings.HasPrefix(ct, "application/json;") {
		http.Error(w, fmt.Sprintf("Content-Type %q not supported; allowed: application/json", ct), http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("request body larger than %d bytes", MaxRequestBytes), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "reading request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	out, err := h.Handle(r.Context(), body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
	h.metrics.duration.Observe(h.now().Sub(start).Seconds())
}

// Handle decodes one AdmissionReview body, reviews its request and returns the encoded response
// review. An error means the body is not an admission.k8s.io/v1 AdmissionReview with a request.
func (h *Handler) Handle(ctx context.Context, body []byte) ([]byte, error) {
	// A pod creation, as the API server sends it, is decoded in one pass with the pod decoded in
	// place: decoding the review with the object kept raw and then the raw pod scans the pod's bytes
	// four times (validate and skip within the review, validate and decode on their own), which was
	// a third of the handler's cost. Anything else takes the general path, whose answers name exactly
	// what is wrong.
	var fast podReview
	if unmarshal(body, &fast) == nil && fast.ok() {
		req := &fast.Request.AdmissionRequest
		return EncodeResponse(h.decide(ctx, h.log.WithValues("uid", req.UID, "namespace", req.Namespace), req, fast.Request.Object))
	}
	review, err := DecodeReview(body)
	if err != nil {
		return nil, err
	}
	return EncodeResponse(h.Review(ctx, review.Request))
}

// podReview is an admission.k8s.io/v1 AdmissionReview whose request object is decoded straight
// into a Pod.
type podReview struct {
	metav1.TypeMeta `json:",inline"`
	Request         *podRequest `json:"request,omitempty"`
}

// podRequest is an AdmissionRequest whose object is a Pod: the shallower Object field hides the
// embedded request's raw one.
type podRequest struct {
	admissionv1.AdmissionRequest
	Object *corev1.Pod `json:"object"`
}

// ok says the review is one the general path would decide by decoding the pod: a v1 review of a
// pod creation with a request UID and a pod.
func (r *podReview) ok() bool {
	gvk := r.GroupVersionKind()
	return gvk.GroupVersion() == reviewGV && gvk.Kind == "AdmissionReview" && r.Request != nil &&
		r.Request.UID != "" && r.Request.Object != nil && isPodCreate(&r.Request.AdmissionRequest)
}

func isPodCreate(req *admissionv1.AdmissionRequest) bool {
	return req.Kind == podKind && req.Resource == podResource && req.SubResource == "" && req.Operation == admissionv1.Create
}

// DecodeReview decodes an admission.k8s.io/v1 AdmissionReview with the API machinery's JSON rules
// (case-sensitive field names) and checks it carries a request.
func DecodeReview(body []byte) (*admissionv1.AdmissionReview, error) {
	review := &admissionv1.AdmissionReview{}
	if err := unmarshal(body, review); err != nil {
		return nil, fmt.Errorf("request body is not an AdmissionReview: %v", err)
	}
	if gv := review.GroupVersionKind(); gv.GroupVersion() != reviewGV || gv.Kind != "AdmissionReview" {
		return nil, fmt.Errorf("apiVersion %q kind %q not supported; allowed: apiVersion admission.k8s.io/v1, kind AdmissionReview", review.APIVersion, review.Kind)
	}
	if review.Request == nil {
		return nil, errors.New("AdmissionReview has no request")
	}
	if review.Request.UID == "" {
		return nil, errors.New("AdmissionReview request.uid is empty")
	}
	return review, nil
}

// DecodePod decodes the pod in an admission request.
func DecodePod(raw []byte) (*corev1.Pod, error) {
	pod := &corev1.Pod{}
	if err := unmarshal(raw, pod); err != nil {
		return nil, err
	}
	return pod, nil
}

// EncodeResponse encodes resp in an admission.k8s.io/v1 AdmissionReview.
func EncodeResponse(resp *admissionv1.AdmissionResponse) ([]byte, error) {
	return marshal(&admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: reviewGV.String(), Kind: "AdmissionReview"},
		Response: resp,
	})
}

// Review decides one admission request.
func (h *Handler) Review(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	log := h.log.WithValues("uid", req.UID, "namespace", req.Namespace)
	if !isPodCreate(req) {
		h.metrics.admissions.WithLabelValues(ResultSkipped, string(annotations.SkipNotPod)).Inc()
		log.Info("skipped", "name", podName(req), "decision", ResultSkipped, "reason", annotations.SkipNotPod,
			"kind", req.Kind.String(), "resource", req.Resource.String(), "subResource", req.SubResource, "operation", req.Operation)
		return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	}
	if len(req.Object.Raw) == 0 {
		return h.deny(log.WithValues("pod", podName(req)), req, nil, "request.object: missing; allowed: the Pod being created")
	}
	pod, err := DecodePod(req.Object.Raw)
	if err != nil {
		return h.deny(log.WithValues("pod", podName(req)), req, nil, "request.object: not a valid Pod: "+err.Error())
	}
	return h.decide(ctx, log, req, pod)
}

// decide wires pod, a pod being created, and answers its request.
func (h *Handler) decide(ctx context.Context, log logr.Logger, req *admissionv1.AdmissionRequest, pod *corev1.Pod) *admissionv1.AdmissionResponse {
	log = log.WithValues("pod", podNameOf(pod))

	mut, ops, res, err := h.mutate(pod, req.Namespace)
	switch {
	case err != nil && mutators.IsInvalid(err):
		return h.deny(log, req, pod, err.Error())
	case err != nil:
		h.event(req, pod, corev1.EventTypeWarning, EventFailed, truncate("spire-mesh-injector: internal error: "+err.Error(), 1024))
		return h.internal(log, req, err)
	case res.Skipped != "":
		h.metrics.admissions.WithLabelValues(ResultSkipped, string(res.Skipped)).Inc()
		log.Info("skipped", "decision", ResultSkipped, "reason", res.Skipped)
		// An opted-out pod asked for it; a gateway awaiting Istio is wired on reinvocation.
		if res.Skipped != annotations.SkipOptOut && res.Skipped != annotations.SkipAwaitingIstio {
			h.event(req, pod, corev1.EventTypeNormal, EventSkipped, "spire-mesh-injector left the pod without SPIRE identity: "+string(res.Skipped))
		}
	case len(ops) == 0:
		h.metrics.admissions.WithLabelValues(ResultUnchanged, string(res.Mode)).Inc()
		log.V(1).Info("already wired", "decision", ResultUnchanged, "mode", res.Mode)
		return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	}
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if len(ops) > 0 {
		patch, err := EncodePatch(ops)
		if err != nil {
			return h.internal(log, req, fmt.Errorf("encoding patch: %w", err))
		}
		pt := admissionv1.PatchTypeJSONPatch
		resp.Patch, resp.PatchType = patch, &pt
		h.metrics.patchBytes.Observe(float64(len(patch)))
	}
	if res.Skipped != "" {
		return resp
	}
	dryRun := req.DryRun != nil && *req.DryRun
	if h.registrar != nil && !dryRun {
		rctx, cancel := context.WithTimeout(ctx, RegistrationTimeout)
		err := h.registrar.Ensure(rctx, req.Namespace, mut)
		cancel()
		if err != nil {
			return h.registrationFailed(log, req, resp, err)
		}
	}
	h.metrics.admissions.WithLabelValues(ResultMutated, string(res.Mode)).Inc()
	log.Info("wired", "decision", ResultMutated, "mode", res.Mode, "spiffeID", res.Status.SPIFFEID,
		"registration", res.Status.Registration, "operations", len(ops), "dryRun", dryRun)
	return resp
}

// registrationFailed applies the failure policy when the pod is wired but its namespace's
// ClusterSPIFFEID could not be ensured: Fail denies the pod; Ignore admits it wired, with a
// warning, so it gets its identity as soon as the reconciler repairs the registration.
func (h *Handler) registrationFailed(log logr.Logger, req *admissionv1.AdmissionRequest, wired *admissionv1.AdmissionResponse, err error) *admissionv1.AdmissionResponse {
	warning := "no SPIRE identity until the registration is repaired: " + err.Error()
	// A warning is cut at 120 characters: lead with the cause, not the object's name.
	var ee *registration.EnsureError
	if errors.As(err, &ee) {
		warning = fmt.Sprintf("no SPIRE identity until the registration is repaired (%s): %v", ee.Reason, ee.Err)
	}
	return h.applyPolicy(log, req, "registration-failed", wired, err, warning)
}

// mutate runs the chain on pod and returns the patch. A panic in a mutator is an internal fault,
// not a crash of the server.
func (h *Handler) mutate(pod *corev1.Pod, namespace string) (mut *corev1.Pod, ops []jsonPatchOp, res mutators.Result, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in mutator chain: %v", r)
		}
	}()
	mut = mutators.CopyForMutation(pod)
	res, err = h.run(mut, mutators.Request{Namespace: namespace})
	if err != nil {
		return nil, nil, res, err
	}
	ops, err = Patch(pod, mut)
	return mut, ops, res, err
}

// deny refuses a pod for a reason its author can fix. allowed:false rejects whatever the
// webhook's failurePolicy says.
func (h *Handler) deny(log logr.Logger, req *admissionv1.AdmissionRequest, pod *corev1.Pod, msg string) *admissionv1.AdmissionResponse {
	h.metrics.admissions.WithLabelValues(ResultDenied, "invalid-pod").Inc()
	log.Info("denied", "decision", ResultDenied, "reason", msg)
	h.event(req, pod, corev1.EventTypeWarning, EventDenied, "spire-mesh-injector: "+msg)
	return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: false, Result: &metav1.Status{
		Status: metav1.StatusFailure, Code: http.StatusBadRequest, Reason: metav1.StatusReasonBadRequest,
		Message: "spire-mesh-injector: " + msg,
	}}
}

// internal applies the configured failure policy to a fault that is not the pod author's; under
// Ignore the pod is admitted unchanged.
func (h *Handler) internal(log logr.Logger, req *admissionv1.AdmissionRequest, err error) *admissionv1.AdmissionResponse {
	return h.applyPolicy(log, req, "internal-error", &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}, err,
		"internal error, pod has no SPIRE identity: "+err.Error())
}

// applyPolicy answers a fault that is not the pod author's as the configured failure policy says:
// Fail denies the pod with the cause; Ignore admits `admitted` with a warning kubectl shows.
func (h *Handler) applyPolicy(log logr.Logger, req *admissionv1.AdmissionRequest, reason string, admitted *admissionv1.AdmissionResponse, err error, warning string) *admissionv1.AdmissionResponse {
	if h.policy == config.FailFail {
		h.metrics.admissions.WithLabelValues(ResultDenied, reason).Inc()
		log.Error(err, "denied (failurePolicy Fail)", "decision", ResultDenied, "reason", reason)
		return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: false, Result: &metav1.Status{
			Status: metav1.StatusFailure, Code: http.StatusInternalServerError, Reason: metav1.StatusReasonInternalError,
			Message: "spire-mesh-injector: pod not admitted (failurePolicy Fail): " + err.Error(),
		}}
	}
	h.metrics.admissions.WithLabelValues(ResultError, reason).Inc()
	log.Error(err, "admitted despite the fault (failurePolicy Ignore)", "decision", ResultError, "reason", reason)
	admitted.Warnings = []string{truncate("spire-mesh-injector: "+warning, maxWarning)}
	return admitted
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

func podName(req *admissionv1.AdmissionRequest) string {
	if req.Name != "" {
		return req.Name
	}
	return "(unnamed)"
}

// podNameOf names a pod that may not have a name yet (generateName pods from controllers).
func podNameOf(pod *corev1.Pod) string {
	switch {
	case pod.Name != "":
		return pod.Name
	case pod.GenerateName != "":
		return pod.GenerateName + "*"
	}
	return "(unnamed)"
}
