// Package server runs spire-mesh-injector's admission webhook as a controller-runtime manager: the
// TLS webhook server (on every replica), the cache it reads registrations through, the
// registration reconciler (on the elected leader only), metrics, and health and readiness probes.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/version"
	"github.com/spire-mesh-injector/spire-mesh-injector/webhook"
)

// Options configure Run. They come from serve's command-line flags.
type Options struct {
	// RestConfig reaches the API server.
	RestConfig *rest.Config
	// Host and Port are the webhook's HTTPS listener.
	Host string
	Port int
	// CertDir holds tls.crt and tls.key, reloaded when they change.
	CertDir string
	// ClientCAFile, when set, makes the webhook listener require a client certificate signed by
	// this CA bundle (the API server's, where the cluster lets it present one).
	ClientCAFile string
	// InflightBytes bounds the admission request bodies handled at once (0: the default).
	InflightBytes int64
	// HealthAddr serves /healthz and /readyz over HTTP; MetricsAddr serves /metrics over HTTPS
	// ("0" turns it off).
	HealthAddr, MetricsAddr string
	// ShutdownDelay is how long readiness reports false before the listeners close.
	ShutdownDelay time.Duration
	// LeaderElection elects one replica to run the reconciler, in LeaderElectionNamespace.
	LeaderElection          bool
	LeaderElectionNamespace string
	// Limits bound the webhook listener (zero: DefaultLimits).
	Limits Limits
	// Log receives every log line.
	Log logr.Logger
}

// CRDPollInterval is how often a server started without the ClusterSPIFFEID CRD looks for it.
var CRDPollInterval = 5 * time.Second

var clusterSPIFFEIDKind = spirev1alpha1.GroupVersion.WithKind("ClusterSPIFFEID")

// awaitKind waits, on every replica, until the API server serves gvk, then runs then (which adds
// the registration index and controller to the running manager: the controller itself still runs
// only on the leader).
type awaitKind struct {
	mapper meta.RESTMapper
	gvk    schema.GroupVersionKind
	every  time.Duration
	then   func(context.Context) error
	log    logr.Logger
}

// NeedLeaderElection is false: every replica's webhook needs the index.
func (a *awaitKind) NeedLeaderElection() bool { return false }

// Start polls the REST mapper, which asks the API server again about a group it did not know.
func (a *awaitKind) Start(ctx context.Context) error {
	t := time.NewTicker(a.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := a.mapper.RESTMapping(a.gvk.GroupKind(), a.gvk.Version); err != nil {
			if !meta.IsNoMatchError(err) {
				a.log.V(1).Info("looking for the ClusterSPIFFEID CRD", "error", err.Error())
			}
			continue
		}
		a.log.Info("the ClusterSPIFFEID CRD is installed: setting up registrations")
		return a.then(ctx)
	}
}

// LeaderElectionID names the lease the replicas compete for.
const LeaderElectionID = "spire-mesh-injector"

// TLSOptions are the TLS settings of every listener: TLS 1.2 or later, and no HTTP/2, whose
// stream-reset floods (CVE-2023-44487) are cheaper to avoid than to bound; the API server speaks
// HTTP/1.1 to webhooks just as well.
var TLSOptions = []func(*tls.Config){func(c *tls.Config) {
	c.MinVersion = tls.VersionTLS12
	c.NextProtos = []string{"http/1.1"}
}}

