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
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
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
	// suiteAdmissions are the admission decisions of the suite's server, as it logs them.
	suiteAdmissions = &admissionLog{}

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
		Log: logr.New(&recordingSink{sink: zap.New(zap.WriteTo(os.Stderr), zap.Level(zapLevel())).GetSink(), rec: suiteAdmissions}),
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

// admissionLog holds the admission decisions one server logged: its handler logs one line per
// decision ("wired", "already wired", "skipped", ...) with the request's namespace, the pod and the
// decision. The suite reads it to tell what its own server did, apart from any replica in the
// process (their metrics share one registry).
type admissionLog struct {
	mu      sync.Mutex
	entries []admission
}

// admission is one decision of the webhook: Pod is the pod's name, or its generateName and "*"
// (a controller's pod has no name yet when it is admitted).
type admission struct {
	Namespace, Pod, Decision, Mode, Reason string
}

// since returns the decisions logged after the first n, for pod in namespace ns.
func (l *admissionLog) since(n int, ns, pod string) []admission {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []admission
	for _, a := range l.entries[min(n, len(l.entries)):] {
		if a.Namespace == ns && a.Pod == pod {
			out = append(out, a)
		}
	}
	return out
}

// len is how many decisions have been logged.
func (l *admissionLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries)
}

// recordingSink passes a server's log on to sink, at sink's level, and records in rec every
// admission decision it logs, at any level.
type recordingSink struct {
	sink   logr.LogSink
	rec    *admissionLog
	values []any
}

func (s *recordingSink) Init(info logr.RuntimeInfo) { s.sink.Init(info) }

// Enabled is true at every level, so that the decisions logged at V(1) reach Info.
func (s *recordingSink) Enabled(int) bool { return true }

func (s *recordingSink) Info(level int, msg string, kv ...any) {
	all := append(slices.Clip(s.values), kv...)
	if decision := logValue(all, "decision"); decision != "" {
		s.rec.mu.Lock()
		s.rec.entries = append(s.rec.entries, admission{Namespace: logValue(all, "namespace"), Pod: logValue(all, "pod"),
			Decision: decision, Mode: logValue(all, "mode"), Reason: logValue(all, "reason")})
		s.rec.mu.Unlock()
	}
	if s.sink.Enabled(level) {
		s.sink.Info(level, msg, kv...)
	}
}

func (s *recordingSink) Error(err error, msg string, kv ...any) { s.sink.Error(err, msg, kv...) }

func (s *recordingSink) WithValues(kv ...any) logr.LogSink {
	return &recordingSink{sink: s.sink.WithValues(kv...), rec: s.rec, values: append(slices.Clip(s.values), kv...)}
}

func (s *recordingSink) WithName(name string) logr.LogSink {
	return &recordingSink{sink: s.sink.WithName(name), rec: s.rec, values: s.values}
}

// logValue is the last value of key in a logr key/value list, as text.
func logValue(kv []any, key string) string {
	v := ""
	for i := 0; i+1 < len(kv); i += 2 {
		if k, ok := kv[i].(string); ok && k == key {
			v = fmt.Sprint(kv[i+1])
		}
	}
	return v
}
