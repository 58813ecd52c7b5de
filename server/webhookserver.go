package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
)

// Limits bound what one client can take from the webhook's listener. The API server sends small
// requests and reads the answer at once; anything slower or bigger is not the API server.
type Limits struct {
	// ReadHeaderTimeout, ReadTimeout and WriteTimeout bound one request: a client trickling its
	// headers or body (slowloris) is cut off.
	ReadHeaderTimeout, ReadTimeout, WriteTimeout time.Duration
	// IdleTimeout closes kept-alive connections that stay unused.
	IdleTimeout time.Duration
	// MaxConnections caps simultaneous connections: at the cap, a new connection takes the place
	// of an idle one, or is refused at once if every connection is busy (connGuard).
	MaxConnections int
	// MaxConnectionsPerClient is one client's (remote IP's) share of MaxConnections.
	MaxConnectionsPerClient int
	// MaxHeaderBytes bounds request headers (bodies are bounded by webhook.MaxRequestBytes).
	MaxHeaderBytes int
}

// DefaultLimits fit the API server: requests of at most a few MB, sent at once and answered within
// the webhook's 5 s timeout. An idle connection is closed after 2 s, well within that timeout, so
// idle clients hold nothing for long; the API server opens a new connection when it needs one.
// A quarter of the connections per client leaves room for the API server (a few addresses: its
// replicas, or the konnectivity agents of a hosted control plane) beside anyone else.
var DefaultLimits = Limits{
	ReadHeaderTimeout:       3 * time.Second,
	ReadTimeout:             10 * time.Second,
	WriteTimeout:            10 * time.Second,
	IdleTimeout:             2 * time.Second,
	MaxConnections:          512,
	MaxConnectionsPerClient: 128,
	MaxHeaderBytes:          64 << 10,
}

// hookServer is the webhook's HTTPS server: controller-runtime's webhook.Server interface (so
// the manager runs it on every replica), with the serving certificate reloaded as it rotates, and
// with request limits controller-runtime's default server does not set.
type hookServer struct {
	host    string
	port    int
	certDir string
	// clientCAFile, when set, holds the CA bundle that signs the API server's client certificate:
	// clients without a certificate it verifies are refused in the handshake.
	clientCAFile string
	tlsOpts      []func(*tls.Config)
	limits       Limits
	metrics      *connMetrics
	mux          *http.ServeMux

	mu      sync.Mutex
	serving bool
	tlsCfg  *tls.Config
}

var _ ctrlwebhook.Server = (*hookServer)(nil)

func newHookServer(host string, port int, certDir, clientCAFile string, tlsOpts []func(*tls.Config), limits Limits, reg prometheus.Registerer) *hookServer {
	return &hookServer{host: host, port: port, certDir: certDir, clientCAFile: clientCAFile, tlsOpts: tlsOpts, limits: limits, metrics: newConnMetrics(reg), mux: http.NewServeMux()}
}

func (s *hookServer) NeedLeaderElection() bool             { return false }
func (s *hookServer) Register(path string, h http.Handler) { s.mux.Handle(path, h) }
func (s *hookServer) WebhookMux() *http.ServeMux           { return s.mux }

// Start serves until ctx ends, then lets in-flight requests finish (up to 30 s).
func (s *hookServer) Start(ctx context.Context) error {
	watcher, err := certwatcher.New(filepath.Join(s.certDir, "tls.crt"), filepath.Join(s.certDir, "tls.key"))
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	go func() { _ = watcher.Start(ctx) }()
	cfg := &tls.Config{GetCertificate: watcher.GetCertificate}
	for _, o := range s.tlsOpts {
		o(cfg)
	}
	// The readiness handshake checks the serving side only.
	checkCfg := cfg.Clone()
	if s.clientCAFile != "" {
		cas := &caFile{path: s.clientCAFile}
		if _, err := cas.pool(); err != nil {
			return fmt.Errorf("--client-ca-file: %w", err)
		}
		base := cfg
		cfg = cfg.Clone()
		cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			pool, err := cas.pool()
			if err != nil {
				return nil, err
			}
			c := base.Clone()
			c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, pool
			return c, nil
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(s.host, strconv.Itoa(s.port)))
	if err != nil {
		return err
	}
	guard := newConnGuard(ln, s.limits.MaxConnections, s.limits.MaxConnectionsPerClient, s.metrics)
	ln = tls.NewListener(guard, cfg)
	srv := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: s.limits.ReadHeaderTimeout,
		ReadTimeout:       s.limits.ReadTimeout,
		WriteTimeout:      s.limits.WriteTimeout,
		IdleTimeout:       s.limits.IdleTimeout,
		MaxHeaderBytes:    s.limits.MaxHeaderBytes,
		ConnState:         guard.connState,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	s.setServing(checkCfg)
	err = srv.Serve(ln)
	s.setServing(nil)
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	<-done
	return nil
}

func (s *hookServer) setServing(cfg *tls.Config) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.serving, s.tlsCfg = cfg != nil, cfg
}

// StartedChecker reports ready while the listener serves and a TLS handshake with its current
// configuration (the serving certificate included) succeeds. The handshake runs in memory, not
// through the listener: a readiness check that needs a connection slot would fail exactly when
// other clients hold them all, and take the replica out of the API server's endpoints then.
func (s *hookServer) StartedChecker() healthz.Checker {
	return func(*http.Request) error {
		s.mu.Lock()
		serving, cfg := s.serving, s.tlsCfg
		s.mu.Unlock()
		if !serving {
			return errors.New("webhook server is not serving")
		}
		return handshake(cfg)
	}
}

// handshake runs a TLS handshake between cfg's server side and a client over an in-memory pipe.
func handshake(cfg *tls.Config) error {
	srvEnd, cliEnd := net.Pipe()
	defer srvEnd.Close()
	defer cliEnd.Close()
	deadline := time.Now().Add(5 * time.Second)
	_ = srvEnd.SetDeadline(deadline)
	_ = cliEnd.SetDeadline(deadline)
	srvErr := make(chan error, 1)
	go func() { srvErr <- tls.Server(srvEnd, cfg).Handshake() }()
	cli := tls.Client(cliEnd, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // checks that the server side can handshake; no data
	if err := cli.Handshake(); err != nil {
		return fmt.Errorf("webhook server cannot complete a TLS handshake: %w", err)
	}
	if err := <-srvErr; err != nil {
		return fmt.Errorf("webhook server cannot complete a TLS handshake: %w", err)
	}
	return nil
}

// caFile is a PEM CA bundle read again whenever the file changes, so the CA can rotate without a
// restart.
type caFile struct {
	path string

	mu    sync.Mutex
	mtime time.Time
	size  int64
	cache *x509.CertPool
}

func (c *caFile) pool() (*x509.CertPool, error) {
	st, err := os.Stat(c.path)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cache != nil && st.ModTime().Equal(c.mtime) && st.Size() == c.size {
		return c.cache, nil
	}
	b, err := os.ReadFile(c.path)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", c.path)
	}
	c.cache, c.mtime, c.size = p, st.ModTime(), st.Size()
	return p, nil
}
