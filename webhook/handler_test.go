package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

const fixtures = "../mutators/testdata/"

func newHandler(t testing.TB, cfg *config.Config) (*Handler, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	return NewHandler(mutators.NewChain(cfg), nil, logr.Discard(), NewMetrics(reg)), reg
}

func review(t *testing.T, h *Handler, body []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	out, err := h.Handle(context.Background(), body)
	require.NoError(t, err)
	var r admissionv1.AdmissionReview
	require.NoError(t, json.Unmarshal(out, &r))
	require.Equal(t, "admission.k8s.io/v1", r.APIVersion)
	require.Equal(t, "AdmissionReview", r.Kind)
	require.NotNil(t, r.Response)
	return r.Response
}

func podJSON(t *testing.T, fixture string) []byte {
	js, _ := podtest.Load(t, fixtures+fixture+".yaml")
	return js
}

func TestReviewWiresAndPatches(t *testing.T) {
	h, reg := newHandler(t, podtest.Config(t))
	js := podJSON(t, "native-sidecar")
	resp := review(t, h, podtest.ReviewBody(t, podtest.Request("shop", js)))
	require.True(t, resp.Allowed)
	assert.Equal(t, "0b7f5a3e-6c1d-4f0e-9a61-3f2d8c7e5b41", string(resp.UID))
	require.NotNil(t, resp.PatchType)
	assert.Equal(t, admissionv1.PatchTypeJSONPatch, *resp.PatchType)

	pod := podtest.Decode(t, podtest.Apply(t, js, decodeOps(t, resp.Patch)))
	assert.Equal(t, "mesh", pod.Labels[annotations.InjectedLabel])
	st, err := annotations.ParseStatus(pod.Annotations[annotations.StatusAnnotation])
	require.NoError(t, err)
	assert.Equal(t, "spiffe://example.org/ns/shop/sa/cart", st.SPIFFEID)
	assert.Equal(t, 1.0, testutil.ToFloat64(h.metrics.admissions.WithLabelValues(ResultMutated, "mesh")))
	assert.Equal(t, 1, testutil.CollectAndCount(reg, "spire_mesh_injector_patch_bytes"))

	// The API server reinvokes the webhook on its own output: nothing more to change.
	resp = review(t, h, podtest.ReviewBody(t, podtest.Request("shop", podtest.JSON(t, pod))))
	require.True(t, resp.Allowed)
	assert.Nil(t, resp.Patch)
	assert.Equal(t, 1.0, testutil.ToFloat64(h.metrics.admissions.WithLabelValues(ResultUnchanged, "mesh")))
}

func TestReviewDryRunGetsTheSameMutation(t *testing.T) {
	h, _ := newHandler(t, podtest.Config(t))
	js := podJSON(t, "plain-workload")
	wet := review(t, h, podtest.ReviewBody(t, podtest.Request("payments", js)))
	req := podtest.Request("payments", js)
	yes := true
	req.DryRun = &yes
	dry := review(t, h, podtest.ReviewBody(t, req))
	require.True(t, dry.Allowed)
	a := podtest.Decode(t, podtest.Apply(t, js, decodeOps(t, wet.Patch)))
	b := podtest.Decode(t, podtest.Apply(t, js, decodeOps(t, dry.Patch)))
	assert.Equal(t, a, b)
}

func TestReviewFillsNamespaceFromRequest(t *testing.T) {
	h, _ := newHandler(t, podtest.Config(t))
	js := podJSON(t, "classic-sidecar") // no metadata.namespace, like pods a ReplicaSet creates
	resp := review(t, h, podtest.ReviewBody(t, podtest.Request("checkout", js)))
	pod := podtest.Decode(t, podtest.Apply(t, js, decodeOps(t, resp.Patch)))
	st, err := annotations.ParseStatus(pod.Annotations[annotations.StatusAnnotation])
	require.NoError(t, err)
	assert.Equal(t, "spiffe://example.org/ns/checkout/sa/cart", st.SPIFFEID)
	assert.Equal(t, "spire-mesh-injector-checkout", st.Registration)
}

