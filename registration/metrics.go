package registration

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spire-mesh-injector/spire-mesh-injector/promutil"
)

// Metrics count what registration does.
type Metrics struct {
	ensures    *prometheus.CounterVec
	reconciles *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ensures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spire_mesh_injector_registration_ensures_total",
			Help: "ClusterSPIFFEID ensures at admission, by result (exists, created, error) and, for errors, reason (CRDMissing, Forbidden, Conflict, InvalidNamespaceAnnotation, APIError).",
		}, []string{"result", "reason"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spire_mesh_injector_registration_reconciles_total",
			Help: "Namespace registration reconciles, by result (unchanged, created, updated, deleted, skipped, error) and, for errors and skips, reason.",
		}, []string{"result", "reason"}),
	}
	m.ensures = promutil.Register(reg, m.ensures)
	m.reconciles = promutil.Register(reg, m.reconciles)
	return m
}
