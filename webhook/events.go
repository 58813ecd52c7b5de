package webhook

import (
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/record"
)

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
