package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/inject"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

// benchNamespace is the namespace of the benchmarks' admissions.
const benchNamespace = "shop"

// benchBodies are the admission reviews the benchmarks decide: a typical pod as Istio 1.27+
// injects it (native sidecar), and a 64 KB pod (many containers with long environments).
func benchBodies(b *testing.B) []struct {
	name string
	body []byte
} {
	_, pod := podtest.Load(b, fixtures+"native-sidecar.yaml")
	large := podtest.Enlarge(b, pod, 64<<10)
	return []struct {
		name string
		body []byte
	}{
		{"typical", podtest.ReviewBody(b, podtest.Request(benchNamespace, podtest.JSON(b, pod)))},
		{"64KB", podtest.ReviewBody(b, podtest.Request(benchNamespace, podtest.JSON(b, large)))},
	}
}

// floor is the least any pod webhook does, done the cheapest way we know: decode the
// AdmissionReview with its pod in one pass (the handler's own decoding of a pod creation:
// podReview), and append an allowed response without a patch to dst (a reused buffer, as the
// server's).
func floor(dst, body []byte) ([]byte, error) {
	var review podReview
	if err := inject.Unmarshal(body, &review); err != nil {
		return nil, err
	}
	if !review.ok() {
		return nil, errors.New("not a pod creation")
	}
	return AppendResponse(dst, &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true})
}

// benchHandler is the handler as the server makes it (server.Run): the chain, and registration
// through a registration.Ensurer reading a cache that holds the namespace (opted in) and its
// ClusterSPIFFEID, the steady state of every admission after a namespace's first; its log is a
// discarded JSON log, as in production.
func benchHandler(b *testing.B) *Handler {
	cfg := podtest.Config(b)
	reader := newBenchCache(b, cfg)
	ensurer := registration.NewEnsurer(cfg, reader, noWrites{}, nil, registration.NewMetrics(prometheus.NewRegistry()))
	h := NewHandler(mutators.NewChain(cfg), ensurer, zap.New(zap.WriteTo(io.Discard)), NewMetrics(prometheus.NewRegistry())).WithScope(ensurer)
	// The registration step is really taken: the ensure finds the registration in the cache.
	ctx := context.Background()
	before := reader.gets
	if _, err := ensurer.Ensure(ctx, benchNamespace, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: benchNamespace}}); err != nil {
		b.Fatal(err)
	}
	if reader.gets == before {
		b.Fatal("the ensurer read nothing from the cache")
	}
	return h
}

