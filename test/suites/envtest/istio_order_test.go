package envtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/preview"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/istiocompat"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
	"github.com/spire-mesh-injector/spire-mesh-injector/webhook"
)

// orderLabel selects which of the two registrations of Istio's webhook handles a pod.
const orderLabel = "istio-order"

// istioWebhook starts Istio's own injection webhook (istio-injector serve from the module
// test/istio: Istio's pkg/kube/inject with the templates its installer renders, the mesh's trust
// domain as ours) as a process serving TLS with the control plane's webhook certificate, and
// returns its URL.
func istioWebhook(t *testing.T, ist istiocompat.Injector) string {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(freePort())
	proc.StartT(t, ist.Binary(), proc.Options{
		Args: []string{"serve", "--addr", addr,
			"--cert", filepath.Join(cp.CertDir, "tls.crt"), "--key", filepath.Join(cp.CertDir, "tls.key"),
			"--set", "meshConfig.trustDomain=" + testConfig.TrustDomain},
		Grace: 10 * time.Second,
	})
	require.Eventually(t, func() bool {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: caPool()})
		if err == nil {
			_ = conn.Close()
		}
		return err == nil
	}, 30*time.Second, 50*time.Millisecond, "Istio's webhook listening")
	return "https://" + addr
}

// registerIstio registers Istio's webhook twice, as Istio's chart does (reinvocationPolicy Never,
// failurePolicy Fail): as istio-sidecar-injector, whose name sorts before spire-mesh-injector, so
// the API server calls Istio first, for pods labelled istio-order=before; and as
// zz-istio-sidecar-injector, which sorts after ours, for istio-order=after: spire-mesh-injector
// runs first, wires a plain workload, and is reinvoked once Istio has added its proxy.
func registerIstio(t *testing.T, url string) {
	t.Helper()
	never := admissionregistrationv1.NeverReinvocationPolicy
	none := admissionregistrationv1.SideEffectClassNone
	fail := admissionregistrationv1.Fail
	for name, order := range map[string]string{"istio-sidecar-injector": "before", "zz-istio-sidecar-injector": "after"} {
		path := url + "/inject"
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{
				Name:                    order + ".sidecar-injector.istio.io",
				AdmissionReviewVersions: []string{"v1", "v1beta1"},
				ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &path, CABundle: cp.CA},
				Rules: []admissionregistrationv1.RuleWithOperations{{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
				}},
				ObjectSelector:     &metav1.LabelSelector{MatchLabels: map[string]string{orderLabel: order}},
				SideEffects:        &none,
				FailurePolicy:      &fail,
				ReinvocationPolicy: &never,
			}},
		}
		createForTest(t, mwc)
	}
}

