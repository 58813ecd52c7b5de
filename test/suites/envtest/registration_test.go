package envtest

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
)

func TestPodInOptedInNamespaceIsWiredAndRegistered(t *testing.T) {
	ctx := context.Background()
	federationPartners(t, "partner.example")
	ns := namespace(t, true, map[string]string{annotations.FederatesWithAnnotation: "partner.example"})
	probe := startRegistrationProbe(t, ns)
	pod := plainPod(ns, "app", nil)
	pod.Spec.ServiceAccountName = "sa1"
	require.NoError(t, k8s.Create(ctx, pod))

	// Its namespace's ClusterSPIFFEID existed before the pod was stored: the API server calls
	// validating webhooks after every mutating one and before it stores the object, and the
	// probe found the registration on the API server then.
	seen := probe.sawPod("app")
	require.NotNil(t, seen, "the validating probe was called for the pod")
	assert.True(t, seen.wired, "the probe saw the pod wired by our webhook")
	assert.True(t, seen.registered, "the registration exists when admission of the pod completes: %s", seen.err)

	// The pod as the API server stored it.
	stored := &corev1.Pod{}
	require.NoError(t, k8s.Get(ctx, client.ObjectKeyFromObject(pod), stored))
	assert.Equal(t, "workload", stored.Labels[annotations.InjectedLabel])
	assert.Equal(t, "true", stored.Labels[annotations.ManagedIdentityLabel])
	require.Len(t, stored.Spec.Volumes, 1)
	assert.Equal(t, mutators.WorkloadAPIVolume, stored.Spec.Volumes[0].Name)
	assert.Equal(t, "csi.spiffe.io", stored.Spec.Volumes[0].CSI.Driver)
	assert.Equal(t, []corev1.EnvVar{{Name: contract.EnvEndpointSocket, Value: "unix:///spiffe-workload-api/spire-agent.sock"}}, stored.Spec.Containers[0].Env)
	st, err := annotations.ParseStatus(stored.Annotations[annotations.StatusAnnotation])
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprintf("spiffe://example.org/ns/%s/sa/sa1", ns), st.SPIFFEID)

	// And it is the registration the webhook renders.
	csid, err := getCSID(ctx, ns)
	require.NoError(t, err)
	nsObj := &corev1.Namespace{}
	require.NoError(t, k8s.Get(ctx, types.NamespacedName{Name: ns}, nsObj))
	assert.Equal(t, map[string]string{identity.ManagedByLabel: identity.ManagedByValue, identity.NamespaceLabel: ns}, csid.Labels)
	require.Len(t, csid.OwnerReferences, 1)
	assert.Equal(t, nsObj.UID, csid.OwnerReferences[0].UID)
	assert.Equal(t, "Namespace", csid.OwnerReferences[0].Kind)
	assert.Equal(t, config.DefaultClassName, csid.Spec.ClassName)
	assert.Equal(t, config.DefaultSPIFFEIDTemplate, csid.Spec.SPIFFEIDTemplate)
	assert.Equal(t, 5*time.Minute, csid.Spec.JWTTTL.Duration)
	assert.Equal(t, []string{"partner.example"}, csid.Spec.FederatesWith)
	assert.Equal(t, map[string]string{"kubernetes.io/metadata.name": ns}, csid.Spec.NamespaceSelector.MatchLabels)
	parsed, err := spirev1alpha1.ParseClusterSPIFFEIDSpec(&csid.Spec)
	require.NoError(t, err)
	assert.True(t, parsed.PodSelector.Matches(labelsOf(stored)), "selects the wired pod")
	assert.False(t, parsed.PodSelector.Matches(labelsOf(plainPod(ns, "x", map[string]string{annotations.ManagedIdentityLabel: "true"}))), "never a pod the webhook did not wire")
}

func TestDryRunWiresButCreatesNothing(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t, true, nil)
	before := metricSum(t, "spire_mesh_injector_registration_ensures_total", nil)
	pod := plainPod(ns, "app", nil)
	require.NoError(t, k8s.Create(ctx, pod, client.DryRunAll))
	assert.Equal(t, "workload", pod.Labels[annotations.InjectedLabel], "the dry-run answer is wired")
	assert.Equal(t, mutators.WorkloadAPIVolume, pod.Spec.Volumes[0].Name)
	// Give the reconciler every chance to (wrongly) act.
	time.Sleep(1500 * time.Millisecond)
	_, err := getCSID(ctx, ns)
	assert.True(t, apierrors.IsNotFound(err), "no ClusterSPIFFEID after a dry run: %v", err)
	assert.Equal(t, before, metricSum(t, "spire_mesh_injector_registration_ensures_total", nil))
}

