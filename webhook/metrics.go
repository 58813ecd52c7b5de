package webhook

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spire-mesh-injector/spire-mesh-injector/promutil"
)

// Result label values of the admissions metric.
const (
	ResultMutated   = "mutated"   // wired, with a patch
	ResultUnchanged = "unchanged" // wired already: nothing to change
	ResultSkipped   = "skipped"   // left alone; reason says why
	ResultDenied    = "denied"    // refused: a mistake in the pod, or an internal fault under failurePolicy Fail
	ResultError     = "error"     // internal fault admitted unchanged under failurePolicy Ignore
)

// Metrics are the admission server's Prometheus metrics.
type Metrics struct {
	admissions *prometheus.CounterVec
	refused    *prometheus.CounterVec
	events     *prometheus.CounterVec
	duration   prometheus.Histogram
	patchBytes prometheus.Histogram
}

// NewMetrics creates the metrics and registers them with reg (controller-runtime's registry in
// the server, a fresh registry in tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spire_mesh_injector_admissions_total",
			Help: "Admission reviews answered, by result (mutated, unchanged, skipped, denied, error) and reason (wiring mode, skip reason, or cause). Requests refused before a review could be read are not counted here.",
		}, []string{"result", "reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spire_mesh_injector_requests_refused_total",
			Help: "Requests to the admission endpoint refused before a review could be answered, by reason (method, content-type, too-large, shed, unreadable-body, not-a-review). The API server applies the failurePolicy to them.",
		}, []string{"reason"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spire_mesh_injector_events_dropped_total",
			Help: "Events the admission handler did not record, by reason: out-of-scope (the namespace is not opted in), rate-limited.",
		}, []string{"reason"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "spire_mesh_injector_admission_duration_seconds",
			Help:    "Time from receiving an admission request to writing its response, every outcome included (HTTP errors too).",
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1},
		}),
		patchBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "spire_mesh_injector_patch_bytes",
			Help:    "Size of the JSON patch returned for a mutated pod.",
			Buckets: prometheus.ExponentialBuckets(64, 2, 10),
		}),
	}
	m.admissions = promutil.Register(reg, m.admissions)
	m.refused = promutil.Register(reg, m.refused)
	m.events = promutil.Register(reg, m.events)
	m.duration = promutil.Register(reg, m.duration)
	m.patchBytes = promutil.Register(reg, m.patchBytes)
	return m
}
