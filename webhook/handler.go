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
	"k8s.io/client-go/tools/record"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/inject"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
)

// Path is where the server serves pod mutations.
const Path = "/mutate-pods"

// MaxRequestBytes bounds an admission request body. The API server limits objects to about
// 3 MiB; an AdmissionReview of a pod create carries one object.
const MaxRequestBytes = 7 << 20

// maxWarning is the longest admission warning the API server shows unshortened.
const maxWarning = 120

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
	run       inject.Runner
	registrar Registrar
	policy    config.FailurePolicy
	log       logr.Logger
	metrics   *Metrics
	recorder  record.EventRecorder
	now       func() time.Time
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
	defer func() { h.metrics.duration.Observe(h.now().Sub(start).Seconds()) }()
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
	if inject.Unmarshal(body, &fast) == nil && fast.ok() {
		req := &fast.Request.AdmissionRequest
		return EncodeResponse(h.decide(ctx, h.log.WithValues("uid", req.UID, "namespace", req.Namespace), req, fast.Request.Object))
	}
	review, err := DecodeReview(body)
	if err != nil {
		return nil, err
	}
	return EncodeResponse(h.Review(ctx, review.Request))
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
	pod, err := inject.DecodePod(req.Object.Raw)
	if err != nil {
		return h.deny(log.WithValues("pod", podName(req)), req, nil, "request.object: not a valid Pod: "+err.Error())
	}
	return h.decide(ctx, log, req, pod)
}

// decide wires pod, a pod being created, and answers its request.
func (h *Handler) decide(ctx context.Context, log logr.Logger, req *admissionv1.AdmissionRequest, pod *corev1.Pod) *admissionv1.AdmissionResponse {
	log = log.WithValues("pod", podNameOf(pod))

	out, err := inject.Pod(h.run, pod, req.Namespace)
	res, ops := out.Result, out.Ops
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
		patch, err := inject.EncodePatch(ops)
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
		err := h.registrar.Ensure(rctx, req.Namespace, out.Pod)
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
