// Package envtest is the envtest suite: a real kube-apiserver and etcd (built from the Go
// module proxy), spire-controller-manager's real CRDs, and spire-mesh-injector's real server
// (server.Run, as `serve` runs it) registered through the MutatingWebhookConfiguration that
// kustomize renders from kustomize/base. Istio's injection webhook is Istio's own code
// (istio-injector from the module test/istio, run as a process). Stand-ins are used only for what
// cannot run here: the kubelet and scheduler (pods are only stored, never run); a few tests that
// only need a pod shaped like Istio's output use podtest.IstioStandIn and say so.
package envtest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/server"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/tools"
)

var (
	cp         *controlplane.ControlPlane
	k8s        client.Client
	suiteSrv   *controlplane.Server
	metricsURL string
	testConfig *config.Config
)

const leaseNamespace = "spire-mesh-injector"

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	cp, err = controlplane.Start()
	if tools.SkipSuite(err, "SMI_REQUIRE_ENVTEST", "the envtest suite needs a control plane") {
		return 0
	}
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer func() { _ = cp.Stop() }()

	k8s, err = client.New(cp.Config, client.Options{Scheme: registration.Scheme()})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := createNamespace(ctx, leaseNamespace, false); err != nil {
		fmt.Println(err)
		return 1
	}
	testConfig, err = config.Parse([]byte("trustDomain: example.org\nclusterName: envtest\njwtHelper:\n  image: registry.example/spire-mesh-injector:test\n"))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	metrics := freePort()
	metricsURL = "https://127.0.0.1:" + strconv.Itoa(metrics) + "/metrics"
	srv, err := controlplane.StartServer(ctx, testConfig, server.Options{
		RestConfig: cp.Config, Host: cp.Host, Port: cp.Port, CertDir: cp.CertDir,
		MetricsAddr:    "127.0.0.1:" + strconv.Itoa(metrics),
		LeaderElection: true, LeaderElectionNamespace: leaseNamespace,
		Log: zap.New(zap.WriteTo(os.Stderr), zap.Level(zapLevel())),
	})
	if err != nil {
		fmt.Println("server:", err)
		return 1
	}
	suiteSrv = srv
	if _, err := cp.InstallWebhook(ctx); err != nil {
		fmt.Println("installing the webhook configuration:", err)
		return 1
	}
	if err := waitWebhookActive(ctx); err != nil {
		fmt.Println(err)
		return 1
	}
	code := m.Run()
	if err := srv.Stop(40 * time.Second); err != nil {
		fmt.Println("server:", err)
		return 1
	}
	return code
}

func freePort() int {
	p, err := proc.FreePort()
	if err != nil {
		panic(err)
	}
	return p
}

// zapLevel keeps the server's logs to errors unless SMI_TEST_VERBOSE is set.
func zapLevel() zapcore.Level {
	if os.Getenv("SMI_TEST_VERBOSE") != "" {
		return zapcore.DebugLevel
	}
	return zapcore.ErrorLevel
}