func TestWebhookIsNotCalledForOptedOutPodsOrOtherNamespaces(t *testing.T) {
	ctx := context.Background()
	optedIn, other := namespace(t, true, nil), namespace(t, false, nil)
	before := metricSum(t, "spire_mesh_injector_admissions_total", nil)

	optOut := plainPod(optedIn, "legacy", map[string]string{annotations.InjectionLabel: annotations.InjectionDisabled})
	require.NoError(t, k8s.Create(ctx, optOut))
	elsewhere := plainPod(other, "app", nil)
	require.NoError(t, k8s.Create(ctx, elsewhere))

	assert.Equal(t, before, metricSum(t, "spire_mesh_injector_admissions_total", nil), "the API server never called the webhook")
	for _, p := range []*corev1.Pod{optOut, elsewhere} {
		assert.Empty(t, p.Spec.Volumes, p.Namespace)
		assert.NotContains(t, p.Annotations, annotations.StatusAnnotation)
	}
	assert.True(t, registrationGone(ctx, other))
}

func TestReconcilerRepairsAndRemoves(t *testing.T) {
	ctx := context.Background()
	ns, csid := registeredNamespace(t)

	t.Run("deleted by hand: re-created", func(t *testing.T) {
		require.NoError(t, k8s.Delete(ctx, csid))
		eventually(t, "re-created", func() bool {
			again, err := getCSID(ctx, ns)
			return err == nil && again.UID != csid.UID && again.DeletionTimestamp == nil
		})
	})
	t.Run("drifted: restored", func(t *testing.T) {
		cur, err := getCSID(ctx, ns)
		require.NoError(t, err)
		cur.Spec.ClassName = "someone-else"
		cur.Spec.SPIFFEIDTemplate = "spiffe://example.org/stolen"
		require.NoError(t, k8s.Update(ctx, cur))
		eventually(t, "restored", func() bool {
			again, err := getCSID(ctx, ns)
			return err == nil && again.Spec.ClassName == config.DefaultClassName && again.Spec.SPIFFEIDTemplate == config.DefaultSPIFFEIDTemplate
		})
	})
	t.Run("namespace annotation changed: followed", func(t *testing.T) {
		federationPartners(t, "bank.example", "partner.example")
		update(t, &corev1.Namespace{}, ns, "", func(o client.Object) {
			o.SetAnnotations(map[string]string{annotations.FederatesWithAnnotation: "bank.example,partner.example"})
		})
		eventually(t, "federatesWith updated", func() bool {
			again, err := getCSID(ctx, ns)
			return err == nil && assert.ObjectsAreEqual([]string{"bank.example", "partner.example"}, again.Spec.FederatesWith)
		})
	})
	t.Run("namespace opts out: removed", func(t *testing.T) {
		update(t, &corev1.Namespace{}, ns, "", func(o client.Object) { delete(o.GetLabels(), annotations.InjectionLabel) })
		eventually(t, "removed", func() bool { return registrationGone(ctx, ns) })
	})
}

func TestNamespaceDeletedRemovesRegistration(t *testing.T) {
	ctx := context.Background()
	ns, _ := registeredNamespace(t)
	// envtest runs no namespace controller: the namespace stays Terminating, which is exactly when
	// the registration must go (not relying on garbage collection).
	require.NoError(t, k8s.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	eventually(t, "removed while the namespace terminates", func() bool { return registrationGone(ctx, ns) })
}

func TestConcurrentPodsCreateOneRegistration(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t, true, nil)
	errorsBefore := metricSum(t, "spire_mesh_injector_registration_ensures_total", map[string]string{"result": "error"})
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for i := range 30 {
		wg.Go(func() {
			errs <- k8s.Create(ctx, plainPod(ns, fmt.Sprintf("app-%d", i), nil))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	var list spirev1alpha1.ClusterSPIFFEIDList
	require.NoError(t, k8s.List(ctx, &list, client.MatchingLabels{identity.NamespaceLabel: ns}))
	assert.Len(t, list.Items, 1)
	assert.Equal(t, errorsBefore, metricSum(t, "spire_mesh_injector_registration_ensures_total", map[string]string{"result": "error"}))
}

func TestAnotherRegistrationForTheSamePodsIsAConflict(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t, true, nil)
	// Someone else's ClusterSPIFFEID, of ZTWIM's class, selecting every pod of the namespace with
	// another identity.
	theirs := &spirev1alpha1.ClusterSPIFFEID{
		ObjectMeta: metav1.ObjectMeta{Name: "team-" + ns},
		Spec: spirev1alpha1.ClusterSPIFFEIDSpec{
			ClassName:         config.DefaultClassName,
			SPIFFEIDTemplate:  "spiffe://{{ .TrustDomain }}/team/{{ .PodMeta.Name }}",
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
		},
	}
	createForTest(t, theirs)
	conflictsBefore := metricSum(t, "spire_mesh_injector_registration_ensures_total", map[string]string{"reason": registration.ReasonConflict})
	// Wait until the webhook's cache has it.
	time.Sleep(500 * time.Millisecond)

	assert.Contains(t, createFailingOpen(t, ctx, plainPod(ns, "app", nil)), "no SPIRE identity until the registration is repaired")
	assert.Greater(t, metricSum(t, "spire_mesh_injector_registration_ensures_total", map[string]string{"reason": registration.ReasonConflict}), conflictsBefore)

	time.Sleep(time.Second)
	assert.True(t, registrationGone(ctx, ns), "ours is not created next to theirs")
	waitNamespaceWarning(t, ns, "Registration"+registration.ReasonConflict)

	// A fallback registration (as ZTWIM's default) yields to ours: no conflict.
	update(t, theirs, theirs.Name, "", func(o client.Object) { o.(*spirev1alpha1.ClusterSPIFFEID).Spec.Fallback = true })
	eventually(t, "ours created once theirs is a fallback", func() bool {
		_, err := getCSID(ctx, ns)
		return err == nil
	})
}

func labelsOf(p *corev1.Pod) labels.Set { return labels.Set(p.Labels) }

// registrationProbe is a validating webhook of the test's own: the API server calls it after every
// mutating webhook (ours included) and before it stores the pod. For each pod it is sent it reads
// the namespace's ClusterSPIFFEID from the API server and records whether it exists then.
type registrationProbe struct {
	mu   sync.Mutex
	pods map[string]*probeResult
}

type probeResult struct {
	wired, registered, dryRun bool
	err                       string
}

// sawPod is what the probe recorded for pod name's last admission (nil: never called).
func (p *registrationProbe) sawPod(name string) *probeResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pods[name]
}

func (p *registrationProbe) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	review := &admissionv1.AdmissionReview{}
	if err := json.NewDecoder(r.Body).Decode(review); err != nil || review.Request == nil {
		http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
		return
	}
	req := review.Request
	pod := &corev1.Pod{}
	res := &probeResult{dryRun: req.DryRun != nil && *req.DryRun}
	if err := json.Unmarshal(req.Object.Raw, pod); err != nil {
		res.err = err.Error()
	}
	res.wired = pod.Labels[annotations.InjectedLabel] != ""
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	_, err := getCSID(ctx, req.Namespace)
	res.registered = err == nil
	if err != nil {
		res.err = err.Error()
	}
	p.mu.Lock()
	p.pods[pod.Name] = res
	p.mu.Unlock()
	review.Response = &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	review.Request = nil
	_ = json.NewEncoder(w).Encode(review)
}

