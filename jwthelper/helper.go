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
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sync/errgroup"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
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
		errs = append(errs, errors.New("--socket (or SPIFFE_ENDPOINT_SOCKET): required, e.g. unix:///spiffe-workload-api/spire-agent.sock"))
	} else if _, err := workloadapi.TargetFromAddress(o.SocketAddr); err != nil {
		errs = append(errs, fmt.Errorf("--socket %q: %v; allowed: unix:///path or tcp://ip:port", o.SocketAddr, err))
	}
	if len(o.Audiences) == 0 {
		errs = append(errs, errors.New("--audience: at least one is required"))
	} else if _, err := annotations.ParseAudiences(strings.Join(o.Audiences, ","), 32); err != nil {
		errs = append(errs, fmt.Errorf("--audience: %v", err))
	} else if err := annotations.CheckTokenFiles(o.Audiences); err != nil {
		errs = append(errs, fmt.Errorf("--audience: %v", err))
	}
	if o.OutputDir == "" || !filepath.IsAbs(o.OutputDir) {
		errs = append(errs, fmt.Errorf("--output-dir %q: must be an absolute path", o.OutputDir))
	}
	if o.FileMode&^0o666 != 0 || o.FileMode&0o400 == 0 {
		errs = append(errs, fmt.Errorf("--file-mode %#o: must be readable by the owner, without execute or special bits", o.FileMode))
	}
	if o.ExtAuthzAddr != "" {
		found := false
		for _, a := range o.Audiences {
			found = found || a == o.ExtAuthzAudience
		}
		if !found {
			errs = append(errs, fmt.Errorf("--ext-authz-audience %q: must be one of the --audience values %q", o.ExtAuthzAudience, o.Audiences))
		}
	}
	if o.MinBackoff <= 0 || o.MaxBackoff < o.MinBackoff {
		errs = append(errs, fmt.Errorf("--min-backoff %s, --max-backoff %s: need 0 < min <= max", o.MinBackoff, o.MaxBackoff))
	}
	return errors.Join(errs...)
}

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

	mu     sync.RWMutex
	tokens map[string]token
	td     spiffeid.TrustDomain

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
	h := &Helper{opts: o, log: o.Log, now: time.Now, tokens: map[string]token{}}
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
		return fmt.Errorf("--output-dir: %w", err)
	}
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(h.opts.SocketAddr))
	if err != nil {
		return fmt.Errorf("Workload API client for %s: %w", h.opts.SocketAddr, err)
	}
	defer client.Close()

	g, ctx := errgroup.WithContext(ctx)
	healthLn, err := net.Listen("tcp", h.opts.HealthAddr)
	if err != nil {
		return fmt.Errorf("--health-addr: %w", err)
	}
	healthSrv := &http.Server{Handler: h.healthMux(), ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error { return serveUntil(ctx, healthSrv, healthLn) })
	if h.opts.ExtAuthzAddr != "" {
		ln, err := net.Listen("tcp", h.opts.ExtAuthzAddr)
		if err != nil {
			return fmt.Errorf("--ext-authz-addr: %w", err)
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
	for _, a := range h.opts.Audiences {
		g.Go(func() error {
			h.alive.Add(1)
			defer h.alive.Add(-1)
			h.refreshLoop(ctx, client, a)
			return nil
		})
	}
	h.log.Info("started", "audiences", h.opts.Audiences, "outputDir", h.opts.OutputDir, "socket", h.opts.SocketAddr, "extAuthz", h.opts.ExtAuthzAddr)
	return g.Wait()
}

// refreshLoop keeps the token of one audience fresh: fetched at half its lifetime, retried with
// jittered exponential backoff, and removed from disk once it is no longer usable.
func (h *Helper) refreshLoop(ctx context.Context, client *workloadapi.Client, audience string) {
	backoff := h.opts.MinBackoff
	for {
		var wait time.Duration
		svid, err := h.fetch(ctx, client, audience)
		if err == nil {
			err = h.store(audience, svid)
		}
		now := h.now()
		if err == nil {
			backoff = h.opts.MinBackoff
			wait = svid.Expiry.Sub(now) / 2
		} else {
			if ctx.Err() != nil {
				return
			}
			h.metrics.fetchErrors.WithLabelValues(audience).Inc()
			h.log.Warn("fetching JWT-SVID failed; keeping the last valid token", "audience", audience, "error", err, "retryIn", backoff)
			wait = backoff + time.Duration(rand.Int64N(int64(backoff)/5+1))
			backoff = min(backoff*2, h.opts.MaxBackoff)
		}
		// Wake up in time to withdraw a token that is about to become unusable.
		if t, ok := h.current(audience); ok && t.usable.After(now) && t.usable.Sub(now) < wait {
			wait = t.usable.Sub(now)
		}
		wait = max(wait, 100*time.Millisecond)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		h.expire(audience)
	}
}

func (h *Helper) fetch(ctx context.Context, client *workloadapi.Client, audience string) (*jwtsvid.SVID, error) {
	ctx, cancel := context.WithTimeout(ctx, h.opts.FetchTimeout)
	defer cancel()
	return client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
}

// store writes a new token and makes it current.
func (h *Helper) store(audience string, svid *jwtsvid.SVID) error {
	now := h.now()
	if !svid.Expiry.After(now) {
		return fmt.Errorf("the Workload API returned an expired JWT-SVID (exp %s)", svid.Expiry.Format(time.RFC3339))
	}
	if err := writeAtomic(filepath.Join(h.opts.OutputDir, annotations.TokenFileName(audience)), []byte(svid.Marshal()), h.opts.FileMode); err != nil {
		return err
	}
	lifetime := svid.Expiry.Sub(now)
	margin := min(lifetime/10, 30*time.Second)
	h.mu.Lock()
	h.tokens[audience] = token{value: svid.Marshal(), expiry: svid.Expiry, usable: svid.Expiry.Add(-margin)}
	newTD := h.td.IsZero()
	h.td = svid.ID.TrustDomain()
	h.mu.Unlock()
	h.metrics.lastRefresh.WithLabelValues(audience).Set(float64(now.Unix()))
	if newTD {
		h.writeBundle()
	}
	h.log.Info("JWT-SVID refreshed", "audience", audience, "spiffeID", svid.ID.String(), "expiry", svid.Expiry.Format(time.RFC3339))
	return nil
}

func (h *Helper) current(audience string) (token, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	t, ok := h.tokens[audience]
	return t, ok
}

// expire removes the token of audience from disk once it is no longer usable: readers find no
// token rather than an expired one.
func (h *Helper) expire(audience string) {
	h.mu.Lock()
	t, ok := h.tokens[audience]
	if !ok || h.now().Before(t.usable) {
		h.mu.Unlock()
		return
	}
	delete(h.tokens, audience)
	h.mu.Unlock()
	err := os.Remove(filepath.Join(h.opts.OutputDir, annotations.TokenFileName(audience)))
	h.log.Error("JWT-SVID expired before it could be refreshed; token withdrawn", "audience", audience, "expiry", t.expiry.Format(time.RFC3339), "removeError", err)
}

// bundleWatcher receives JWT bundle updates from the Workload API.
type bundleWatcher struct{ h *Helper }

func (w bundleWatcher) OnJWTBundlesUpdate(set *jwtbundle.Set) {
	w.h.bundles.Store(set)
	w.h.metrics.bundleUpdates.Inc()
	w.h.writeBundle()
}

func (w bundleWatcher) OnJWTBundlesWatchError(err error) {
	if !errors.Is(err, context.Canceled) {
		w.h.log.Warn("watching JWT bundles", "error", err)
	}
}

// writeBundle writes the JWKS of the tokens' trust domain, once both are known.
func (h *Helper) writeBundle() {
	set := h.bundles.Load()
	h.mu.RLock()
	td := h.td
	h.mu.RUnlock()
	if set == nil || td.IsZero() {
		return
	}
	b, ok := set.Get(td)
	if !ok {
		return
	}
	jwks, err := b.Marshal()
	if err == nil {
		err = writeAtomic(filepath.Join(h.opts.OutputDir, annotations.BundleFileName), jwks, h.opts.FileMode)
	}
	if err != nil {
		h.log.Error("writing the JWT bundle", "error", err)
	}
}

// writeAtomic replaces path with data: written to a temporary file in the same folder, synced,
// then renamed over path, so a reader sees the old file or the new one, never a partial one.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

func (h *Helper) healthMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !h.Ready() {
			http.Error(w, "not every JWT-SVID is written and valid", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if int(h.alive.Load()) != len(h.opts.Audiences) {
			http.Error(w, "a refresh loop stopped", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(h.opts.Registry, promhttp.HandlerOpts{}))
	return mux
}

func serveUntil(ctx context.Context, srv *http.Server, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
