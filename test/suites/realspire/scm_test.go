package realspire

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	smiserver "github.com/spire-mesh-injector/spire-mesh-injector/server"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/certs"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/spire"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/tools"
)

// ZTWIM configures spire-controller-manager with its class, the cluster name, a k8s_psat parent ID
// template and ignored system namespaces; its own validating webhook is off here.
const (
	scmClusterName = "demo-cluster"
	parentIDTmpl   = "spiffe://{{ .TrustDomain }}/spire/agent/k8s_psat/{{ .ClusterName }}/{{ .NodeMeta.UID }}"
)

// TestRegistrationsBecomeSPIREEntries is the claim "label the namespace and identity is attached",
// end to end: a real kube-apiserver and etcd, spire-mesh-injector's real server registered from the
// kustomize output, a real spire-controller-manager configured like ZTWIM's, and a real SPIRE server
// of its own (spire-controller-manager owns every entry of its server). Every check reads SPIRE's own
// view: `spire-server entry show`. There is no scheduler or kubelet: the test creates the Node and
// sets spec.nodeName itself, and deletes pods with grace period 0.
func TestRegistrationsBecomeSPIREEntries(t *testing.T) {
	scmBin := scmBinary(t)
	tools.Require(t, "SMI_REQUIRE_ENVTEST", "KUBEBUILDER_ASSETS", "kube", "kube-apiserver", "etcd", "kubectl")
	cp, err := controlplane.Start()
	require.NoError(t, err)
	t.Cleanup(func() { _ = cp.Stop() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	k8s, err := client.New(cp.Config, client.Options{Scheme: registration.Scheme()})
	require.NoError(t, err)

	spireSrv, err := spire.StartServer(ctx, assets, filepath.Join(workDir, "scm-server"), trustDomain, spire.ServerOptions{})
	require.NoError(t, err)
	t.Cleanup(spireSrv.Stop)

	// spire-mesh-injector, as kustomize deploys it.
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
trustDomain: %s
clusterName: %s
registration:
  ttl: 1h
  jwtTtl: 5m
  dnsNameTemplates: ["{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc"]
`, trustDomain, scmClusterName)))
	require.NoError(t, err)
	require.NoError(t, k8s.Create(ctx, controlplane.Namespace("spire-mesh-injector", false, nil)))
	srv, err := controlplane.StartServer(ctx, cfg, smiserver.Options{RestConfig: cp.Config, Host: cp.Host, Port: cp.Port, CertDir: cp.CertDir,
		MetricsAddr: "0", LeaderElection: true, LeaderElectionNamespace: "spire-mesh-injector",
		Log: zap.New(zap.WriteTo(io.Discard))})
	require.NoError(t, err)
	t.Cleanup(func() { cancel(); <-srv.Done() })
	_, err = cp.InstallWebhook(ctx)
	require.NoError(t, err)

	// spire-controller-manager, configured as ZTWIM configures it.
	scmLog := startSCM(t, scmBin, cp, spireSrv)

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-1"}}
	require.NoError(t, k8s.Create(ctx, node))
	parentID := fmt.Sprintf("spiffe://%s/spire/agent/k8s_psat/%s/%s", trustDomain, scmClusterName, node.UID)

	newNS := func(name string, optedIn bool, ann map[string]string) {
		require.NoError(t, k8s.Create(ctx, controlplane.Namespace(name, optedIn, ann)))
	}
	newPod := func(ns, name, sa string) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node.Name,
				Containers: []corev1.Container{{Name: "app", Image: "quay.io/example/app:1"}}},
		}
		// The webhook is active once it answers (its configuration informer needs a moment).
		require.Eventually(t, func() bool {
			probe := p.DeepCopy()
			return k8s.Create(ctx, probe, client.DryRunAll) == nil && (ns == "e2e-plain" || probe.Labels[annotations.InjectedLabel] != "")
		}, 30*time.Second, 100*time.Millisecond)
		require.NoError(t, k8s.Create(ctx, p))
		return p
	}
	entryFor := func(pod *corev1.Pod) func() (*spire.Entry, error) {
		return func() (*spire.Entry, error) {
			entries, err := spireSrv.Entries(ctx)
			if err != nil {
				return nil, err
			}
			for i := range entries {
				for _, s := range entries[i].Selectors {
					if s.Type == "k8s" && s.Value == "pod-uid:"+string(pod.UID) {
						return &entries[i], nil
					}
				}
			}
			return nil, nil
		}
	}
	waitEntry := func(pod *corev1.Pod) *spire.Entry {
		var e *spire.Entry
		require.Eventually(t, func() bool {
			got, err := entryFor(pod)()
			e = got
			return err == nil && got != nil
		}, 30*time.Second, 200*time.Millisecond, "no SPIRE entry for pod %s/%s\n%s", pod.Namespace, pod.Name, scmLog)
		return e
	}

	// settled waits until spire-controller-manager has completed a reconcile pass that saw every
	// pod and ClusterSPIFFEID created so far: it creates a sentinel pod and a ClusterSPIFFEID of
	// ZTWIM's class selecting only that pod, and waits for the controller's own signal, the
	// status it writes at the end of each pass (after creating and deleting entries): the sentinel
	// selected, its entry created. Its cache receives the pods, and the ClusterSPIFFEIDs, in the
	// order they were created, so that pass saw everything created before the sentinels. What it
	// did not give an entry then, it never will.
	newNS("e2e-sentinel", false, nil)
	sentinels := 0
	settled := func(t *testing.T) {
		t.Helper()
		sentinels++
		name := fmt.Sprintf("sentinel-%d", sentinels)
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "e2e-sentinel", Labels: map[string]string{"sentinel": name}},
			Spec: corev1.PodSpec{ServiceAccountName: "sentinel", NodeName: node.Name, Containers: []corev1.Container{{Name: "app", Image: "quay.io/example/app:1"}}}}
		require.NoError(t, k8s.Create(ctx, p))
		csid := &spirev1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spirev1alpha1.ClusterSPIFFEIDSpec{
			ClassName: config.DefaultClassName, SPIFFEIDTemplate: "spiffe://{{ .TrustDomain }}/sentinel/{{ .PodMeta.Name }}",
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "e2e-sentinel"}},
			PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"sentinel": name}}}}
		require.NoError(t, k8s.Create(ctx, csid))
		require.Eventually(t, func() bool {
			return k8s.Get(ctx, client.ObjectKeyFromObject(csid), csid) == nil &&
				csid.Status.Stats.PodsSelected == 1 && csid.Status.Stats.EntriesToSet == 1 && csid.Status.Stats.EntryFailures == 0
		}, 30*time.Second, 100*time.Millisecond, "spire-controller-manager reconciled %s\n%s", name, scmLog)
		e, err := entryFor(p)()
		require.NoError(t, err)
		require.NotNil(t, e, "the sentinel's entry exists once its status says so")
	}

	newNS("e2e-shop", true, nil)
	pod := newPod("e2e-shop", "cart", "sa1")

	t.Run("opted-in pod: entry with the SPIFFE ID, selector, parent, TTLs and DNS names", func(t *testing.T) {
		e := waitEntry(pod)
		assert.Equal(t, "spiffe://"+trustDomain+"/ns/e2e-shop/sa/sa1", e.URI())
		assert.Equal(t, parentID, e.Parent(), "the parent is the node's agent")
		assert.Equal(t, 3600, e.X509SVIDTTL)
		assert.Equal(t, 300, e.JWTSVIDTTL)
		assert.Equal(t, []string{"cart.e2e-shop.svc"}, e.DNSNames)
		assert.Len(t, e.Selectors, 1)
	})

	t.Run("a namespace that is not opted in: no entry from our registration", func(t *testing.T) {
		newNS("e2e-plain", false, nil)
		p := newPod("e2e-plain", "cart", "sa1")
		settled(t)
		e, err := entryFor(p)()
		require.NoError(t, err)
		assert.Nil(t, e)
	})

	t.Run("another className: spire-controller-manager ignores it, silently", func(t *testing.T) {
		newNS("e2e-wrongclass", false, nil)
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "cart", Namespace: "e2e-wrongclass", Labels: map[string]string{annotations.InjectedLabel: "workload"}},
			Spec: corev1.PodSpec{ServiceAccountName: "sa1", NodeName: node.Name, Containers: []corev1.Container{{Name: "app", Image: "quay.io/example/app:1"}}}}
		require.NoError(t, k8s.Create(ctx, p))
		// Exactly our registration for that namespace, but with the class an upstream example uses.
		wrong, err := registration.Build(cfg, "e2e-wrongclass", nil)
		require.NoError(t, err)
		wrong.Name = "hand-written-wrongclass"
		wrong.Spec.ClassName = "spire-mesh-injector-docs-example"
		require.NoError(t, k8s.Create(ctx, wrong))
		settled(t)
		e, err := entryFor(p)()
		require.NoError(t, err)
		assert.Nil(t, e, "no entry")
		require.NoError(t, k8s.Get(ctx, client.ObjectKeyFromObject(wrong), wrong))
		assert.Equal(t, spirev1alpha1.ClusterSPIFFEIDStats{}, wrong.Status.Stats, "and no status: nothing tells the user")
		mine := &spirev1alpha1.ClusterSPIFFEID{}
		require.NoError(t, k8s.Get(ctx, client.ObjectKey{Name: identity.Name("e2e-shop")}, mine))
		assert.Equal(t, 1, mine.Status.Stats.PodsSelected, "ours, with ZTWIM's class, is reconciled and has stats")
	})

	t.Run("federation: the namespace annotation reaches the entry", func(t *testing.T) {
		cftd := partnerFederation(t)
		require.NoError(t, k8s.Create(ctx, cftd))
		require.Eventually(t, func() bool {
			out, err := spireSrv.CLI(ctx, "bundle", "list", "-id", "spiffe://partner.example")
			return err == nil && bytes.Contains([]byte(out), []byte("BEGIN CERTIFICATE"))
		}, 30*time.Second, 200*time.Millisecond, "the federated bundle reaches SPIRE\n%s", scmLog)
		newNS("e2e-fed", true, map[string]string{annotations.FederatesWithAnnotation: "partner.example"})
		p := newPod("e2e-fed", "api", "api")
		e := waitEntry(p)
		assert.Equal(t, []string{"partner.example"}, e.FederatesWith)
	})

	t.Run("federation guard: one unknown trust domain costs a pod its entry, unless the webhook holds it back", func(t *testing.T) {
		// The harm, with a registration written by hand: SPIRE refuses the entry ("unable to find
		// federated bundle") and spire-controller-manager only counts it.
		newNS("e2e-harm", false, nil)
		harmPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "cart", Namespace: "e2e-harm", Labels: map[string]string{"harm": "true"}},
			Spec: corev1.PodSpec{ServiceAccountName: "sa1", NodeName: node.Name, Containers: []corev1.Container{{Name: "app", Image: "quay.io/example/app:1"}}}}
		require.NoError(t, k8s.Create(ctx, harmPod))
		harm := &spirev1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: "hand-written-typo"}, Spec: spirev1alpha1.ClusterSPIFFEIDSpec{
			ClassName: config.DefaultClassName, SPIFFEIDTemplate: config.DefaultSPIFFEIDTemplate, FederatesWith: []string{"tyop.example"},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "e2e-harm"}},
			PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"harm": "true"}}}}
		require.NoError(t, k8s.Create(ctx, harm))
		require.Eventually(t, func() bool {
			return k8s.Get(ctx, client.ObjectKeyFromObject(harm), harm) == nil && harm.Status.Stats.EntryFailures > 0
		}, 30*time.Second, 200*time.Millisecond, "spire-controller-manager reports the entry SPIRE refused\n%s", scmLog)
		e, err := entryFor(harmPod)()
		require.NoError(t, err)
		assert.Nil(t, e, "the pod has no entry, so no SVID")
		assert.Contains(t, scmLog.String(), `unable to find federated bundle \"spiffe://tyop.example\"`)

		// The guard: the namespace asks for a trust domain no ClusterFederatedTrustDomain names
		// yet. The registration leaves it out, the pod gets its entry, and the author is told.
		newNS("e2e-guard", true, map[string]string{annotations.FederatesWithAnnotation: "later.example"})
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "e2e-guard"},
			Spec: corev1.PodSpec{ServiceAccountName: "api", NodeName: node.Name, Containers: []corev1.Container{{Name: "app", Image: "quay.io/example/app:1"}}}}
		warnings := createWarned(t, ctx, cp, p)
		assert.Contains(t, warnings, "spire-mesh-injector: not federating with later.example yet: no ClusterFederatedTrustDomain of the class names it")
		e = waitEntry(p)
		assert.Empty(t, e.FederatesWith)
		ours := &spirev1alpha1.ClusterSPIFFEID{}
		require.NoError(t, k8s.Get(ctx, client.ObjectKey{Name: identity.Name("e2e-guard")}, ours))
		assert.Empty(t, ours.Spec.FederatesWith)

		// The partner appears: the reconciler adds it, and SPIRE's entry follows.
		later := partnerFederation(t)
		later.Name, later.Spec.TrustDomain = "later-example", "later.example"
		later.Spec.TrustDomainBundle = bundleOf(t, "later.example")
		require.NoError(t, k8s.Create(ctx, later))
		require.Eventually(t, func() bool {
			e, err := entryFor(p)()
			return err == nil && e != nil && len(e.FederatesWith) == 1 && e.FederatesWith[0] == "later.example"
		}, 30*time.Second, 200*time.Millisecond, "the entry federates once the partner is known\n%s", scmLog)
		require.NoError(t, k8s.Get(ctx, client.ObjectKey{Name: identity.Name("e2e-guard")}, ours))
		assert.Equal(t, []string{"later.example"}, ours.Spec.FederatesWith)
		assert.Zero(t, ours.Status.Stats.EntryFailures)
	})

	t.Run("masking: an older registration with the same SPIFFE ID keeps its spec, and the webhook says so", func(t *testing.T) {
		newNS("e2e-mask", true, nil)
		theirs := &spirev1alpha1.ClusterSPIFFEID{ObjectMeta: metav1.ObjectMeta{Name: "hand-written-same-id"}, Spec: spirev1alpha1.ClusterSPIFFEIDSpec{
			ClassName: config.DefaultClassName, SPIFFEIDTemplate: config.DefaultSPIFFEIDTemplate, TTL: metav1.Duration{Duration: 2 * time.Hour},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "e2e-mask"}}}}
		require.NoError(t, k8s.Create(ctx, theirs))
		// creationTimestamp has one-second resolution: ours must be created in a later second to
		// be the newer one, as it is when a namespace migrates.
		time.Sleep(1100 * time.Millisecond)
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "e2e-mask"},
			Spec: corev1.PodSpec{ServiceAccountName: "api", NodeName: node.Name, Containers: []corev1.Container{{Name: "app", Image: "quay.io/example/app:1"}}}}
		warnings := createWarned(t, ctx, cp, p)
		assert.Contains(t, warnings, "spire-mesh-injector: older ClusterSPIFFEID hand-written-same-id masks this pod's entry (other ttl, jwtTtl, dnsNames)")
		e := waitEntry(p)
		assert.Equal(t, 7200, e.X509SVIDTTL, "spire-controller-manager kept the older registration's spec")
		assert.Empty(t, e.DNSNames)
		ours := &spirev1alpha1.ClusterSPIFFEID{}
		require.Eventually(t, func() bool {
			return k8s.Get(ctx, client.ObjectKey{Name: identity.Name("e2e-mask")}, ours) == nil && ours.Status.Stats.EntriesMasked > 0
		}, 30*time.Second, 200*time.Millisecond, "ours reports the masked entry\n%s", scmLog)
	})

	t.Run("pod deleted: entry removed", func(t *testing.T) {
		waitEntry(pod)
		require.NoError(t, k8s.Delete(ctx, pod, client.GracePeriodSeconds(0)))
		require.Eventually(t, func() bool {
			e, err := entryFor(pod)()
			return err == nil && e == nil
		}, 30*time.Second, 200*time.Millisecond)
	})

	t.Run("namespace opts out: our ClusterSPIFFEID and its entries removed", func(t *testing.T) {
		p := newPod("e2e-shop", "orders", "sa2")
		waitEntry(p)
		ns := &corev1.Namespace{}
		require.NoError(t, k8s.Get(ctx, client.ObjectKey{Name: "e2e-shop"}, ns))
		delete(ns.Labels, annotations.InjectionLabel)
		require.NoError(t, k8s.Update(ctx, ns))
		require.Eventually(t, func() bool {
			err := k8s.Get(ctx, client.ObjectKey{Name: identity.Name("e2e-shop")}, &spirev1alpha1.ClusterSPIFFEID{})
			e, lerr := entryFor(p)()
			return apierrors.IsNotFound(err) && lerr == nil && e == nil
		}, 30*time.Second, 200*time.Millisecond)
	})
}

