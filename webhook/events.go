package webhook

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
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

// event records an Event, but only in a namespace the webhook serves (a review for any other
// namespace writes nothing: it may come from anyone who can reach the port, not the API server),
// at most eventBurst at once and eventsPerSecond after that per namespace, with the message (which
// quotes what the pod's author wrote) cut to maxEventMessage.
func (h *Handler) event(req *admissionv1.AdmissionRequest, pod *corev1.Pod, eventType, reason, message string) {
	if h.recorder == nil {
		return
	}
	if h.scope != nil && !h.scope.Serves(req.Namespace) {
		h.metrics.events.WithLabelValues("out-of-scope").Inc()
		return
	}
	if !h.events.allow(req.Namespace) {
		h.metrics.events.WithLabelValues("rate-limited").Inc()
		return
	}
	message = truncate(message, maxEventMessage)
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

// Event rate limits, per namespace: enough for a Deployment's worth of failing pods at once, and
// then one a second (the API server's own event correlation folds repeats on the same object).
const (
	eventsPerSecond = 1
	eventBurst      = 10
	maxEventMessage = 1024
)

// eventLimiter is a token bucket per namespace. Only namespaces the webhook serves get one, so
// their number is bounded by the opted-in namespaces.
type eventLimiter struct {
	mu      sync.Mutex
	buckets map[string]*rate.Limiter
}

func newEventLimiter() *eventLimiter { return &eventLimiter{buckets: map[string]*rate.Limiter{}} }

func (l *eventLimiter) allow(ns string) bool {
	l.mu.Lock()
	b, ok := l.buckets[ns]
	if !ok {
		b = rate.NewLimiter(eventsPerSecond, eventBurst)
		l.buckets[ns] = b
	}
	l.mu.Unlock()
	return b.Allow()
}

// sampler lets one log line a period through per key, and counts the rest.
type sampler struct {
	period time.Duration
	mu     sync.Mutex
	last   map[string]time.Time
	missed map[string]int
}

func newSampler(period time.Duration) *sampler {
	return &sampler{period: period, last: map[string]time.Time{}, missed: map[string]int{}}
}

// allow reports whether a line for key may be logged now, and how many were not logged since the
// last one.
func (s *sampler) allow(key string, now time.Time) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.last[key]) < s.period {
		s.missed[key]++
		return 0, false
	}
	n := s.missed[key]
	s.last[key], s.missed[key] = now, 0
	return n, true
}