// TestReviewDecisions covers every kind of answer: each one names the field and what is allowed.
func TestReviewDecisions(t *testing.T) {
	plain := podJSON(t, "plain-workload")
	withAnnotation := func(key, value string) []byte {
		p := podtest.Decode(t, plain)
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[key] = value
		return podtest.JSON(t, p)
	}
	tests := []struct {
		name        string
		req         func() *admissionv1.AdmissionRequest
		allowed     bool
		patched     bool
		code        int32
		msgContains []string
		metric      [2]string
	}{
		{
			name: "update is not handled",
			req: func() *admissionv1.AdmissionRequest {
				r := podtest.Request("payments", plain)
				r.Operation = admissionv1.Update
				return r
			},
			allowed: true, metric: [2]string{ResultSkipped, string(annotations.SkipNotPod)},
		},
		{
			name: "sub-resource is not handled",
			req: func() *admissionv1.AdmissionRequest {
				r := podtest.Request("payments", plain)
				r.SubResource = "ephemeralcontainers"
				return r
			},
			allowed: true, metric: [2]string{ResultSkipped, string(annotations.SkipNotPod)},
		},
		{
			name: "other kinds are not handled",
			req: func() *admissionv1.AdmissionRequest {
				r := podtest.Request("payments", []byte(`{"kind":"ConfigMap"}`))
				r.Kind = metav1.GroupVersionKind{Version: "v1", Kind: "ConfigMap"}
				r.Resource = metav1.GroupVersionResource{Version: "v1", Resource: "configmaps"}
				return r
			},
			allowed: true, metric: [2]string{ResultSkipped, string(annotations.SkipNotPod)},
		},
		{
			name: "missing object",
			req:  func() *admissionv1.AdmissionRequest { return podtest.Request("payments", nil) },
			code: 400, msgContains: []string{"request.object: missing"},
			metric: [2]string{ResultDenied, "invalid-pod"},
		},
		{
			name: "object is not a pod",
			req: func() *admissionv1.AdmissionRequest {
				return podtest.Request("payments", []byte(`{"spec":{"containers":"no"}}`))
			},
			code: 400, msgContains: []string{"request.object: not a valid Pod"},
			metric: [2]string{ResultDenied, "invalid-pod"},
		},
		{
			name: "empty audience",
			req: func() *admissionv1.AdmissionRequest {
				return podtest.Request("payments", withAnnotation(annotations.AudienceAnnotation, " "))
			},
			code: 400, msgContains: []string{"spiffe.io/audience", "allowed: a comma-separated list"},
			metric: [2]string{ResultDenied, "invalid-pod"},
		},
		{
			name: "malformed status annotation",
			req: func() *admissionv1.AdmissionRequest {
				return podtest.Request("payments", withAnnotation(annotations.StatusAnnotation, "{"))
			},
			code: 400, msgContains: []string{annotations.StatusAnnotation, "written by spire-mesh-injector"},
			metric: [2]string{ResultDenied, "invalid-pod"},
		},
		{
			name:    "opt-out label",
			req:     func() *admissionv1.AdmissionRequest { return podtest.Request("shop", podJSON(t, "opt-out")) },
			allowed: true, metric: [2]string{ResultSkipped, string(annotations.SkipOptOut)},
		},
		{
			name:    "windows pod is annotated and skipped",
			req:     func() *admissionv1.AdmissionRequest { return podtest.Request("win", podJSON(t, "windows")) },
			allowed: true, patched: true, metric: [2]string{ResultSkipped, string(annotations.SkipWindows)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := newHandler(t, podtest.Config(t))
			resp := review(t, h, podtest.ReviewBody(t, tt.req()))
			assert.Equal(t, tt.allowed, resp.Allowed)
			assert.Equal(t, tt.patched, resp.Patch != nil)
			if !tt.allowed {
				require.NotNil(t, resp.Result)
				assert.Equal(t, tt.code, resp.Result.Code)
				assert.True(t, strings.HasPrefix(resp.Result.Message, "spire-mesh-injector: "), resp.Result.Message)
				for _, s := range tt.msgContains {
					assert.Contains(t, resp.Result.Message, s)
				}
			}
			assert.Equal(t, 1.0, testutil.ToFloat64(h.metrics.admissions.WithLabelValues(tt.metric[0], tt.metric[1])))
		})
	}
}