// scmBinary is spire-controller-manager built by `test/fixtures/tools/build.sh scm` (SCM_ASSETS).
func scmBinary(t *testing.T) string {
	return filepath.Join(tools.Require(t, requireEnv, "SCM_ASSETS", "scm", "spire-controller-manager"), "spire-controller-manager")
}

// startSCM runs spire-controller-manager, configured as ZTWIM configures it, against the control
// plane and the SPIRE server s; its log reads as the end of what it printed so far.
func startSCM(t *testing.T, bin string, cp *controlplane.ControlPlane, s *spire.Server) *proc.Log {
	t.Helper()
	dir := filepath.Join(workDir, "scm")
	require.NoError(t, os.MkdirAll(dir, 0o700))
	kubeconfig := filepath.Join(dir, "kubeconfig")
	require.NoError(t, cp.WriteKubeconfig(kubeconfig, ""))
	conf := fmt.Sprintf(`apiVersion: spire.spiffe.io/v1alpha1
kind: ControllerManagerConfig
metrics:
  bindAddress: 127.0.0.1:%d
health:
  healthProbeBindAddress: 127.0.0.1:%d
leaderElection:
  leaderElect: false
validatingWebhookConfigurationName: spire-controller-manager-webhook
clusterName: %s
clusterDomain: cluster.local
trustDomain: %s
spireServerSocketPath: %s
className: %s
watchClassless: false
parentIDTemplate: %q
ignoreNamespaces:
- kube-system
- kube-public
- zero-trust-workload-identity-manager
`, freePort(t), freePort(t), scmClusterName, trustDomain, s.Socket, config.DefaultClassName, parentIDTmpl)
	confPath := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.WriteFile(confPath, []byte(conf), 0o600))
	return proc.StartT(t, bin, proc.Options{
		Args: []string{"-config", confPath, "-kubeconfig", kubeconfig},
		Env:  append(os.Environ(), "ENABLE_WEBHOOKS=false"),
	}).Log
}

