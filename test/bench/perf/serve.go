package perf

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
)

// ServeOptions say how to run `spire-mesh-injector serve` against a control plane.
type ServeOptions struct {
	// Bin is the built binary (see Build).
	Bin string
	// Kubeconfig reaches the API server; LeaseNamespace holds the leader election lease.
	Kubeconfig, LeaseNamespace string
	// CertDir holds tls.crt and tls.key for 127.0.0.1, signed by CA (PEM).
	CertDir string
	CA      []byte
	// LogPath receives the process's log (its stdout and stderr).
	LogPath string
	// Args are more flags; Env more environment variables (beside this process's).
	Args, Env []string
}

// Serve is a running `spire-mesh-injector serve` process listening on loopback.
type Serve struct {
	*proc.Process
	// URL is the admission endpoint; MetricsURL its /metrics (HTTPS, same certificate).
	URL, MetricsURL string
	health          string
	client          *http.Client
	log             *os.File
}

// StartServe starts the binary with the built-in configuration on free loopback ports and waits
// until it reports ready (its cache synced and its webhook listener answering TLS).
func StartServe(ctx context.Context, o ServeOptions) (*Serve, error) {
	port, err1 := proc.FreePort()
	health, err2 := proc.FreePort()
	metrics, err3 := proc.FreePort()
	for _, err := range []error{err1, err2, err3} {
		if err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(o.LogPath), 0o755); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(o.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	client, err := TLSClient(o.CA, 2, 10*time.Second)
	if err != nil {
		logf.Close()
		return nil, err
	}
	s := &Serve{
		URL:        "https://127.0.0.1:" + strconv.Itoa(port) + "/mutate-pods",
		MetricsURL: "https://127.0.0.1:" + strconv.Itoa(metrics) + "/metrics",
		health:     "http://127.0.0.1:" + strconv.Itoa(health),
		client:     client,
		log:        logf,
	}
	s.Process, err = proc.Start(o.Bin, proc.Options{
		Args: append([]string{"serve",
			"--kubeconfig=" + o.Kubeconfig,
			"--host=127.0.0.1", "--port=" + strconv.Itoa(port),
			"--cert-dir=" + o.CertDir,
			"--health-addr=127.0.0.1:" + strconv.Itoa(health),
			"--metrics-addr=127.0.0.1:" + strconv.Itoa(metrics),
			"--leader-election-namespace=" + o.LeaseNamespace,
			// The benchmarks stop the process between phases; no load balancer is waiting to notice.
			"--shutdown-delay=0s"}, o.Args...),
		Env:    append(os.Environ(), o.Env...),
		Output: logf,
		// SIGTERM: it releases its lease.
		Grace: 60 * time.Second,
	})
	if err != nil {
		logf.Close()
		return nil, err
	}
	err = s.WaitReady(ctx, 90*time.Second, 100*time.Millisecond, "serve ready", proc.StatusIs(s.health+"/readyz", http.StatusOK))
	if err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("%w; see %s", err, o.LogPath)
	}
	return s, nil
}

// Metrics scrapes the process's /metrics.
func (s *Serve) Metrics(ctx context.Context) (Metrics, error) {
	return Scrape(ctx, s.client, s.MetricsURL)
}

// Stop stops the process gracefully (SIGTERM: it releases its lease) and closes its log.
func (s *Serve) Stop() error {
	err := s.Process.Stop()
	s.log.Close()
	return err
}

// ControlPlane is a kube-apiserver and etcd (test/fixtures/controlplane) with what StartServe
// needs: a kubeconfig file for the process, the lease namespace, and the built binary.
type ControlPlane struct {
	*controlplane.ControlPlane
	Client     client.Client
	Kubeconfig string
	// bin is the built `serve` binary.
	bin string
}

// LeaseNamespace holds the benchmarks' leader election lease.
const LeaseNamespace = "spire-mesh-injector"

// StartControlPlane starts the control plane, writing its kubeconfig into dir, and builds `serve`
// into dir for Serve.
func StartControlPlane(ctx context.Context, dir string) (*ControlPlane, error) {
	cp, err := controlplane.Start()
	if err != nil {
		return nil, err
	}
	c := &ControlPlane{ControlPlane: cp, Kubeconfig: filepath.Join(dir, "kubeconfig")}
	if err := cp.WriteKubeconfig(c.Kubeconfig, "default"); err != nil {
		_ = cp.Stop()
		return nil, err
	}
	// The benchmarks create thousands of objects: client-go's default 5 requests/s would make the
	// client, not the API server, the bottleneck.
	rc := rest.CopyConfig(cp.Config)
	rc.QPS, rc.Burst = -1, 0
	if c.Client, err = client.New(rc, client.Options{Scheme: registration.Scheme()}); err != nil {
		_ = cp.Stop()
		return nil, err
	}
	if err := c.Client.Create(ctx, controlplane.Namespace(LeaseNamespace, false, nil)); err != nil {
		_ = cp.Stop()
		return nil, err
	}
	if c.bin, err = controlplane.Build(dir, "./cmd/spire-mesh-injector"); err != nil {
		_ = cp.Stop()
		return nil, err
	}
	return c, nil
}

// Serve starts the built `serve` against the control plane with its serving certificate, logging
// to logPath.
func (c *ControlPlane) Serve(ctx context.Context, logPath string) (*Serve, error) {
	return StartServe(ctx, ServeOptions{Bin: c.bin, Kubeconfig: c.Kubeconfig, LeaseNamespace: LeaseNamespace,
		CertDir: c.CertDir, CA: c.CA, LogPath: logPath})
}