func TestInternalFaultFollowsFailurePolicy(t *testing.T) {
	fault := func(*corev1.Pod, mutators.Request) (mutators.Result, error) {
		return mutators.Result{}, errors.New("registration store unavailable")
	}
	panics := func(*corev1.Pod, mutators.Request) (mutators.Result, error) { panic("boom") }
	for _, policy := range []config.FailurePolicy{config.FailIgnore, config.FailFail} {
		for name, run := range map[string]func(*corev1.Pod, mutators.Request) (mutators.Result, error){"error": fault, "panic": panics} {
			t.Run(string(policy)+"/"+name, func(t *testing.T) {
				cfg := podtest.Config(t)
				cfg.FailurePolicy = policy
				h, _ := newHandler(t, cfg)
				h.run = run
				resp := review(t, h, podtest.ReviewBody(t, podtest.Request("payments", podJSON(t, "plain-workload"))))
				assert.Nil(t, resp.Patch)
				if policy == config.FailIgnore {
					assert.True(t, resp.Allowed)
					require.Len(t, resp.Warnings, 1)
					assert.LessOrEqual(t, len(resp.Warnings[0]), 120)
					assert.Contains(t, resp.Warnings[0], "no SPIRE identity")
					assert.Equal(t, 1.0, testutil.ToFloat64(h.metrics.admissions.WithLabelValues(ResultError, "internal-error")))
				} else {
					assert.False(t, resp.Allowed)
					assert.Equal(t, int32(500), resp.Result.Code)
					assert.Contains(t, resp.Result.Message, "failurePolicy Fail")
					assert.Equal(t, 1.0, testutil.ToFloat64(h.metrics.admissions.WithLabelValues(ResultDenied, "internal-error")))
				}
			})
		}
	}
}

func TestServeHTTPRejectsWhatIsNotAnAdmissionReview(t *testing.T) {
	h, _ := newHandler(t, podtest.Config(t))
	valid := podtest.ReviewBody(t, podtest.Request("payments", podJSON(t, "plain-workload")))
	tests := []struct {
		name, method, contentType string
		body                      []byte
		code                      int
		msg                       string
	}{
		{"GET", http.MethodGet, "application/json", nil, 405, "allowed: POST"},
		{"wrong content type", http.MethodPost, "text/plain", valid, 415, "allowed: application/json"},
		{"not JSON", http.MethodPost, "application/json", []byte("hello"), 400, "not an AdmissionReview"},
		{"wrong version", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}`), 400, "allowed: apiVersion admission.k8s.io/v1"},
		{"wrong kind", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}`), 400, "kind AdmissionReview"},
		{"no request", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), 400, "no request"},
		{"no uid", http.MethodPost, "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}`), 400, "request.uid is empty"},
		{"too large", http.MethodPost, "application/json", bytes.Repeat([]byte(" "), MaxRequestBytes+1), 413, "larger than"},
		{"valid", http.MethodPost, "application/json; charset=utf-8", valid, 200, `"allowed":true`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := serve(h, tt.method, tt.contentType, bytes.NewReader(tt.body))
			assert.Equal(t, tt.code, rec.Code)
			assert.Contains(t, rec.Body.String(), tt.msg)
		})
	}
}

// serve sends one HTTP request to h's endpoint and returns the answer.
func serve(h *Handler, method, contentType string, body io.Reader) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(method, Path, body)
	r.Header.Set("Content-Type", contentType)
	h.ServeHTTP(rec, r)
	return rec
}

func decodeOps(t *testing.T, patch []byte) []jsonpatch.Operation {
	t.Helper()
	var ops []jsonpatch.Operation
	require.NoError(t, json.Unmarshal(patch, &ops))
	return ops
}