// TestIstiosRealWebhookInEitherOrder puts Istio's real injection webhook in the API server's
// chain next to ours and creates, for every workload of the compatibility corpus, the pod its
// controller would create, classic and native, in both orders. The stored pods are identical
// whichever webhook runs first; and the CLI (`inject -f`, the preview) applied to what Istio's
// webhook alone produces gives the pod the webhooks together store.
func TestIstiosRealWebhookInEitherOrder(t *testing.T) {
	ist := istiocompat.Require(t)
	ctx := context.Background()
	registerIstio(t, istioWebhook(t, ist))
	items, err := istiocompat.Corpus("../istiocompat/testdata/corpus")
	require.NoError(t, err)
	// With the JWT helper too: Istio rewrites the probes of containers it finds (for pilot-agent to
	// forward), so the helper's probes must come out the same whichever webhook runs first.
	items = append(items, istiocompat.Item{Name: "8-jwt-audiences", Doc: []byte(jwtDeployment)})
	require.Contains(t, jwtDeployment, annotations.AudienceAnnotation+":", "the JWT case asks for JWT-SVIDs")

	ns := namespace(t, true, nil)
	eventually(t, "both registrations of Istio's webhook active", func() bool {
		for _, order := range []string{"before", "after"} {
			p := plainPod(ns, "probe", map[string]string{orderLabel: order})
			if err := k8s.Create(ctx, p, client.DryRunAll); err != nil || p.Annotations["sidecar.istio.io/status"] == "" {
				return false
			}
		}
		return true
	})

	for _, it := range items {
		for _, native := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/%s", it.Name, map[bool]string{false: "classic", true: "native"}[native]), func(t *testing.T) {
				w, err := istiocompat.Decode(it.Doc)
				require.NoError(t, err)
				// create creates the pod in order and returns it as stored, with the decisions our
				// webhook (the suite's server) logged for it meanwhile.
				create := func(order string, optOut bool) (*corev1.Pod, []admission) {
					t.Helper()
					pod, err := w.Pod(ns)
					require.NoError(t, err)
					if pod.Labels == nil {
						pod.Labels = map[string]string{}
					}
					if pod.Annotations == nil {
						pod.Annotations = map[string]string{}
					}
					pod.Labels[orderLabel] = order
					// Istio's per-pod choice; its default here is classic.
					pod.Annotations["sidecar.istio.io/nativeSidecar"] = strconv.FormatBool(native)
					if pod.Name != "" {
						// Istio writes a named pod's name into its proxy's environment, so both
						// orders use the same name, one after the other.
						pod.Name += "-" + strconv.FormatBool(native)
					}
					var opts []client.CreateOption
					if optOut {
						// Istio's webhook alone: ours is not called for opted-out pods.
						pod.Labels[annotations.InjectionLabel] = annotations.InjectionDisabled
						opts = append(opts, client.DryRunAll)
					}
					// The webhook logs the pod by name, or by generateName before the API server
					// has made the name.
					key := pod.Name
					if key == "" {
						key = pod.GenerateName + "*"
					}
					logged := suiteAdmissions.len()
					require.NoError(t, k8s.Create(ctx, pod, opts...))
					calls := suiteAdmissions.since(logged, ns, key)
					if pod.Name != "" && !optOut {
						// No kubelet: an unscheduled pod is deleted at once.
						require.NoError(t, k8s.Delete(ctx, pod.DeepCopy()))
					}
					return pod, calls
				}
				stored := map[string]*corev1.Pod{}
				calls := map[string][]admission{}
				for _, order := range []string{"before", "after"} {
					stored[order], calls[order] = create(order, false)
				}
				a, b := stored["before"], stored["after"]
				_, meshed := a.Annotations["sidecar.istio.io/status"]
				if meshed {
					require.Equal(t, string(annotations.ModeMesh), a.Labels[annotations.InjectedLabel])
					_, proxyInit, _ := mutators.FindContainer(a, "istio-proxy")
					assert.Equal(t, native && !isGatewayPod(a), proxyInit, "istio-proxy placement")
				} else {
					require.Equal(t, string(annotations.ModeWorkload), a.Labels[annotations.InjectedLabel], "no proxy: a plain workload")
				}
				// Both orders happened, as our webhook saw them: Istio first, it is called once, on a
				// pod with Istio's proxy; ours first, it is called on the pod without a proxy (and
				// wires it as a plain workload, or waits for Istio in a gateway's placeholder), then
				// again once Istio has added it (reinvocationPolicy IfNeeded).
				first := calls["before"]
				require.Len(t, first, 1, "Istio first: our webhook is called once: %+v", first)
				ours := calls["after"]
				require.NotEmpty(t, ours, "ours first: our webhook was not called")
				if meshed {
					assert.Equal(t, admission{Namespace: ns, Pod: first[0].Pod, Decision: webhook.ResultMutated, Mode: string(annotations.ModeMesh)}, first[0], "Istio first: wired in a mesh")
					require.Len(t, ours, 2, "ours first: called before Istio and again after it: %+v", ours)
					beforeIstio := ours[0].Decision == webhook.ResultMutated && ours[0].Mode == string(annotations.ModeWorkload) ||
						ours[0].Decision == webhook.ResultSkipped && ours[0].Reason == string(annotations.SkipAwaitingIstio)
					assert.True(t, beforeIstio, "ours first: the first call sees no proxy yet: %+v", ours[0])
					assert.Equal(t, webhook.ResultMutated, ours[1].Decision, "ours first: rewired after Istio: %+v", ours[1])
					assert.Equal(t, string(annotations.ModeMesh), ours[1].Mode, "ours first: rewired after Istio: %+v", ours[1])
				} else {
					assert.Equal(t, webhook.ResultMutated, first[0].Decision)
					assert.Equal(t, string(annotations.ModeWorkload), first[0].Mode)
					assert.Equal(t, webhook.ResultMutated, ours[0].Decision)
					assert.Equal(t, string(annotations.ModeWorkload), ours[0].Mode)
				}
				assert.Empty(t, cmp.Diff(comparable(a), comparable(b)), "stored pods differ between the two orders (-Istio first +ours first)")
				if _, jwt := a.Annotations[annotations.AudienceAnnotation]; jwt {
					helper, _, _ := mutators.FindContainer(a, mutators.JWTHelperContainer)
					require.NotNil(t, helper, "the pod asks for JWT-SVIDs: the helper is there")
					require.True(t, meshed, "the JWT case is a mesh pod")
					// Envoy's inbound listener would refuse the kubelet's plain probe under STRICT mTLS.
					require.NotNil(t, helper.ReadinessProbe, "the helper has a readiness probe")
					require.NotNil(t, helper.ReadinessProbe.HTTPGet, "the helper has an HTTP readiness probe")
					assert.Equal(t, "/app-health/"+helper.Name+"/readyz", helper.ReadinessProbe.HTTPGet.Path, "the helper is probed through pilot-agent")
				}
				for _, v := range b.Spec.Volumes {
					if meshed {
						assert.NotEqual(t, mutators.WorkloadAPIVolume, v.Name, "the plain wiring of the first pass is gone")
					}
				}

				// The CLI on what Istio's webhook alone stores (the same pod, opted out of ours, not
				// persisted) gives the pod both webhooks store.
				alone, _ := create("before", true)
				require.Empty(t, alone.Labels[annotations.InjectedLabel], "our webhook must not run for an opted-out pod")
				delete(alone.Labels, annotations.InjectionLabel)
				alone.APIVersion, alone.Kind = "v1", "Pod" // the typed client drops them
				in, err := yaml.Marshal(alone)
				require.NoError(t, err)
				var out bytes.Buffer
				_, err = preview.Inject(bytes.NewReader(in), &out, mutators.NewChain(testConfig), preview.Options{Namespace: ns})
				require.NoError(t, err)
				cli := &corev1.Pod{}
				require.NoError(t, yaml.UnmarshalStrict(out.Bytes(), cli))
				cli.Namespace = ns
				assert.Empty(t, cmp.Diff(comparable(a), comparable(cli)), "inject -f differs from the webhook (-webhook +CLI)")
			})
		}
	}
}

const jwtDeployment = `
apiVersion: apps/v1
kind: Deployment
metadata:
  name: checkout
spec:
  selector:
    matchLabels: {app: checkout}
  template:
    metadata:
      labels: {app: checkout}
      annotations:
        spiffe.io/audience: payments,orders
    spec:
      serviceAccountName: checkout
      containers:
      - name: app
        image: quay.io/example/checkout:1.0
        readinessProbe:
          httpGet: {path: /ready, port: 8080}
`

// comparable is the part of a stored pod the webhooks decide: labels (without the test's order
// label), annotations and spec; names, UIDs and timestamps are the API server's.
func comparable(p *corev1.Pod) map[string]any {
	labels := map[string]string{}
	for k, v := range p.Labels {
		if k != orderLabel {
			labels[k] = v
		}
	}
	return map[string]any{"labels": labels, "annotations": p.Annotations, "spec": p.Spec}
}

func isGatewayPod(p *corev1.Pod) bool {
	return p.Annotations["inject.istio.io/templates"] == "gateway"
}