// createWarned creates obj as the control plane's admin and returns the admission warnings the API
// server relayed with the response.
func createWarned(t *testing.T, ctx context.Context, cp *controlplane.ControlPlane, obj client.Object) []string {
	t.Helper()
	w := &warningList{}
	cfg := rest.CopyConfig(cp.Config)
	cfg.WarningHandler = w
	c, err := client.New(cfg, client.Options{Scheme: registration.Scheme()})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		probe := obj.DeepCopyObject().(client.Object)
		return c.Create(ctx, probe, client.DryRunAll) == nil && probe.GetLabels()[annotations.InjectedLabel] != ""
	}, 30*time.Second, 100*time.Millisecond, "the webhook wires %s", obj.GetName())
	w.list = nil
	require.NoError(t, c.Create(ctx, obj))
	return w.list
}

type warningList struct{ list []string }

func (w *warningList) HandleWarningHeader(_ int, _ string, text string) {
	w.list = append(w.list, text)
}

// bundleOf is a SPIFFE bundle for trust domain td, with a CA of its own.
func bundleOf(t *testing.T, td string) string {
	t.Helper()
	b := spiffebundle.New(spiffeid.RequireTrustDomainFromString(td))
	b.AddX509Authority(certs.NewCA(t, td+" CA").Cert)
	b.SetRefreshHint(time.Minute)
	doc, err := b.Marshal()
	require.NoError(t, err)
	return string(doc)
}

// partnerFederation is a ClusterFederatedTrustDomain for partner.example with its initial bundle
// (its bundle endpoint is not reachable here; the initial bundle is what SPIRE federates with).
func partnerFederation(t *testing.T) *spirev1alpha1.ClusterFederatedTrustDomain {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("partner.example")
	b := spiffebundle.New(td)
	b.AddX509Authority(certs.NewCA(t, "partner.example CA").Cert)
	b.SetRefreshHint(time.Minute)
	doc, err := b.Marshal()
	require.NoError(t, err)
	return &spirev1alpha1.ClusterFederatedTrustDomain{
		ObjectMeta: metav1.ObjectMeta{Name: "partner-example"},
		Spec: spirev1alpha1.ClusterFederatedTrustDomainSpec{
			TrustDomain:       "partner.example",
			BundleEndpointURL: "https://127.0.0.1:1/bundle",
			BundleEndpointProfile: spirev1alpha1.BundleEndpointProfile{
				Type: spirev1alpha1.HTTPSWebProfileType,
			},
			TrustDomainBundle: string(doc),
			ClassName:         config.DefaultClassName,
		},
	}
}