// Run serves until ctx ends, then shuts down gracefully: readiness turns false first, the
// listeners close after ShutdownDelay, in-flight admissions finish, and the leader releases its
// lease.
func Run(ctx context.Context, cfg *config.Config, o Options) error {
	ctrl.SetLogger(o.Log)
	// client-go (leader election, event broadcasting) logs through klog: same sink, same format.
	klog.SetLogger(o.Log)
	log := o.Log.WithName("spire-mesh-injector")
	log.Info("starting", "version", version.Version, "commit", version.Commit, "configVersion", cfg.Version(),
		"trustDomain", cfg.TrustDomain, "className", cfg.Registration.ClassName, "failurePolicy", cfg.FailurePolicy)

	if o.Limits == (Limits{}) {
		o.Limits = DefaultLimits
	}
	hookSrv := newHookServer(o.Host, o.Port, o.CertDir, o.ClientCAFile, TLSOptions, o.Limits, ctrlmetrics.Registry)
	gracePeriod := 30 * time.Second
	mgr, err := ctrl.NewManager(o.RestConfig, ctrl.Options{
		Scheme: registration.Scheme(),
		Cache:  registration.CacheOptions(),
		Metrics: metricsserver.Options{
			BindAddress: o.MetricsAddr, SecureServing: true, CertDir: o.CertDir, CertName: "tls.crt", KeyName: "tls.key", TLSOpts: TLSOptions,
		},
		HealthProbeBindAddress:        o.HealthAddr,
		WebhookServer:                 hookSrv,
		LeaderElection:                o.LeaderElection,
		LeaderElectionID:              LeaderElectionID,
		LeaderElectionNamespace:       o.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		GracefulShutdownTimeout:       &gracePeriod,
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	regMetrics := registration.NewMetrics(ctrlmetrics.Registry)
	registerCertificateExpiry(ctrlmetrics.Registry, o.CertDir)
	registerConfigInfo(ctrlmetrics.Registry, cfg.Version(), cfg.TrustDomain, cfg.Registration.ClassName, string(cfg.FailurePolicy))
	recorder := mgr.GetEventRecorderFor("spire-mesh-injector")
	setupRegistration := func(ctx context.Context) error {
		if err := registration.IndexManaged(ctx, mgr); err != nil {
			return fmt.Errorf("indexing ClusterSPIFFEIDs: %w", err)
		}
		if err := registration.NewReconciler(cfg, mgr.GetClient(), recorder, regMetrics).SetupWithManager(mgr); err != nil {
			return fmt.Errorf("setting up the registration reconciler: %w", err)
		}
		return nil
	}
	if _, err := mgr.GetRESTMapper().RESTMapping(clusterSPIFFEIDKind.GroupKind(), clusterSPIFFEIDKind.Version); err != nil {
		// spire-controller-manager (or ZTWIM, which installs it) may come after the webhook. Serve
		// meanwhile — pods are wired, and admitted with a CRDMissing warning as when the CRD is lost
		// while running — and set registration up once the CRD is served, rather than fail to start.
		// A group the API server has just stopped serving can fail discovery rather than be
		// unknown: any failure to map the kind waits the same way.
		log.Info("the ClusterSPIFFEID CRD is not served: serving without registrations until it is", "kind", clusterSPIFFEIDKind.String(), "reason", err.Error())
		if err := mgr.Add(&awaitKind{mapper: mgr.GetRESTMapper(), gvk: clusterSPIFFEIDKind, every: CRDPollInterval, then: setupRegistration, log: log}); err != nil {
			return err
		}
	} else if err := setupRegistration(ctx); err != nil {
		return err
	}
	ensurer := registration.NewEnsurer(cfg, mgr.GetCache(), mgr.GetClient(), recorder, regMetrics)
	// GetWebhookServer is what adds the webhook server to the manager's runnables.
	handler := webhook.NewHandler(mutators.NewChain(cfg), ensurer, log.WithName("admission"), webhook.NewMetrics(ctrlmetrics.Registry)).
		WithRecorder(recorder).WithScope(ensurer)
	if o.InflightBytes > 0 {
		handler = handler.WithInflightBytes(o.InflightBytes)
	}
	mgr.GetWebhookServer().Register(webhook.Path, handler)

	var shuttingDown atomic.Bool
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	for name, check := range map[string]healthz.Checker{
		"webhook": hookSrv.StartedChecker(),
		"cache": func(r *http.Request) error {
			sctx, cancel := context.WithTimeout(r.Context(), time.Second)
			defer cancel()
			if !mgr.GetCache().WaitForCacheSync(sctx) {
				return errors.New("cache not synced")
			}
			return nil
		},
		"shutdown": func(*http.Request) error {
			if shuttingDown.Load() {
				return errors.New("shutting down")
			}
			return nil
		},
	} {
		if err := mgr.AddReadyzCheck(name, check); err != nil {
			return err
		}
	}

	// The manager outlives ctx by ShutdownDelay, so the API server stops routing admissions to
	// this replica (readiness false, endpoint removed) before its listener closes.
	mgrCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	go func() {
		select {
		case <-ctx.Done():
		case <-mgrCtx.Done():
			return
		}
		shuttingDown.Store(true)
		log.Info("shutting down: not ready", "delay", o.ShutdownDelay)
		select {
		case <-time.After(o.ShutdownDelay):
		case <-mgrCtx.Done():
		}
		cancel()
	}()
	err = mgr.Start(mgrCtx)
	log.Info("stopped")
	return err
}
