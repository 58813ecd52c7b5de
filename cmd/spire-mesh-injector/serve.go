package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	smiconfig "github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/server"
	"github.com/spire-mesh-injector/spire-mesh-injector/webhook"
)

// gcPercent is serve's garbage collection target when GOGC is not set. The webhook's live heap is
// mostly its informer cache, which grows with the cluster (about 3.5 KB per opted-in namespace
// with its registration and a wired pod), while its garbage is small per-admission buffers. Go's
// default (100) lets the heap grow to twice the live heap between collections: at 10,000
// namespaces that headroom alone was 35 MB of resident memory. 50 halves it for about twice as
// many collections, each marking the same cache (a few percent of a core at 500 admissions/s);
// docs/performance.md has the measurements. Prometheus lowers its default the same way.
const gcPercent = 50

func runServe(args []string, stderr io.Writer) error {
	var (
		o          server.Options
		configPath string
		kubeconfig string
		zapOpts    zap.Options
	)
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&configPath, "config", "", "configuration file (default: the built-in configuration, ZTWIM on OpenShift)")
	fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster configuration, or $KUBECONFIG)")
	fs.IntVar(&o.Port, "port", 9443, "HTTPS port of the admission webhook ("+webhook.Path+")")
	fs.StringVar(&o.Host, "host", "", "address the webhook listens on (default: all)")
	fs.StringVar(&o.CertDir, "cert-dir", "/tls", "directory holding the serving certificate tls.crt and key tls.key; reloaded when they change")
	fs.StringVar(&o.ClientCAFile, "client-ca-file", "", "PEM CA bundle: require admission clients (the API server) to present a certificate it signs; reloaded when it changes (default: no client certificate required)")
	fs.Int64Var(&o.InflightBytes, "max-inflight-bytes", webhook.DefaultInflightBytes, "admission request bytes handled at once; beyond, requests are answered 503 at once")
	fs.StringVar(&o.HealthAddr, "health-addr", ":8081", "HTTP address of /healthz and /readyz for the kubelet's probes")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":8443", "HTTPS address of /metrics (same certificate); 0 disables it")
	fs.DurationVar(&o.ShutdownDelay, "shutdown-delay", 5*time.Second, "on SIGTERM, report not ready for this long before closing the listeners, so the API server stops sending requests first")
	fs.BoolVar(&o.LeaderElection, "leader-elect", true, "elect one replica to run the registration reconciler")
	fs.StringVar(&o.LeaderElectionNamespace, "leader-election-namespace", os.Getenv("POD_NAMESPACE"), "namespace of the leader election lease (default: $POD_NAMESPACE)")
	zapOpts.BindFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := smiconfig.Load(configPath)
	if err != nil {
		return err
	}
	if kubeconfig != "" {
		o.RestConfig, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		o.RestConfig, err = config.GetConfig()
	}
	if err != nil {
		return err
	}
	if o.LeaderElection && o.LeaderElectionNamespace == "" {
		o.LeaderElectionNamespace = "spire-mesh-injector"
	}
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(gcPercent)
	}
	if err := setMemoryLimit(os.Getenv("MEMORY_LIMIT")); err != nil {
		return err
	}
	zapOpts.DestWriter = stderr
	o.Log = zap.New(zap.UseFlagOptions(&zapOpts))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return server.Run(ctx, cfg, o)
}

// memoryLimitShare is the part of the container's memory limit the Go heap may use before the
// garbage collector works harder to stay under it; the rest is for what the runtime does not count
// (stacks, buffers of the kernel's and the TLS library's).
const memoryLimitShare = 0.8

// setMemoryLimit sets the Go runtime's soft memory limit from MEMORY_LIMIT, the container's limit
// in bytes as the Deployment passes it (resourceFieldRef limits.memory), unless GOMEMLIMIT is set.
func setMemoryLimit(limit string) error {
	if _, set := os.LookupEnv("GOMEMLIMIT"); set || limit == "" {
		return nil
	}
	n, err := strconv.ParseInt(limit, 10, 64)
	if err != nil || n <= 0 {
		return fmt.Errorf("MEMORY_LIMIT %q: not a number of bytes; allowed: the container's memory limit in bytes (resourceFieldRef limits.memory)", limit)
	}
	debug.SetMemoryLimit(int64(float64(n) * memoryLimitShare))
	return nil
}
