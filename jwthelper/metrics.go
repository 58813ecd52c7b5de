package jwthelper

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	fetchErrors   *prometheus.CounterVec
	lastRefresh   *prometheus.GaugeVec
	bundleUpdates prometheus.Counter
	extAuthz      *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry, h *Helper) *metrics {
	m := &metrics{
		fetchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spiffe_jwt_helper_fetch_errors_total",
			Help: "Failed JWT-SVID fetches from the Workload API, by audience.",
		}, []string{"audience"}),
		lastRefresh: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "spiffe_jwt_helper_last_refresh_timestamp_seconds",
			Help: "Unix time of the last successful JWT-SVID refresh, by audience.",
		}, []string{"audience"}),
		bundleUpdates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "spiffe_jwt_helper_bundle_updates_total",
			Help: "JWT bundle updates received from the Workload API.",
		}),
		extAuthz: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "spiffe_jwt_helper_ext_authz_checks_total",
			Help: "ext_authz checks, by result: injected, kept-existing (the request had an Authorization header), no-token (refused).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.fetchErrors, m.lastRefresh, m.bundleUpdates, m.extAuthz)
	for _, a := range h.opts.Audiences {
		m.fetchErrors.WithLabelValues(a)
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "spiffe_jwt_helper_token_expiry_seconds",
			Help:        "Seconds until the current JWT-SVID of the audience expires; 0 when there is none.",
			ConstLabels: prometheus.Labels{"audience": a},
		}, func() float64 {
			t, ok := h.current(a)
			if !ok {
				return 0
			}
			return max(0, t.expiry.Sub(h.now()).Seconds())
		}))
	}
	return m
}
