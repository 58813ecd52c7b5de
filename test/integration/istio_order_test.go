package integration

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/podtest"
	"github.com/spire-mesh-injector/spire-mesh-injector/webhook"
)

// istioStandIn serves a stand-in for Istio's sidecar injector (Istio's control plane cannot run
// here): pods labelled standin-order get podtest.IstioStandIn, native when standin-native=true.
// Like Istio, it leaves a pod that already has its proxy alone.
func istioStandIn(t *testing.T) string {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(cp.CertDir, "tls.crt"), filepath.Join(cp.CertDir, "tls.key"))
	require.NoError(t, err)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	require.NoError(t, err)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		review, err := webhook.DecodeReview(body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		resp := &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
		pod, err := webhook.DecodePod(review.Request.Object.Raw)
		if err == nil && pod.Annotations["sidecar.istio.io/status"] == "" {
			mut := pod.DeepCopy()
			podtest.IstioStandIn(mut, pod.Labels["standin-native"] == "true")
			ops, err := webhook.Patch(pod, mut)
			if err == nil {
				patch, _ := webhook.EncodePatch(ops)
				pt := admissionv1.PatchTypeJSONPatch
				resp.Patch, resp.PatchType = patch, &pt
			}
		}
		out, _ := webhook.EncodeResponse(resp)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "https://" + ln.Addr().(*net.TCPAddr).String()
}

// TestSameResultWhicheverWebhookRunsFirst registers the Istio stand-in twice: as
// istio-sidecar-injector, whose name sorts before spire-mesh-injector (the API server calls it
// first), and as zz-istio-sidecar-injector, which sorts after (spire-mesh-injector runs first, wires
// a plain workload, and is reinvoked after the proxy appears). The stored pods are identical.
func TestSameResultWhicheverWebhookRunsFirst(t *testing.T) {
	ctx := context.Background()
	url := istioStandIn(t)
	never := admissionregistrationv1.NeverReinvocationPolicy
	none := admissionregistrationv1.SideEffectClassNone
	fail := admissionregistrationv1.Fail
	for name, order := range map[string]string{"istio-sidecar-injector": "before", "zz-istio-sidecar-injector": "after"} {
		path := url + "/inject"
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{
				Name:                    order + ".sidecar-injector.istio.io",
				AdmissionReviewVersions: []string{"v1"},
				ClientConfig:            admissionregistrationv1.WebhookClientConfig{URL: &path, CABundle: cp.CA},
				Rules: []admissionregistrationv1.RuleWithOperations{{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
				}},
				ObjectSelector:     &metav1.LabelSelector{MatchLabels: map[string]string{"standin-order": order}},
				SideEffects:        &none,
				FailurePolicy:      &fail,
				ReinvocationPolicy: &never, // Istio's default
			}},
		}
		require.NoError(t, k8s.Create(ctx, mwc))
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), mwc) })
	}
	ns := namespace(t, true, nil)
	eventually(t, "both stand-in configurations active", func() bool {
		for _, order := range []string{"before", "after"} {
			p := plainPod(ns, "probe", map[string]string{"standin-order": order})
			if err := k8s.Create(ctx, p, client.DryRunAll); err != nil || len(p.Spec.Containers) < 2 {
				return false
			}
		}
		return true
	})

	for _, native := range []bool{false, true} {
		t.Run(map[bool]string{false: "classic sidecar", true: "native sidecar"}[native], func(t *testing.T) {
			stored := map[string]*corev1.Pod{}
			calls := map[string]float64{}
			for _, order := range []string{"before", "after"} {
				p := plainPod(ns, fmt.Sprintf("app-%s-%t", order, native), map[string]string{"standin-order": order, "standin-native": strconv.FormatBool(native), "app": "shop"})
				p.Annotations = map[string]string{annotations.AudienceAnnotation: "payments"}
				p.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "quay.io/example/migrate:1"}}
				before := metricSum(t, "spire_mesh_injector_admissions_total", nil)
				require.NoError(t, k8s.Create(ctx, p))
				calls[order] = metricSum(t, "spire_mesh_injector_admissions_total", nil) - before
				stored[order] = p
			}
			assert.Equal(t, 1.0, calls["before"], "Istio first: spire-mesh-injector called once")
			assert.Equal(t, 2.0, calls["after"], "spire-mesh-injector first: called again after Istio changed the pod")

			a, b := stored["before"], stored["after"]
			assert.Equal(t, "mesh", a.Labels[annotations.InjectedLabel])
			_, _, proxyInit := findProxy(a)
			assert.Equal(t, native, proxyInit)
			delete(a.Labels, "standin-order")
			delete(b.Labels, "standin-order")
			assert.Empty(t, cmp.Diff(a.Labels, b.Labels), "labels")
			assert.Empty(t, cmp.Diff(a.Annotations, b.Annotations), "annotations")
			assert.Empty(t, cmp.Diff(a.Spec, b.Spec), "spec")
			for _, v := range b.Spec.Volumes {
				assert.NotEqual(t, mutators.WorkloadAPIVolume, v.Name, "the plain wiring of the first pass is gone")
			}
		})
	}
}

func findProxy(p *corev1.Pod) (*corev1.Container, int, bool) {
	for i := range p.Spec.InitContainers {
		if p.Spec.InitContainers[i].Name == "istio-proxy" {
			return &p.Spec.InitContainers[i], i, true
		}
	}
	for i := range p.Spec.Containers {
		if p.Spec.Containers[i].Name == "istio-proxy" {
			return &p.Spec.Containers[i], i, false
		}
	}
	return nil, -1, false
}
