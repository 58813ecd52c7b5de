package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	ctrlwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/version"
	"github.com/spire-mesh-injector/spire-mesh-injector/webhook"
)

// serveOptions are serve's command-line flags.
type serveOptions struct {
	configPath    string
	port          int
	certDir       string
	healthAddr    string
	metricsAddr   string
	shutdownDelay time.Duration
	zap           zap.Options
}

func runServe(args []string, stderr io.Writer) error {
	var o serveOptions
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.configPath, "config", "", "configuration file (default: the built-in configuration, ZTWIM on OpenShift)")
	fs.IntVar(&o.port, "port", 9443, "HTTPS port of the admission webhook ("+webhook.Path+")")
	fs.StringVar(&o.certDir, "cert-dir", "/tls", "directory holding the serving certificate tls.crt and key tls.key; reloaded when they change")
	fs.StringVar(&o.healthAddr, "health-addr", ":8081", "HTTP address of /healthz and /readyz for the kubelet's probes")
	fs.StringVar(&o.metricsAddr, "metrics-addr", ":8443", "HTTPS address of /metrics (same certificate); 0 disables it")
	fs.DurationVar(&o.shutdownDelay, "shutdown-delay", 5*time.Second, "on SIGTERM, report not ready for this long before closing the listener, so the API server stops sending requests first")
	o.zap.Development = false
	o.zap.BindFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(o.configPath)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return serve(ctx, cfg, o, stderr)
}

// serve runs the webhook, metrics and health servers until ctx ends, then shuts down gracefully:
// readiness turns false first, the webhook listener closes after shutdownDelay, and in-flight
// admissions finish.
func serve(ctx context.Context, cfg *config.Config, o serveOptions, stderr io.Writer) error {
	o.zap.DestWriter = stderr
	log := zap.New(zap.UseFlagOptions(&o.zap)).WithName("spire-mesh-injector")
	log.Info("starting", "version", version.Version, "commit", version.Commit, "configVersion", cfg.Version(),
		"trustDomain", cfg.TrustDomain, "className", cfg.Registration.ClassName, "failurePolicy", cfg.FailurePolicy)

	handler := webhook.NewHandler(mutators.NewChain(cfg), log.WithName("admission"), webhook.NewMetrics(ctrlmetrics.Registry))
	tlsOpts := []func(*tls.Config){func(c *tls.Config) {
		c.MinVersion = tls.VersionTLS12
		// HTTP/2 stays off: its stream-reset floods (CVE-2023-44487) are cheaper to avoid than to
		// bound, and the API server speaks HTTP/1.1 to webhooks just as well.
		c.NextProtos = []string{"http/1.1"}
	}}
	hookSrv := ctrlwebhook.NewServer(ctrlwebhook.Options{
		Port: o.port, CertDir: o.certDir, CertName: "tls.crt", KeyName: "tls.key", TLSOpts: tlsOpts,
	})
	hookSrv.Register(webhook.Path, handler)

	var shuttingDown atomic.Bool
	ready := healthz.Handler{Checks: map[string]healthz.Checker{
		"webhook": hookSrv.StartedChecker(),
		"shutdown": func(*http.Request) error {
			if shuttingDown.Load() {
				return errors.New("shutting down")
			}
			return nil
		},
	}}
	mux := http.NewServeMux()
	mux.Handle("/healthz", http.StripPrefix("/healthz", &healthz.Handler{Checks: map[string]healthz.Checker{"ping": healthz.Ping}}))
	mux.Handle("/readyz", http.StripPrefix("/readyz", &ready))
	mux.Handle("/readyz/", http.StripPrefix("/readyz", &ready))
	healthSrv := &http.Server{Addr: o.healthAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	healthLn, err := net.Listen("tcp", o.healthAddr)
	if err != nil {
		return fmt.Errorf("health address: %w", err)
	}

	// The webhook listener outlives ctx by shutdownDelay.
	hookCtx, hookCancel := context.WithCancel(context.Background())
	defer hookCancel()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		<-gctx.Done()
		shuttingDown.Store(true)
		log.Info("shutting down: not ready", "delay", o.shutdownDelay)
		select {
		case <-time.After(o.shutdownDelay):
		case <-hookCtx.Done():
		}
		hookCancel()
		return nil
	})
	g.Go(func() error {
		err := hookSrv.Start(hookCtx)
		if err != nil {
			return fmt.Errorf("webhook server: %w", err)
		}
		if ctx.Err() == nil {
			return errors.New("webhook server stopped")
		}
		return nil
	})
	g.Go(func() error {
		go func() {
			<-hookCtx.Done()
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = healthSrv.Shutdown(shutdownCtx)
		}()
		if err := healthSrv.Serve(healthLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("health server: %w", err)
		}
		return nil
	})
	if o.metricsAddr != "0" {
		metricsSrv, err := metricsserver.NewServer(metricsserver.Options{
			BindAddress: o.metricsAddr, SecureServing: true, CertDir: o.certDir, CertName: "tls.crt", KeyName: "tls.key", TLSOpts: tlsOpts,
		}, nil, nil)
		if err != nil {
			return fmt.Errorf("metrics server: %w", err)
		}
		g.Go(func() error { return metricsSrv.Start(hookCtx) })
	}
	err = g.Wait()
	log.Info("stopped")
	return err
}