// BenchmarkAdmission (figure 1 of docs/performance.md) measures, for each pod, the floor and the
// handler's whole decision as the server makes it (decode, chain, patch, registration from the
// cache, logging, encode into a reused buffer), one after the other; `make bench-handler` runs it
// once per round, so that rounds interleave them: the ratio handler/floor is what `make bench`
// reports.
func BenchmarkAdmission(b *testing.B) {
	h := benchHandler(b)
	for _, bb := range benchBodies(b) {
		b.Run(bb.name+"/floor", func(b *testing.B) {
			b.SetBytes(int64(len(bb.body)))
			b.ReportAllocs()
			var out []byte
			for b.Loop() {
				var err error
				if out, err = floor(out[:0], bb.body); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bb.name+"/handler", func(b *testing.B) {
			b.SetBytes(int64(len(bb.body)))
			b.ReportAllocs()
			var out []byte
			for b.Loop() {
				var err error
				// As ServeHTTP answers: into a reused buffer.
				if out, err = h.AppendResponse(context.Background(), out[:0], bb.body); err != nil || len(out) == 0 {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAdmissionHTTP (ours in figure 2) measures the handler through its HTTP layer, as
// test/istio's BenchmarkIstioInjection measures Istio's: a POST built with httptest, the handler's
// ServeHTTP behind a ServeMux at its path, the response recorded with httptest.
func BenchmarkAdmissionHTTP(b *testing.B) {
	mux := http.NewServeMux()
	mux.Handle(Path, benchHandler(b))
	for _, bb := range benchBodies(b) {
		if out, err := serveReview(mux, bb.body); err != nil || !bytes.Contains(out, []byte(`"patch"`)) {
			b.Fatalf("the %s pod is not wired: %v %s", bb.name, err, out)
		}
		b.Run(bb.name+"/http", func(b *testing.B) {
			b.SetBytes(int64(len(bb.body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := serveReview(mux, bb.body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// serveReview sends one AdmissionReview body through h and returns the response body: the same steps as
// test/istio/istioinject's Review for Istio's handler.
func serveReview(h http.Handler, body []byte) ([]byte, error) {
	req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return nil, fmt.Errorf("answered %d: %s", rec.Code, rec.Body.String())
	}
	return rec.Body.Bytes(), nil
}

// benchCache is a client.Reader that reads as controller-runtime's cache reads its informers'
// stores (pkg/cache/internal/cache_reader.go): objects kept in a client-go Indexer per kind, as the
// cache's transforms (registration.CacheOptions) leave them; Get finds them by key, List finds
// objects through the field index registration.IndexManaged sets up; both deep-copy unless
// UnsafeDisableDeepCopy. The informers that fill the real cache from an API server are what it
// leaves out: they run beside admissions, not in them.
type benchCache struct {
	scheme   *runtime.Scheme
	indexers map[schema.GroupVersionKind]cache.Indexer
	gets     int
}

func newBenchCache(b *testing.B, cfg *config.Config) *benchCache {
	c := &benchCache{scheme: registration.Scheme(), indexers: map[schema.GroupVersionKind]cache.Indexer{}}
	opts := registration.CacheOptions()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace, UID: "9c3e1a52-7b4d-4f6e-8a1c-2d5b7e9f0a13",
		Labels: map[string]string{annotations.InjectionLabel: annotations.InjectionEnabled, "kubernetes.io/metadata.name": benchNamespace}}}
	nsMeta := &metav1.PartialObjectMetadata{ObjectMeta: ns.ObjectMeta}
	nsMeta.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
	for key, by := range opts.ByObject {
		if m, ok := key.(*metav1.PartialObjectMetadata); ok && m.GroupVersionKind().Kind == "Namespace" && by.Transform != nil {
			o, err := by.Transform(nsMeta)
			if err != nil {
				b.Fatal(err)
			}
			nsMeta = o.(*metav1.PartialObjectMetadata)
		}
	}
	csid, err := registration.Build(cfg, benchNamespace, ns)
	if err != nil {
		b.Fatal(err)
	}
	csid.UID, csid.CreationTimestamp = "4e2b8d17-0c5a-4b3f-9e6d-7a1f3c5b8d20", metav1.Now()
	o, err := opts.DefaultTransform(csid)
	if err != nil {
		b.Fatal(err)
	}
	c.add(b, nsMeta)
	c.add(b, o.(client.Object))
	return c
}

// add stores obj, indexed (ClusterSPIFFEIDs) as registration.IndexManaged indexes them.
func (c *benchCache) add(b *testing.B, obj client.Object) {
	gvk, err := apiutil.GVKForObject(obj, c.scheme)
	if err != nil {
		b.Fatal(err)
	}
	idx := c.indexers[gvk]
	if idx == nil {
		idx = cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{registration.ManagedIndex: func(o any) ([]string, error) {
			if o.(client.Object).GetLabels()[identity.ManagedByLabel] == identity.ManagedByValue {
				return []string{"true"}, nil
			}
			return []string{"false"}, nil
		}})
		c.indexers[gvk] = idx
	}
	if err := idx.Add(obj); err != nil {
		b.Fatal(err)
	}
}

func (c *benchCache) Get(_ context.Context, key client.ObjectKey, out client.Object, opts ...client.GetOption) error {
	c.gets++
	gvk, err := apiutil.GVKForObject(out, c.scheme)
	if err != nil {
		return err
	}
	k := key.Name
	if key.Namespace != "" {
		k = key.Namespace + "/" + key.Name
	}
	var obj any
	exists := false
	if idx := c.indexers[gvk]; idx != nil {
		if obj, exists, err = idx.GetByKey(k); err != nil {
			return err
		}
	}
	if !exists {
		return apierrors.NewNotFound(schema.GroupResource{Group: gvk.Group, Resource: gvk.Kind}, key.Name)
	}
	var getOpts client.GetOptions
	getOpts.ApplyOptions(opts)
	unsafe := getOpts.UnsafeDisableDeepCopy != nil && *getOpts.UnsafeDisableDeepCopy
	if !unsafe {
		obj = obj.(runtime.Object).DeepCopyObject()
	}
	reflect.Indirect(reflect.ValueOf(out)).Set(reflect.Indirect(reflect.ValueOf(obj)))
	if !unsafe {
		out.GetObjectKind().SetGroupVersionKind(gvk)
	}
	return nil
}

func (c *benchCache) List(_ context.Context, list client.ObjectList, opts ...client.ListOption) error {
	lo := client.ListOptions{}
	lo.ApplyOptions(opts)
	gvk, err := apiutil.GVKForObject(list, c.scheme)
	if err != nil {
		return err
	}
	gvk.Kind = gvk.Kind[:len(gvk.Kind)-len("List")]
	var items []any
	if idx := c.indexers[gvk]; idx != nil {
		switch {
		case lo.FieldSelector != nil:
			reqs := lo.FieldSelector.Requirements()
			if len(reqs) != 1 || reqs[0].Field != registration.ManagedIndex {
				return fmt.Errorf("field selector %s: only %s is indexed", lo.FieldSelector, registration.ManagedIndex)
			}
			if items, err = idx.ByIndex(registration.ManagedIndex, reqs[0].Value); err != nil {
				return err
			}
		default:
			items = idx.List()
		}
	}
	objs := make([]runtime.Object, 0, len(items))
	for _, it := range items {
		o := it.(runtime.Object)
		if lo.UnsafeDisableDeepCopy == nil || !*lo.UnsafeDisableDeepCopy {
			o = o.DeepCopyObject()
		}
		objs = append(objs, o)
	}
	return apimeta.SetList(list, objs)
}

// noWrites is the API server's side of the Ensurer in the steady state: nothing is written.
type noWrites struct{ client.Writer }

func (noWrites) Create(context.Context, client.Object, ...client.CreateOption) error {
	return errors.New("benchmark: the registration exists; admission must not create it")
}
