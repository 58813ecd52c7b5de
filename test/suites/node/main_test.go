// Package node is the node suite: a real single-node cluster on this machine (test/fixtures/node:
// etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, containerd, runc, a CNI
// bridge and a real kubelet) with SPIRE deployed as ZTWIM deploys it (k8s_psat node attestation,
// the k8s workload attestor, the SPIFFE CSI driver registered with the kubelet) and
// spire-mesh-injector applied with `kubectl apply -k` from the project's own image. Pods are
// started by the kubelet and get their identity end to end; the tests prove it from inside running
// pods (test/fixtures/workloads), through faults, and report figures as `NODE <figure>: <value>
// (target <t>) met|missed` lines, also written to bench-results/node-summary.txt (or
// $SMI_NODE_SUMMARY).
//
// Stand-ins, for what is not served here: the pause image (test/fixtures/node/standin/pause),
// node-driver-registrar (standin/registrar, the same kubelet plugin-registration protocol) and
// Envoy (standin/envoy: reads the bootstrap pilot-agent wrote and fetches its SDS secrets).
//
// It needs root and the folders of build.sh kube, node, spire and scm (KUBEBUILDER_ASSETS,
// NODE_ASSETS, SPIRE_ASSETS, SCM_ASSETS; ISTIO_ASSETS for Istio's injector); without them it
// skips, unless SMI_REQUIRE_NODE is set (make test sets it). One node runs on a machine at a time.
package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/node"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/tools"
)

var (
	cluster *node.Node
	k8s     kubernetes.Interface
	// istioDeployed says Istio's injector is in the admission chain (ISTIO_ASSETS was set).
	istioDeployed bool
)

// requireNode says a missing component is a failure rather than a skip (make test sets it).
func requireNode() bool { return os.Getenv("SMI_REQUIRE_NODE") != "" }

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	assets, err := node.FindAssets()
	var spire, scm string
	if err == nil {
		spire, err = tools.Dir("SPIRE_ASSETS", "spire", "spire-server", "spire-agent", "spiffe-csi-driver")
	}
	if err == nil {
		scm, err = tools.Dir("SCM_ASSETS", "scm", "spire-controller-manager")
	}
	if tools.SkipSuite(err, "SMI_REQUIRE_NODE", "the node suite needs the node's components") {
		return 0
	}
	if err != nil {
		fmt.Println(err)
		return 1
	}
	istio, err := tools.Dir("ISTIO_ASSETS", "istio", "istio-injector")
	if err != nil && requireNode() {
		fmt.Println(err)
		return 1
	}
	istioDeployed = err == nil
	if !istioDeployed {
		istio = ""
	}
	if os.Geteuid() != 0 && !requireNode() {
		fmt.Println("SKIP: the node suite needs root (containerd, the kubelet, iptables, mounts)")
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	cluster, err = node.Start(ctx, assets, node.Options{Log: os.Stdout, PauseImage: node.PauseImage})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	stopped := false
	stop := func() int {
		stopped = true
		if err := cluster.Stop(); err != nil {
			fmt.Println("stopping the node:", err)
			return 1
		}
		// The host is as the node found it: the next node (or anything else) starts clean.
		if left := cluster.Leftovers(); len(left) > 0 {
			fmt.Printf("the stopped node left on the host:\n  %s\n", strings.Join(left, "\n  "))
			return 1
		}
		fmt.Println("node: stopped; the host is as the node found it")
		return 0
	}
	defer func() {
		if !stopped {
			stop()
		}
	}()
	k8s = cluster.Client
	if err := cluster.DeployAll(ctx, node.ImageAssets{SPIRE: spire, SCM: scm, Node: assets.Node, Istio: istio}); err != nil {
		fmt.Println(err)
		for _, c := range []string{"kubelet", "containerd", "kube-apiserver"} {
			fmt.Printf("--- %s log ---\n%s\n", c, cluster.LogTail(c))
		}
		return 1
	}
	fmt.Printf("node: up with SPIRE and spire-mesh-injector deployed in %s\n", time.Since(start).Round(time.Second))
	code := m.Run()
	if err := writeFigures(); err != nil {
		fmt.Println(err)
		code = 1
	}
	if stop() != 0 {
		code = 1
	}
	return code
}

// figure is one NODE line.
type figure struct {
	name, value, target string
	met                 bool
}

var (
	figuresMu sync.Mutex
	figures   []figure
)

// report records a figure: its value, its target and whether it is met. Figures are reported, not
// asserted (timings depend on the machine); a fault's "0 failed" is also asserted by its test.
func report(name, value, target string, met bool) {
	figuresMu.Lock()
	defer figuresMu.Unlock()
	figures = append(figures, figure{name, value, target, met})
	fmt.Println(figures[len(figures)-1].line())
}

func (f figure) line() string {
	verdict := "met"
	if !f.met {
		verdict = "missed"
	}
	return fmt.Sprintf("NODE %s: %s (target %s) %s", f.name, f.value, f.target, verdict)
}

// writeFigures prints every NODE line again, together, and writes them to the summary file.
func writeFigures() error {
	figuresMu.Lock()
	defer figuresMu.Unlock()
	if len(figures) == 0 {
		return nil
	}
	sort.SliceStable(figures, func(i, j int) bool { return figures[i].name < figures[j].name })
	var b strings.Builder
	for _, f := range figures {
		b.WriteString(f.line() + "\n")
	}
	path := os.Getenv("SMI_NODE_SUMMARY")
	if path == "" {
		path = filepath.Join(controlplane.Root(), "bench-results", "node-summary.txt")
	}
	fmt.Printf("\n==> NODE figures (%s)\n%s", path, b.String())
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
