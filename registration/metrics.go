package registration

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/spire-mesh-injector/spire-mesh-injector/promutil"
)

// Metrics count what registration does.
type Metrics struct {
	ensures            *prometheus.CounterVec
	reconciles         *prometheus.CounterVec
	federationHeldBack prometheus.Counter
	masked             prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ensures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spire_mesh_injector_registration_ensures_total",
			Help: "ClusterSPIFFEID ensures at admission, by result (exists, created, skipped, error) and, for skips and errors, reason (NamespaceNotOptedIn; CRDMissing, Forbidden, Conflict, InvalidNamespaceAnnotation, APIError).",
		}, []string{"result", "reason"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spire_mesh_injector_registration_reconciles_total",
			Help: "Namespace registration reconciles, by result (unchanged, created, updated, deleted, skipped, error) and, for errors and skips, reason.",
		}, []string{"result", "reason"}),
		federationHeldBack: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spire_mesh_injector_registration_federation_held_back_total",
			Help: "Admissions whose namespace asks to federate with a trust domain no ClusterFederatedTrustDomain of the class names yet: the registration leaves it out until one does.",
		}),
		masked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spire_mesh_injector_registration_masked_total",
			Help: "Admissions of a pod to which another, older registration of the class gives the same SPIFFE ID with another spec: spire-controller-manager keeps that registration's entry, not ours.",
		}),
	}
	m.ensures = promutil.Register(reg, m.ensures)
	m.reconciles = promutil.Register(reg, m.reconciles)
	m.federationHeldBack = promutil.Register(reg, m.federationHeldBack)
	m.masked = promutil.Register(reg, m.masked)
	return m
}