type fakeRegistrar struct {
	calls    []string
	warnings []string
	pods     []*corev1.Pod
	err      error
}

func (f *fakeRegistrar) Ensure(ctx context.Context, ns string, pod *corev1.Pod) ([]string, error) {
	if _, ok := ctx.Deadline(); !ok {
		return nil, errors.New("no deadline")
	}
	f.calls = append(f.calls, ns)
	f.pods = append(f.pods, pod.DeepCopy()) // the pod is the handler's only during the call
	return f.warnings, f.err
}

func TestRegistrationAtAdmission(t *testing.T) {
	js := podJSON(t, "plain-workload")
	yes := true
	dry := podtest.Request("payments", js)
	dry.DryRun = &yes
	ensureErr := errors.New("ClusterSPIFFEID spire-mesh-injector-payments for namespace payments could not be ensured: CRD missing")
	tests := []struct {
		name    string
		req     *admissionv1.AdmissionRequest
		err     error
		policy  config.FailurePolicy
		calls   int
		allowed bool
		patched bool
		warning string
		message string
	}{
		{name: "wired pod: ensured before answering", req: podtest.Request("payments", js), calls: 1, allowed: true, patched: true},
		{name: "dry run: wired, nothing created", req: dry, calls: 0, allowed: true, patched: true},
		{name: "skipped pod: nothing ensured", req: podtest.Request("shop", podJSON(t, "opt-out")), calls: 0, allowed: true},
		{name: "failure, Ignore: admitted wired with a warning", req: podtest.Request("payments", js), err: ensureErr, policy: config.FailIgnore,
			calls: 1, allowed: true, patched: true, warning: "no SPIRE identity until the registration is repaired"},
		{name: "failure, Fail: denied with the cause", req: podtest.Request("payments", js), err: ensureErr, policy: config.FailFail,
			calls: 1, allowed: false, message: "pod not admitted (failurePolicy Fail): ClusterSPIFFEID spire-mesh-injector-payments for namespace payments could not be ensured: CRD missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := podtest.Config(t)
			if tt.policy != "" {
				cfg.FailurePolicy = tt.policy
			}
			reg := prometheus.NewRegistry()
			fr := &fakeRegistrar{err: tt.err}
			h := NewHandler(mutators.NewChain(cfg), fr, logr.Discard(), NewMetrics(reg))
			resp := review(t, h, podtest.ReviewBody(t, tt.req))
			assert.Len(t, fr.calls, tt.calls)
			if tt.calls > 0 {
				assert.Equal(t, tt.req.Namespace, fr.calls[0])
				assert.Equal(t, "workload", fr.pods[0].Labels[annotations.InjectedLabel], "the registrar sees the wired pod")
			}
			assert.Equal(t, tt.allowed, resp.Allowed)
			assert.Equal(t, tt.patched, resp.Patch != nil)
			if tt.warning != "" {
				require.Len(t, resp.Warnings, 1)
				assert.Contains(t, resp.Warnings[0], tt.warning)
				assert.LessOrEqual(t, len(resp.Warnings[0]), 120)
				assert.Equal(t, 1.0, testutil.ToFloat64(h.metrics.admissions.WithLabelValues(ResultError, "registration-failed")))
			}
			if tt.message != "" {
				assert.Contains(t, resp.Result.Message, tt.message)
				assert.Equal(t, 1.0, testutil.ToFloat64(h.metrics.admissions.WithLabelValues(ResultDenied, "registration-failed")))
			}
		})
	}
}

// capturingRecorder records what the handler reports and where.
type capturingRecorder struct {
	events []capturedEvent
}

type capturedEvent struct {
	kind, name, eventType, reason, message string
}

