// Command demo is `make demo`: spire-mesh-injector's main job on an embedded default, with no
// cluster. It starts a local kube-apiserver and etcd (built from the Go module proxy by
// test/fixtures/tools/build.sh and cached), installs spire-controller-manager's ClusterSPIFFEID CRD and the
// webhook exactly as kustomize renders it, runs the webhook server in this process with the
// built-in configuration, creates an opted-in namespace with an Istio-injected pod (the pod
// template of docs/examples/istio-injected-deployment.yaml, as Istio's injector leaves it) and a
// plain pod, and prints what the webhook did. With --keep it stays up and prints a kubeconfig.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/server"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
)

const demoNamespace = "bookinfo"

func main() {
	keep := flag.Bool("keep", false, "leave the control plane and the webhook running and print a kubeconfig")
	flag.Parse()
	if err := run(*keep, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(keep bool, out io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	fmt.Fprintln(out, "==> starting kube-apiserver and etcd (local, no cluster needed)")
	cp, err := controlplane.Start()
	if err != nil {
		return err
	}
	defer func() { _ = cp.Stop() }()
	k8s, err := client.New(cp.Config, client.Options{Scheme: registration.Scheme()})
	if err != nil {
		return err
	}
	for _, ns := range []*corev1.Namespace{
		controlplane.Namespace("spire-mesh-injector", false, nil),
		controlplane.Namespace(demoNamespace, true, nil),
	} {
		if err := k8s.Create(ctx, ns); err != nil {
			return err
		}
	}

	cfg := config.Default()
	fmt.Fprintf(out, "==> starting the webhook with the built-in configuration (trust domain %s, className %s)\n", cfg.TrustDomain, cfg.Registration.ClassName)
	srv, err := controlplane.StartServer(ctx, cfg, server.Options{
		RestConfig: cp.Config, Host: cp.Host, Port: cp.Port, CertDir: cp.CertDir,
		MetricsAddr:    "0",
		LeaderElection: true, LeaderElectionNamespace: "spire-mesh-injector",
		Log: zap.New(zap.WriteTo(io.Discard)),
	})
	if err != nil {
		return fmt.Errorf("webhook server: %w", err)
	}
	defer srv.Shutdown()
	mwc, err := cp.InstallWebhook(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "==> installed MutatingWebhookConfiguration %s from kustomize/base (failurePolicy %s, reinvocationPolicy %s)\n",
		mwc.Name, *mwc.Webhooks[0].FailurePolicy, *mwc.Webhooks[0].ReinvocationPolicy)

	mesh, err := istioInjectedPod()
	if err != nil {
		return err
	}
	plain := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "ratings-plain", Namespace: demoNamespace, Labels: map[string]string{"app": "ratings"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "ratings", Image: "docker.io/istio/examples-bookinfo-ratings-v1:1.20.3"}}},
	}
	for _, p := range []*corev1.Pod{mesh, plain} {
		if err := createWhenWebhookActive(ctx, k8s, p); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "==> created namespace %s (label %s=%s) and two pods\n\n", demoNamespace, annotations.InjectionLabel, annotations.InjectionEnabled)
	describe(out, mesh)
	describe(out, plain)

	csid := &spirev1alpha1.ClusterSPIFFEID{}
	if err := k8s.Get(ctx, types.NamespacedName{Name: identity.Name(demoNamespace)}, csid); err != nil {
		return fmt.Errorf("the ClusterSPIFFEID was not created: %w", err)
	}
	csid.ManagedFields = nil
	y, err := yaml.Marshal(struct {
		Metadata metav1.ObjectMeta                 `json:"metadata"`
		Spec     spirev1alpha1.ClusterSPIFFEIDSpec `json:"spec"`
	}{csid.ObjectMeta, csid.Spec})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "ClusterSPIFFEID the webhook ensured before admitting the first pod (spire-controller-manager turns it into SPIRE entries):\n%s\n", indent(string(y), "  "))

	if keep {
		path := filepath.Join(os.TempDir(), "spire-mesh-injector-demo.kubeconfig")
		if err := cp.WriteKubeconfig(path, demoNamespace); err != nil {
			return err
		}
		fmt.Fprintf(out, "==> running; press Ctrl-C to stop\n    kubectl --kubeconfig %s get pods -n %s\n", path, demoNamespace)
		select {
		case <-ctx.Done():
		case <-srv.Done():
			return srv.Err()
		}
	}
	fmt.Fprintln(out, "==> shutting down")
	return srv.Stop(45 * time.Second)
}

