package webhook

import (
	"context"
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/spire-mesh-injector/spire-mesh-injector/inject"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

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
		{"typical", podtest.ReviewBody(b, podtest.Request("shop", podtest.JSON(b, pod)))},
		{"64KB", podtest.ReviewBody(b, podtest.Request("shop", podtest.JSON(b, large)))},
	}
}

// floor is the least any pod webhook does: decode the AdmissionReview, unmarshal the pod into a
// corev1.Pod, and encode an allowed response without a patch.
func floor(body []byte) ([]byte, error) {
	review, err := DecodeReview(body)
	if err != nil {
		return nil, err
	}
	if _, err := inject.DecodePod(review.Request.Object.Raw); err != nil {
		return nil, err
	}
	return EncodeResponse(&admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true})
}

// BenchmarkAdmission measures, for each pod, the floor and the handler's whole decision as the
// server makes it (logging included, to a discarded JSON log as in production), side by side so
// that -count interleaves them: the ratio handler/floor is what `make bench` reports.
func BenchmarkAdmission(b *testing.B) {
	log := zap.New(zap.WriteTo(io.Discard))
	h := NewHandler(mutators.NewChain(podtest.Config(b)), nil, log, NewMetrics(prometheus.NewRegistry()))
	for _, bb := range benchBodies(b) {
		b.Run(bb.name+"/floor", func(b *testing.B) {
			b.SetBytes(int64(len(bb.body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := floor(bb.body); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bb.name+"/handler", func(b *testing.B) {
			b.SetBytes(int64(len(bb.body)))
			b.ReportAllocs()
			for b.Loop() {
				out, err := h.Handle(context.Background(), bb.body)
				if err != nil || len(out) == 0 {
					b.Fatal(err)
				}
			}
		})
	}
}