func (c *capturingRecorder) Event(obj runtime.Object, eventType, reason, message string) {
	acc, _ := meta.Accessor(obj)
	c.events = append(c.events, capturedEvent{obj.GetObjectKind().GroupVersionKind().Kind, acc.GetName(), eventType, reason, message})
}
func (c *capturingRecorder) Eventf(obj runtime.Object, eventType, reason, format string, args ...any) {
	c.Event(obj, eventType, reason, fmt.Sprintf(format, args...))
}
func (c *capturingRecorder) AnnotatedEventf(obj runtime.Object, _ map[string]string, eventType, reason, format string, args ...any) {
	c.Eventf(obj, eventType, reason, format, args...)
}

func TestEventsGoToTheController(t *testing.T) {
	owned := podtest.Decode(t, podJSON(t, "plain-workload"))
	yes := true
	owned.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "billing-6c8d5f7b9", UID: "rs-uid", Controller: &yes}}
	owned.Annotations = map[string]string{annotations.AudienceAnnotation: ""}
	bare := podtest.Decode(t, podJSON(t, "plain-workload"))
	bare.Annotations = map[string]string{annotations.AudienceAnnotation: "a,a"}
	windows := podJSON(t, "windows")

	rec := &capturingRecorder{}
	h, _ := newHandler(t, podtest.Config(t))
	h.WithRecorder(rec)
	review(t, h, podtest.ReviewBody(t, podtest.Request("payments", podtest.JSON(t, owned))))
	review(t, h, podtest.ReviewBody(t, podtest.Request("payments", podtest.JSON(t, bare))))
	review(t, h, podtest.ReviewBody(t, podtest.Request("win", windows)))
	review(t, h, podtest.ReviewBody(t, podtest.Request("payments", podJSON(t, "plain-workload"))))
	h.run = func(*corev1.Pod, mutators.Request) (mutators.Result, error) {
		return mutators.Result{}, errors.New("boom")
	}
	review(t, h, podtest.ReviewBody(t, podtest.Request("payments", podJSON(t, "plain-workload"))))

	require.Len(t, rec.events, 4, "denials, skips and faults; nothing for a pod wired as usual")
	assert.Equal(t, capturedEvent{"ReplicaSet", "billing-6c8d5f7b9", "Warning", EventDenied,
		"spire-mesh-injector: metadata.annotation spiffe.io/audience: empty; allowed: a comma-separated list of 1 to 8 audiences, e.g. \"my-service,https://api.example.com\""}, rec.events[0])
	assert.Equal(t, "Namespace", rec.events[1].kind, "a bare pod's denial goes to its namespace")
	assert.Equal(t, "payments", rec.events[1].name)
	assert.Equal(t, capturedEvent{"Namespace", "win", "Normal", EventSkipped, "spire-mesh-injector left the pod without SPIRE identity: windows-pod"}, rec.events[2])
	assert.Equal(t, EventFailed, rec.events[3].reason)
	assert.Contains(t, rec.events[3].message, "boom")
}

// servesOnly is a Scope that serves the namespaces listed.
type servesOnly map[string]bool

func (s servesOnly) Serves(ns string) bool { return s[ns] }

// TestEventsOnlyWhereTheWebhookServes: a review can come from anyone who can reach the port, and
// its namespace and owner references are theirs to choose. Events are recorded only in namespaces
// the webhook serves, at most a burst per namespace, with the author's text cut short.
func TestEventsOnlyWhereTheWebhookServes(t *testing.T) {
	rec := &capturingRecorder{}
	h, _ := newHandler(t, podtest.Config(t))
	h.WithRecorder(rec).WithScope(servesOnly{"payments": true})
	bad := podtest.Decode(t, podJSON(t, "plain-workload"))
	var long []string
	for i := range 8 {
		long = append(long, fmt.Sprintf("%d%s", i, strings.Repeat("x", 250)))
	}
	// The denial quotes the audiences the author wrote: about 2 KB of their text.
	bad.Annotations = map[string]string{annotations.AudienceAnnotation: strings.Join(long, ","), annotations.ExtAuthzAnnotation: "other"}
	body := func(ns string) []byte { return podtest.ReviewBody(t, podtest.Request(ns, podtest.JSON(t, bad))) }

	review(t, h, body("kube-system"))
	assert.Empty(t, rec.events, "no Event in a namespace the webhook does not serve")
	assert.Equal(t, 1.0, testutil.ToFloat64(h.metrics.events.WithLabelValues("out-of-scope")))

	for range 3 * eventBurst {
		resp := review(t, h, body("payments"))
		require.False(t, resp.Allowed, "every pod is still refused")
	}
	assert.Len(t, rec.events, eventBurst, "a burst, then rate-limited")
	assert.Equal(t, float64(2*eventBurst), testutil.ToFloat64(h.metrics.events.WithLabelValues("rate-limited")))
	for _, e := range rec.events {
		assert.Len(t, e.message, maxEventMessage, "cut short")
	}
}