// istioInjectedPod is the pod template of the shipped example Deployment as a pod.
func istioInjectedPod() (*corev1.Pod, error) {
	raw, err := os.ReadFile(filepath.Join(controlplane.Root(), "docs", "examples", "istio-injected-deployment.yaml"))
	if err != nil {
		return nil, err
	}
	for _, doc := range bytes.Split(raw, []byte("\n---\n")) {
		if !bytes.Contains(doc, []byte("kind: Deployment")) {
			continue
		}
		var d struct {
			Spec struct {
				Template corev1.PodTemplateSpec `json:"template"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(doc, &d); err != nil {
			return nil, err
		}
		p := &corev1.Pod{ObjectMeta: d.Spec.Template.ObjectMeta, Spec: d.Spec.Template.Spec}
		p.Name, p.Namespace = "reviews-v1-istio", demoNamespace
		return p, nil
	}
	return nil, errors.New("no Deployment in the example")
}

// createWhenWebhookActive creates p once the API server calls the new webhook configuration
// (its informer needs a moment), probing with dry runs that leave nothing behind.
func createWhenWebhookActive(ctx context.Context, k8s client.Client, p *corev1.Pod) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		probe := p.DeepCopy()
		if err := k8s.Create(ctx, probe, client.DryRunAll); err != nil {
			return err
		}
		if probe.Annotations[annotations.StatusAnnotation] != "" {
			return k8s.Create(ctx, p)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("the API server never called the webhook")
}

func describe(out io.Writer, p *corev1.Pod) {
	st, _ := annotations.ParseStatus(p.Annotations[annotations.StatusAnnotation])
	fmt.Fprintf(out, "Pod %s/%s — wired as %q, SPIFFE ID %s\n", p.Namespace, p.Name, st.Mode, st.SPIFFEID)
	fmt.Fprintf(out, "  labels: %s=%s, %s=%s\n", annotations.InjectedLabel, p.Labels[annotations.InjectedLabel], annotations.ManagedIdentityLabel, p.Labels[annotations.ManagedIdentityLabel])
	for _, v := range p.Spec.Volumes {
		switch {
		case v.CSI != nil:
			fmt.Fprintf(out, "  volume %s: csi driver %s, readOnly %t\n", v.Name, v.CSI.Driver, *v.CSI.ReadOnly)
		case v.Name == "spiffe-jwt-svids":
			fmt.Fprintf(out, "  volume %s: emptyDir medium %s, sizeLimit %s\n", v.Name, v.EmptyDir.Medium, v.EmptyDir.SizeLimit)
		}
	}
	for _, list := range []struct {
		kind string
		cs   []corev1.Container
	}{{"initContainer", p.Spec.InitContainers}, {"container", p.Spec.Containers}} {
		for _, c := range list.cs {
			var lines []string
			for _, m := range c.VolumeMounts {
				if m.Name == "workload-socket" || strings.HasPrefix(m.Name, "spiffe-") {
					lines = append(lines, fmt.Sprintf("mount %s at %s (readOnly %t)", m.Name, m.MountPath, m.ReadOnly))
				}
			}
			for _, e := range c.Env {
				if e.Name == "SPIFFE_ENDPOINT_SOCKET" || e.Name == "WORKLOAD_IDENTITY_SOCKET_FILE" {
					lines = append(lines, fmt.Sprintf("env %s=%s", e.Name, e.Value))
				}
			}
			if c.Name == "spiffe-jwt-helper" {
				lines = append(lines, "JWT-SVID helper: "+strings.Join(c.Args, " "))
			}
			for i, l := range lines {
				if i == 0 {
					fmt.Fprintf(out, "  %s %s: %s\n", list.kind, c.Name, l)
				} else {
					fmt.Fprintf(out, "  %s %s  %s\n", strings.Repeat(" ", len(list.kind)), strings.Repeat(" ", len(c.Name)), l)
				}
			}
		}
	}
	fmt.Fprintf(out, "  %s: %s\n\n", annotations.StatusAnnotation, p.Annotations[annotations.StatusAnnotation])
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}
