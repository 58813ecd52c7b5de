// Package webhook is the thin admission adapter: it decodes the AdmissionReview, fills the
// namespace from the request, runs the mutator chain, computes one JSON patch in one place, applies
// the failure policy to internal faults and encodes the response. It does no mutation itself.
package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sync/semaphore"
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

// DefaultInflightBytes bounds the request bodies being handled at once. Decoding and wiring a pod
// takes a few times its bytes, so this keeps a replica's admission memory within tens of MiB
// whatever arrives; a review of the API server's (a few KiB) always finds room, while a burst of
// maximal bodies is shed (503) beyond it.
const DefaultInflightBytes = 24 << 20

// RegistrationTimeout bounds the registration ensure inside one admission; the webhook's
// timeoutSeconds (5) must leave room for it.
const RegistrationTimeout = 3 * time.Second

// Registrar ensures that the namespace of a pod the webhook wired has its ClusterSPIFFEID
// (registration.Ensurer). It is the handler's only side effect, skipped on dry runs.
type Registrar interface {
	// Ensure returns warnings for the pod's author (what the registration leaves out, or another
	// registration that masks it), and an error when the registration could not be ensured. pod,
	// the wired pod, is read only and only during the call: its storage serves the next admission.
	Ensure(ctx context.Context, namespace string, pod *corev1.Pod) ([]string, error)
}

// Handler serves admission reviews for pod creation.
type Handler struct {
	run       inject.Runner
	registrar Registrar
	scope     Scope
	policy    config.FailurePolicy
	log       logr.Logger
	metrics   *Metrics
	recorder  record.EventRecorder
	events    *eventLimiter
	now       func() time.Time
	inflight  *semaphore.Weighted
	refusals  *sampler
}

// Scope tells which namespaces the webhook serves, from the cluster's own state (the cache), not
// from what a review says: nothing is written to the API on behalf of a review for a namespace
// that is not opted in.
type Scope interface {
	Serves(namespace string) bool
}

// NewHandler returns a handler that runs chain, ensures registrations with registrar (nil: none,
// as in the offline preview) and reports to log and metrics.
func NewHandler(chain *mutators.Chain, registrar Registrar, log logr.Logger, metrics *Metrics) *Handler {
	return &Handler{run: chain.Run, registrar: registrar, policy: chain.Config().FailurePolicy, log: log, metrics: metrics, now: time.Now,
		inflight: semaphore.NewWeighted(DefaultInflightBytes), refusals: newSampler(time.Second), events: newEventLimiter()}
}

// WithScope makes the handler record Events only in namespaces scope serves (nil: every one).
func (h *Handler) WithScope(scope Scope) *Handler {
	h.scope = scope
	return h
}

// WithInflightBytes bounds the request bodies handled at once (DefaultInflightBytes otherwise).
func (h *Handler) WithInflightBytes(n int64) *Handler {
	h.inflight = semaphore.NewWeighted(n)
	return h
}

// ServeHTTP decodes an AdmissionReview, reviews its request and writes the response review.
// Requests that are not AdmissionReviews get an HTTP error naming what is wrong.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.now()
	defer func() { h.metrics.duration.Observe(h.now().Sub(start).Seconds()) }()
	if r.Method != http.MethodPost {
		h.refuse(w, r, RefusedMethod, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed; allowed: POST")
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" && !strings.HasPrefix(ct, "application/json;") {
		h.refuse(w, r, RefusedContentType, http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type %q not supported; allowed: application/json", ct))
		return
	}
	if r.ContentLength > MaxRequestBytes {
		h.refuse(w, r, RefusedTooLarge, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body of %d bytes larger than %d bytes", r.ContentLength, MaxRequestBytes))
		return
	}
	// The body's bytes are reserved before they are read: beyond the budget the request is shed
	// at once, so concurrent large reviews cannot take the process past its memory limit.
	weight := r.ContentLength
	if weight < 0 {
		weight = MaxRequestBytes // chunked: it may be as large as allowed
	}
	weight = max(weight, 1)
	if !h.inflight.TryAcquire(weight) {
		// The body is read and dropped (through a small buffer, not kept): unread, the server would
		// close the connection mid-request and the client would see a broken connection, not the 503.
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, MaxRequestBytes))
		w.Header().Set("Retry-After", "1")
		h.refuse(w, r, RefusedShed, http.StatusServiceUnavailable, "too many admission request bytes in flight; retry")
		return
	}
	defer h.inflight.Release(weight)
	in, out := getBuffer(), getBuffer()
	defer putBuffer(in)
	defer putBuffer(out)
	buf := bytes.NewBuffer((*in)[:0])
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength) + bytes.MinRead)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
	*in = buf.Bytes()
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.refuse(w, r, RefusedTooLarge, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", MaxRequestBytes))
			return
		}
		h.refuse(w, r, RefusedUnreadable, http.StatusBadRequest, "reading request body: "+err.Error())
		return
	}
	resp, err := h.AppendResponse(r.Context(), (*out)[:0], *in)
	if err != nil {
		h.refuse(w, r, RefusedNotAReview, http.StatusBadRequest, err.Error())
		return
	}
	*out = resp
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(resp)
}

