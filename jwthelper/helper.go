// Package jwthelper is the JWT-SVID helper sidecar that spire-mesh-injector adds to pods annotated
// with spiffe.io/audience. It fetches one JWT-SVID per audience from the SPIFFE Workload API and
// keeps each, written atomically, in a shared in-memory directory, with the JWT bundle (JWKS)
// beside them; refreshes each token at half its lifetime, backing off on errors; keeps serving the
// last valid token while the agent is briefly unavailable, and never an expired one. It reports
// readiness once every token is written, liveness, and Prometheus metrics, and optionally serves
// Envoy's ext_authz API to add the token to outbound requests.
package jwthelper

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sync/errgroup"

	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

// token is the current JWT-SVID of one audience.
type token struct {
	value  string
	expiry time.Time
	usable time.Time // written tokens are removed at this time, a margin before expiry
}

// Helper keeps the tokens of its audiences fresh. Create it with New, then Run it.
type Helper struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics
	now     func() time.Time

	mu          sync.RWMutex
	tokens      map[string]token
	withdrawals map[string]*time.Timer // each token's withdrawal at its usable time
	td          spiffeid.TrustDomain
	// files serializes, per audience, writing a token file with withdrawing it.
	files map[string]*sync.Mutex

	bundles atomic.Pointer[jwtbundle.Set]
	alive   atomic.Int32 // refresh loops running
}

// New returns a helper for validated options.
func New(o Options) (*Helper, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.FetchTimeout == 0 {
		o.FetchTimeout = 10 * time.Second
	}
	h := &Helper{opts: o, log: o.Log, now: time.Now, tokens: map[string]token{}, withdrawals: map[string]*time.Timer{}, files: map[string]*sync.Mutex{}}
	for _, a := range o.Audiences {
		h.files[a] = &sync.Mutex{}
	}
	h.metrics = newMetrics(o.Registry, h)
	return h, nil
}

// Ready reports whether every audience has a usable token on disk.
func (h *Helper) Ready() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	now := h.now()
	for _, a := range h.opts.Audiences {
		t, ok := h.tokens[a]
		if !ok || !now.Before(t.usable) {
			return false
		}
	}
	return true
}

// Token returns the usable token of audience, if any.
func (h *Helper) Token(audience string) (string, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	t, ok := h.tokens[audience]
	if !ok || !h.now().Before(t.usable) {
		return "", false
	}
	return t.value, true
}

// Run fetches and refreshes tokens, serves health and metrics (and ext_authz when configured)
// until ctx ends.
func (h *Helper) Run(ctx context.Context) error {
	if err := os.MkdirAll(h.opts.OutputDir, 0o755); err != nil {
		return fmt.Errorf("--%s: %w", contract.FlagOutputDir, err)
	}
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(h.opts.SocketAddr))
	if err != nil {
		return fmt.Errorf("the Workload API client for %s: %w", h.opts.SocketAddr, err)
	}
	defer client.Close()

	g, ctx := errgroup.WithContext(ctx)
	healthLn, err := net.Listen("tcp", h.opts.HealthAddr)
	if err != nil {
		return fmt.Errorf("--%s: %w", contract.FlagHealthAddr, err)
	}
	healthSrv := &http.Server{Handler: h.healthMux(), ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error { return serveUntil(ctx, healthSrv, healthLn) })
	if h.opts.ExtAuthzAddr != "" {
		ln, err := net.Listen("tcp", h.opts.ExtAuthzAddr)
		if err != nil {
			return fmt.Errorf("--%s: %w", contract.FlagExtAuthzAddr, err)
		}
		srv := h.extAuthzServer()
		g.Go(func() error {
			go func() { <-ctx.Done(); srv.GracefulStop() }()
			return srv.Serve(ln)
		})
	}
	g.Go(func() error {
		// Reconnects with backoff by itself until ctx ends.
		err := client.WatchJWTBundles(ctx, bundleWatcher{h})
		if ctx.Err() != nil {
			return nil
		}
		return err
	})
	fetch := func(ctx context.Context, audience string) (*jwtsvid.SVID, error) {
		return client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	}
	for _, a := range h.opts.Audiences {
		g.Go(func() error {
			h.alive.Add(1)
			defer h.alive.Add(-1)
			h.refreshLoop(ctx, fetch, a)
			return nil
		})
	}
	h.log.Info("started", "audiences", h.opts.Audiences, "outputDir", h.opts.OutputDir, "socket", h.opts.SocketAddr, "extAuthz", h.opts.ExtAuthzAddr)
	return g.Wait()
}
