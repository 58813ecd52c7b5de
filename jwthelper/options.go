package jwthelper

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

// Options configure the helper; the webhook sets them as flags.
type Options struct {
	// SocketAddr is the Workload API address, e.g. unix:///spiffe-workload-api/spire-agent.sock.
	SocketAddr string
	// Audiences to fetch one JWT-SVID for each.
	Audiences []string
	// OutputDir receives <audience>.jwt files and bundle.jwks.
	OutputDir string
	// FileMode of the files written.
	FileMode os.FileMode
	// HealthAddr serves /ready, /healthz and /metrics over HTTP.
	HealthAddr string
	// ExtAuthzAddr, if set, serves Envoy's ext_authz gRPC API there, adding a token for
	// ExtAuthzAudience to requests without an Authorization header.
	ExtAuthzAddr, ExtAuthzAudience string
	// MinBackoff and MaxBackoff bound the retry delay after a failed fetch.
	MinBackoff, MaxBackoff time.Duration
	// FetchTimeout bounds one fetch from the Workload API.
	FetchTimeout time.Duration
	// Log receives the helper's log.
	Log *slog.Logger
	// Registry receives the metrics (a fresh registry when nil).
	Registry *prometheus.Registry
}

// Validate checks the options, naming the flag that is wrong.
func (o *Options) Validate() error {
	var errs []error
	if o.SocketAddr == "" {
		errs = append(errs, fmt.Errorf("--%s (or %s): required, e.g. unix:///spiffe-workload-api/spire-agent.sock", contract.FlagSocket, contract.EnvEndpointSocket))
	} else if _, err := workloadapi.TargetFromAddress(o.SocketAddr); err != nil {
		errs = append(errs, fmt.Errorf("--%s %q: %v; allowed: unix:///path or tcp://ip:port", contract.FlagSocket, o.SocketAddr, err))
	}
	errs = append(errs, checkAudiences(o.Audiences)...)
	if o.OutputDir == "" || !filepath.IsAbs(o.OutputDir) {
		errs = append(errs, fmt.Errorf("--%s %q: must be an absolute path", contract.FlagOutputDir, o.OutputDir))
	}
	if o.FileMode&^0o666 != 0 || o.FileMode&0o400 == 0 {
		errs = append(errs, fmt.Errorf("--%s %#o: must be readable by the owner, without execute or special bits", contract.FlagFileMode, o.FileMode))
	}
	if o.ExtAuthzAddr != "" {
		found := false
		for _, a := range o.Audiences {
			found = found || a == o.ExtAuthzAudience
		}
		if !found {
			errs = append(errs, fmt.Errorf("--%s %q: must be one of the --%s values %q", contract.FlagExtAuthzAudience, o.ExtAuthzAudience, contract.FlagAudience, o.Audiences))
		}
	}
	if o.MinBackoff <= 0 || o.MaxBackoff < o.MinBackoff {
		errs = append(errs, fmt.Errorf("--%s %s, --%s %s: need 0 < min <= max", contract.FlagMinBackoff, o.MinBackoff, contract.FlagMaxBackoff, o.MaxBackoff))
	}
	return errors.Join(errs...)
}

// checkAudiences checks --audience values against the helper's contract: at least one, at most
// contract.MaxAudiences, each one a valid audience listed once, each with a token file of its own.
func checkAudiences(auds []string) []error {
	if len(auds) == 0 {
		return []error{fmt.Errorf("--%s: at least one is required", contract.FlagAudience)}
	}
	if len(auds) > contract.MaxAudiences {
		return []error{fmt.Errorf("--%s: %d given; allowed: at most %d", contract.FlagAudience, len(auds), contract.MaxAudiences)}
	}
	var errs []error
	seen := map[string]bool{}
	for _, a := range auds {
		if err := contract.CheckAudience(a); err != nil {
			errs = append(errs, fmt.Errorf("--%s %q %v", contract.FlagAudience, a, err))
		}
		if seen[a] {
			errs = append(errs, fmt.Errorf("--%s %q: listed twice; allowed: each audience once", contract.FlagAudience, a))
		}
		seen[a] = true
	}
	if err := contract.TokenFileCollision(auds); err != nil {
		errs = append(errs, fmt.Errorf("--%s: %v", contract.FlagAudience, err))
	}
	return errs
}
