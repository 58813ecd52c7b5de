package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/netutil"
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
	// MaxConnections caps simultaneous connections; more wait in the listen backlog.
	MaxConnections int
	// MaxHeaderBytes bounds request headers (bodies are bounded by webhook.MaxRequestBytes).
	MaxHeaderBytes int
}

// DefaultLimits fit the API server: requests of at most a few MB, answered within the webhook's
// 5 s timeout.
var DefaultLimits = Limits{
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       10 * time.Second,
	WriteTimeout:      10 * time.Second,
	IdleTimeout:       60 * time.Second,
	MaxConnections:    1024,
	MaxHeaderBytes:    64 << 10,
}

// hookServer is the webhook's HTTPS server: controller-runtime's webhook.Server interface (so
// the manager runs it on every replica), with the serving certificate reloaded as it rotates, and
// with request limits controller-runtime's default server does not set.
type hookServer struct {
	host    string
	port    int
	certDir string
	tlsOpts []func(*tls.Config)
	limits  Limits
	mux     *http.ServeMux

	mu      sync.Mutex
	started bool
}

var _ ctrlwebhook.Server = (*hookServer)(nil)

func newHookServer(host string, port int, certDir string, tlsOpts []func(*tls.Config), limits Limits) *hookServer {
	return &hookServer{host: host, port: port, certDir: certDir, tlsOpts: tlsOpts, limits: limits, mux: http.NewServeMux()}
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
	ln, err := net.Listen("tcp", net.JoinHostPort(s.host, strconv.Itoa(s.port)))
	if err != nil {
		return err
	}
	ln = tls.NewListener(netutil.LimitListener(ln, s.limits.MaxConnections), cfg)
	srv := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: s.limits.ReadHeaderTimeout,
		ReadTimeout:       s.limits.ReadTimeout,
		WriteTimeout:      s.limits.WriteTimeout,
		IdleTimeout:       s.limits.IdleTimeout,
		MaxHeaderBytes:    s.limits.MaxHeaderBytes,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	s.mu.Lock()
	s.started = true
	s.mu.Unlock()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	<-done
	return nil
}

// StartedChecker reports ready once the TLS listener completes a handshake.
func (s *hookServer) StartedChecker() healthz.Checker {
	return func(*http.Request) error {
		s.mu.Lock()
		started := s.started
		s.mu.Unlock()
		if !started {
			return errors.New("webhook server has not been started yet")
		}
		d := &net.Dialer{Timeout: 5 * time.Second}
		conn, err := tls.DialWithDialer(d, "tcp", net.JoinHostPort(s.host, strconv.Itoa(s.port)), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // a liveness handshake, no data
		if err != nil {
			return fmt.Errorf("webhook server is not reachable: %w", err)
		}
		return conn.Close()
	}
}