// TestOnePassDecodingAnswersAsTheGeneralPath: Handle decodes a pod creation in one pass; its
// answer must be the general path's (review decoded with the object raw, then the pod) for every
// golden pod, and for requests the one-pass decoding hands over to the general path. Patches are
// compared by what they make of the pod (the order of operations is not defined).
func TestOnePassDecodingAnswersAsTheGeneralPath(t *testing.T) {
	h, _ := newHandler(t, podtest.Config(t))
	files, err := filepath.Glob(fixtures + "*.yaml")
	require.NoError(t, err)
	var reqs []*admissionv1.AdmissionRequest
	for _, f := range files {
		if strings.HasSuffix(f, ".golden.yaml") {
			continue
		}
		js, _ := podtest.Load(t, f)
		reqs = append(reqs, podtest.Request("shop", js))
	}
	require.Greater(t, len(reqs), 10)
	// Not for the one-pass path: an update, a null object, an object that is not a pod.
	update := podtest.Request("shop", podJSON(t, "plain-workload"))
	update.Operation = admissionv1.Update
	reqs = append(reqs, update, podtest.Request("shop", []byte("null")), podtest.Request("shop", []byte(`{"spec":{"containers":"app"}}`)))
	for i, req := range reqs {
		body := podtest.ReviewBody(t, req)
		fast := review(t, h, body)
		rv, err := DecodeReview(body)
		require.NoError(t, err)
		general := h.Review(context.Background(), rv.Request)
		if len(general.Patch) > 0 {
			require.NotEmpty(t, fast.Patch, "request %d", i)
			var a, b []jsonpatch.Operation
			require.NoError(t, json.Unmarshal(general.Patch, &a))
			require.NoError(t, json.Unmarshal(fast.Patch, &b))
			assert.JSONEq(t, string(podtest.Apply(t, req.Object.Raw, a)), string(podtest.Apply(t, req.Object.Raw, b)), "request %d", i)
		}
		general.Patch, fast.Patch = nil, nil
		assert.Equal(t, general, fast, "request %d", i)
	}
}

// TestConcurrentAdmissionsShareNothing: admissions reuse the storage of earlier ones (the wired
// copy, its patch, the request and response buffers). Many at once, of different pods, each get
// exactly the answer it gets alone (run under -race by make unit).
func TestConcurrentAdmissionsShareNothing(t *testing.T) {
	h, _ := newHandler(t, podtest.Config(t))
	files, err := filepath.Glob(fixtures + "*.yaml")
	require.NoError(t, err)
	var names []string
	var bodies, want [][]byte
	for _, f := range files {
		if strings.HasSuffix(f, ".golden.yaml") {
			continue
		}
		names = append(names, filepath.Base(f))
		js, _ := podtest.Load(t, f)
		body := podtest.ReviewBody(t, podtest.Request("shop", js))
		out, err := serveReview(h, body)
		require.NoError(t, err)
		bodies, want = append(bodies, body), append(want, bytes.Clone(out))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 * len(bodies) {
				k := (i*7 + g) % len(bodies)
				out, err := serveReview(h, bodies[k])
				if err == nil && !bytes.Equal(out, want[k]) {
					err = fmt.Errorf("%s: answered\n%s\nalone it is\n%s", names[k], out, want[k])
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