// buffers holds request bodies and encoded responses for the next request to reuse: a review of
// a typical pod is several kilobytes each way, every allocated byte costs the garbage collector
// again, and neither outlives its request (decoding copies what it keeps).
var buffers = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledBuffer bounds the buffers kept: one grown by an unusually large review is left to the
// garbage collector rather than held.
const maxPooledBuffer = 64 << 10

func getBuffer() *[]byte { return buffers.Get().(*[]byte) }

func putBuffer(b *[]byte) {
	if cap(*b) <= maxPooledBuffer {
		*b = (*b)[:0]
		buffers.Put(b)
	}
}

// Reasons a request is refused before a review could be answered (the requests_refused metric).
// The API server then applies the webhook's failurePolicy: under Ignore the pod is admitted
// unwired, and the validating policy (kustomize/components/validating-policy) is what refuses it.
const (
	RefusedMethod      = "method"
	RefusedContentType = "content-type"
	RefusedTooLarge    = "too-large"
	RefusedShed        = "shed"
	RefusedUnreadable  = "unreadable-body"
	RefusedNotAReview  = "not-a-review"
)

// refuse answers a request with an HTTP error, counts it, and logs it (at most one line a second
// per reason, with how many were not logged, so a flood cannot flood the log).
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, reason string, code int, msg string) {
	h.metrics.refused.WithLabelValues(reason).Inc()
	if n, ok := h.refusals.allow(reason, h.now()); ok {
		h.log.Info("request refused", "reason", reason, "status", code, "remoteAddr", r.RemoteAddr,
			"contentLength", r.ContentLength, "error", truncate(msg, 256), "notLoggedSinceLast", n)
	}
	http.Error(w, msg, code)
}

// Handle decodes one AdmissionReview body, reviews its request and returns the encoded response
// review. An error means the body is not an admission.k8s.io/v1 AdmissionReview with a request.
func (h *Handler) Handle(ctx context.Context, body []byte) ([]byte, error) {
	return h.AppendResponse(ctx, nil, body)
}

// AppendResponse is Handle appending the response review to dst, as ServeHTTP does into a reused
// buffer.
func (h *Handler) AppendResponse(ctx context.Context, dst, body []byte) ([]byte, error) {
	// A pod creation, as the API server sends it, is decoded in one pass with the pod decoded in
	// place: decoding the review with the object kept raw and then the raw pod scans the pod's bytes
	// four times (validate and skip within the review, validate and decode on their own), which was
	// a third of the handler's cost. Anything else takes the general path, whose answers name exactly
	// what is wrong.
	var fast podReview
	if inject.Unmarshal(body, &fast) == nil && fast.ok() {
		req := &fast.Request.AdmissionRequest
		resp, out := h.decide(ctx, h.requestLog(req), req, fast.Request.Object)
		defer out.Release() // once the response, which carries its patch, is encoded
		return AppendResponse(dst, resp)
	}
	review, err := DecodeReview(body)
	if err != nil {
		return nil, err
	}
	return AppendResponse(dst, h.Review(ctx, review.Request))
}

// Review decides one admission request.
func (h *Handler) Review(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	log := h.requestLog(req)
	if !isPodCreate(req) {
		h.metrics.admissions.WithLabelValues(ResultSkipped, string(annotations.SkipNotPod)).Inc()
		log.Info("skipped", "name", podName(req), "decision", ResultSkipped, "reason", annotations.SkipNotPod,
			"kind", req.Kind.String(), "resource", req.Resource.String(), "subResource", req.SubResource, "operation", req.Operation)
		return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	}
	if len(req.Object.Raw) == 0 {
		return h.deny(log.with("pod", podName(req)), req, nil, "request.object: missing; allowed: the Pod being created")
	}
	pod, err := inject.DecodePod(req.Object.Raw)
	if err != nil {
		return h.deny(log.with("pod", podName(req)), req, nil, "request.object: not a valid Pod: "+err.Error())
	}
	resp, _ := h.decide(ctx, log, req, pod) // never released: the response's patch stays valid
	return resp
}

