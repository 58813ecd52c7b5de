package server

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/spire-mesh-injector/spire-mesh-injector/promutil"
)

// registerCertificateExpiry exports the serving certificate's expiry, read from certDir at each
// scrape (so a rotated certificate shows at once). An unreadable certificate reads as 0, which the
// certificate alert treats as expired: a webhook without a usable certificate is a problem too.
func registerCertificateExpiry(reg prometheus.Registerer, certDir string) {
	path := filepath.Join(certDir, "tls.crt")
	promutil.Register[prometheus.GaugeFunc](reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "spire_mesh_injector_serving_certificate_expiry_timestamp_seconds",
		Help: "Unix time at which the webhook's serving certificate (tls.crt in --cert-dir) expires; 0 when it cannot be read.",
	}, func() float64 { return certificateExpiry(path) }))
}

func certificateExpiry(path string) float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return 0
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return 0
	}
	return float64(cert.NotAfter.Unix())
}

// registerConfigInfo exports which configuration this replica runs. Configuration is not reloaded
// in place: a changed ConfigMap gets a new name (kustomize's content hash) and the Deployment rolls,
// so during a rollout the replicas' config_version labels show the old and the new side by side.
func registerConfigInfo(reg prometheus.Registerer, version, trustDomain, className, failurePolicy string) {
	g := promutil.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "spire_mesh_injector_config_info",
		Help: "The configuration this replica runs: its version (status annotations carry the same), trust domain, className and failure policy. Always 1.",
	}, []string{"config_version", "trust_domain", "class_name", "failure_policy"}))
	g.Reset()
	g.WithLabelValues(version, trustDomain, className, failurePolicy).Set(1)
}
