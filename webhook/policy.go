package webhook

import (
	"errors"
	"fmt"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
)

// The decision policy: how a denial, an internal fault and a failed registration are answered.

// registrationFailed applies the failure policy when the pod is wired but its namespace's
// ClusterSPIFFEID could not be ensured: Fail denies the pod; Ignore admits it wired, with a
// warning, so it gets its identity as soon as the reconciler repairs the registration.
func (h *Handler) registrationFailed(log reqLog, req *admissionv1.AdmissionRequest, wired *admissionv1.AdmissionResponse, err error) *admissionv1.AdmissionResponse {
	warning := "no SPIRE identity until the registration is repaired: " + err.Error()
	// A warning is cut at 120 characters: lead with the cause, not the object's name.
	var ee *registration.EnsureError
	if errors.As(err, &ee) {
		warning = fmt.Sprintf("no SPIRE identity until the registration is repaired (%s): %v", ee.Reason, ee.Err)
	}
	return h.applyPolicy(log, req, "registration-failed", wired, err, warning)
}

// deny refuses a pod for a reason its author can fix. allowed:false rejects whatever the
// webhook's failurePolicy says.
func (h *Handler) deny(log reqLog, req *admissionv1.AdmissionRequest, pod *corev1.Pod, msg string) *admissionv1.AdmissionResponse {
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
func (h *Handler) internal(log reqLog, req *admissionv1.AdmissionRequest, err error) *admissionv1.AdmissionResponse {
	return h.applyPolicy(log, req, "internal-error", &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}, err,
		"internal error, pod has no SPIRE identity: "+err.Error())
}

// applyPolicy answers a fault that is not the pod author's as the configured failure policy says:
// Fail denies the pod with the cause; Ignore admits `admitted` with a warning kubectl shows.
func (h *Handler) applyPolicy(log reqLog, req *admissionv1.AdmissionRequest, reason string, admitted *admissionv1.AdmissionResponse, err error, warning string) *admissionv1.AdmissionResponse {
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
	admitted.Warnings = append(admitted.Warnings, truncate(mutators.WarningPrefix+warning, mutators.MaxAdmissionWarning))
	return admitted
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