// startRegistrationProbe serves the probe over TLS with the control plane's webhook certificate and
// registers it for the pods of namespace ns until the test ends; it returns once the API server
// calls it.
func startRegistrationProbe(t *testing.T, ns string) *registrationProbe {
	t.Helper()
	p := &registrationProbe{pods: map[string]*probeResult{}}
	cert, err := tls.LoadX509KeyPair(filepath.Join(cp.CertDir, "tls.crt"), filepath.Join(cp.CertDir, "tls.key"))
	require.NoError(t, err)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	require.NoError(t, err)
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	url := "https://" + ln.Addr().String() + "/validate"
	none := admissionregistrationv1.SideEffectClassNone
	fail := admissionregistrationv1.Fail
	createForTest(t, &admissionregistrationv1.ValidatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "registration-probe-" + ns},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{
			Name:                    "registration-probe.test.spire-mesh-injector.io",
			AdmissionReviewVersions: []string{"v1"},
			ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: cp.CA},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
			SideEffects:       &none,
			FailurePolicy:     &fail,
		}},
	})
	eventually(t, "the API server calls the registration probe", func() bool {
		_ = k8s.Create(context.Background(), plainPod(ns, "probe-active", nil), client.DryRunAll)
		seen := p.sawPod("probe-active")
		return seen != nil && seen.dryRun
	})
	return p
}

// federationPartners creates a ClusterFederatedTrustDomain of the registrations' class for each
// trust domain, for the test: the webhook federates a namespace only with trust domains one names
// (SPIRE refuses entries that name any other). They are created before the namespaces that name
// them, so the server's cache has them when those namespaces' first pods are admitted.
func federationPartners(t *testing.T, trustDomains ...string) {
	t.Helper()
	for _, td := range trustDomains {
		name := strings.ReplaceAll(td, ".", "-")
		if err := k8s.Get(context.Background(), client.ObjectKey{Name: name}, &spirev1alpha1.ClusterFederatedTrustDomain{}); err == nil {
			continue
		}
		createForTest(t, &spirev1alpha1.ClusterFederatedTrustDomain{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: spirev1alpha1.ClusterFederatedTrustDomainSpec{TrustDomain: td, ClassName: testConfig.Registration.ClassName,
				BundleEndpointURL: "https://" + td + ":8443", BundleEndpointProfile: spirev1alpha1.BundleEndpointProfile{Type: spirev1alpha1.HTTPSWebProfileType}}})
	}
	// The server's cache sees them through a watch: give it the moment it needs, observed on the
	// registration of a namespace of its own that names them all.
	probeNS := namespace(t, true, map[string]string{annotations.FederatesWithAnnotation: strings.Join(trustDomains, ",")})
	eventually(t, "the server sees the ClusterFederatedTrustDomains", func() bool {
		require.NoError(t, k8s.Create(context.Background(), plainPod(probeNS, fmt.Sprintf("p-%d", rand.IntN(1e6)), nil)))
		csid, err := getCSID(context.Background(), probeNS)
		return err == nil && len(csid.Spec.FederatesWith) == len(trustDomains)
	})
}