// decide wires pod, a pod being created, and answers its request. The response's patch is the
// outcome's: valid until the outcome is released.
func (h *Handler) decide(ctx context.Context, log reqLog, req *admissionv1.AdmissionRequest, pod *corev1.Pod) (*admissionv1.AdmissionResponse, inject.Outcome) {
	log = log.with("pod", podNameOf(pod))
	out, err := inject.Pod(h.run, pod, req.Namespace)
	return h.answer(ctx, log, req, pod, out, err), out
}

// answer is decide's response to the outcome of wiring pod.
func (h *Handler) answer(ctx context.Context, log reqLog, req *admissionv1.AdmissionRequest, pod *corev1.Pod, out inject.Outcome, err error) *admissionv1.AdmissionResponse {
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
		// An opted-out pod asked for it; a gateway awaiting Istio is wired on reinvocation; istiod is
		// never wired.
		if res.Skipped != annotations.SkipOptOut && res.Skipped != annotations.SkipAwaitingIstio && res.Skipped != annotations.SkipIstioControlPlane {
			h.event(req, pod, corev1.EventTypeNormal, EventSkipped, "spire-mesh-injector left the pod without SPIRE identity: "+string(res.Skipped))
		}
	case len(ops) == 0:
		h.metrics.admissions.WithLabelValues(ResultUnchanged, string(res.Mode)).Inc()
		log.debug("already wired", "decision", ResultUnchanged, "mode", res.Mode)
		return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	}
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	for _, w := range res.Warnings {
		resp.Warnings = append(resp.Warnings, mutators.WarningPrefix+w)
	}
	if len(ops) > 0 {
		pt := admissionv1.PatchTypeJSONPatch
		resp.Patch, resp.PatchType = out.Patch, &pt
		h.metrics.patchBytes.Observe(float64(len(out.Patch)))
	}
	if res.Skipped != "" {
		return resp
	}
	dryRun := req.DryRun != nil && *req.DryRun
	if h.registrar != nil && !dryRun {
		rctx, cancel := context.WithTimeout(ctx, RegistrationTimeout)
		warnings, err := h.registrar.Ensure(rctx, req.Namespace, out.Pod)
		cancel()
		for _, w := range warnings {
			resp.Warnings = append(resp.Warnings, truncate(mutators.WarningPrefix+w, mutators.MaxAdmissionWarning))
		}
		if err != nil {
			return h.registrationFailed(log, req, resp, err)
		}
	}
	h.metrics.admissions.WithLabelValues(ResultMutated, string(res.Mode)).Inc()
	log.Info("wired", "decision", ResultMutated, "mode", res.Mode, "spiffeID", res.Status.SPIFFEID,
		"registration", res.Status.Registration, "operations", len(ops), "dryRun", dryRun)
	return resp
}

// reqLog logs for one admission request: the handler's logger and the request's key-values (uid,
// namespace, pod), written into each line rather than bound with WithValues, which clones the
// logger's encoder for every request, whether it then logs or not.
type reqLog struct {
	log logr.Logger
	kv  []any
}

func (h *Handler) requestLog(req *admissionv1.AdmissionRequest) reqLog {
	return reqLog{log: h.log, kv: []any{"uid", req.UID, "namespace", req.Namespace}}
}

// with is l with more key-values.
func (l reqLog) with(kv ...any) reqLog {
	return reqLog{log: l.log, kv: append(slices.Clip(l.kv), kv...)}
}

func (l reqLog) Info(msg string, kv ...any) { l.log.Info(msg, append(slices.Clip(l.kv), kv...)...) }

func (l reqLog) Error(err error, msg string, kv ...any) {
	l.log.Error(err, msg, append(slices.Clip(l.kv), kv...)...)
}

// debug logs at verbosity 1.
func (l reqLog) debug(msg string, kv ...any) {
	if v := l.log.V(1); v.Enabled() {
		v.Info(msg, append(slices.Clip(l.kv), kv...)...)
	}
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
