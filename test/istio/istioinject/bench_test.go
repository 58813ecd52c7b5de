package istioinject

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	istiolog "istio.io/istio/pkg/log"
	corev1 "k8s.io/api/core/v1"
)

// benchPods are the pods Istio's injector receives for the workloads spire-mesh-injector's
// BenchmarkAdmission measures: the typical post-Istio pod and its 64 KB enlargement, as the main
// module's test/bench/benchpods writes them into $SMI_BENCH_PODS, each with Istio's injection
// taken off again (Istio sees the pod before its injection; we see it after).
func benchPods(b *testing.B) map[string]*corev1.Pod {
	dir := os.Getenv("SMI_BENCH_PODS")
	if dir == "" {
		b.Skip("SMI_BENCH_PODS is not set: `make bench` writes the pods and runs this benchmark")
	}
	pods := map[string]*corev1.Pod{}
	for _, name := range []string{"typical", "64KB"} {
		raw, err := os.ReadFile(filepath.Join(dir, name+".json"))
		if err != nil {
			b.Fatal(err)
		}
		p := &corev1.Pod{}
		if err := json.Unmarshal(raw, p); err != nil {
			b.Fatal(err)
		}
		pods[name] = withoutIstio(p)
	}
	return pods
}

// withoutIstio takes off what Istio's injector added: the containers, init containers and volumes
// its status annotation lists, and its annotations and labels.
func withoutIstio(p *corev1.Pod) *corev1.Pod {
	p = p.DeepCopy()
	drop := map[string]bool{"istio-proxy": true, "istio-init": true, "istio-validation": true}
	var containers, inits []corev1.Container
	for _, c := range p.Spec.Containers {
		if !drop[c.Name] {
			containers = append(containers, c)
		}
	}
	for _, c := range p.Spec.InitContainers {
		if !drop[c.Name] {
			inits = append(inits, c)
		}
	}
	p.Spec.Containers, p.Spec.InitContainers = containers, inits
	var volumes []corev1.Volume
	for _, v := range p.Spec.Volumes {
		if !strings.HasPrefix(v.Name, "istio-") && v.Name != "workload-socket" && v.Name != "credential-socket" && v.Name != "workload-certs" && v.Name != "istiod-ca-cert" {
			volumes = append(volumes, v)
		}
	}
	p.Spec.Volumes = volumes
	for k := range p.Annotations {
		if strings.Contains(k, "istio.io") || strings.HasPrefix(k, "prometheus.io") || strings.HasPrefix(k, "kubectl.kubernetes.io") {
			delete(p.Annotations, k)
		}
	}
	for k := range p.Labels {
		if strings.Contains(k, "istio.io") {
			delete(p.Labels, k)
		}
	}
	return p
}

// BenchmarkIstioInjection measures Istio's own injection webhook handler (istiod's /inject, with
// the default profile's templates and values, native sidecars as Istio 1.27+ on Kubernetes 1.33+)
// on the pods spire-mesh-injector's BenchmarkAdmissionHTTP decides, through the same layer: Review
// builds the request and records the response with httptest, and ServeHTTP runs Istio's handler
// behind its ServeMux, as BenchmarkAdmissionHTTP runs ours. Istio's logs are formatted and
// discarded, as ours are in that benchmark. `make bench` runs it interleaved with ours.
func BenchmarkIstioInjection(b *testing.B) {
	opts := istiolog.DefaultOptions()
	opts.OutputPaths, opts.ErrorOutputPaths = []string{"/dev/null"}, []string{"/dev/null"}
	if err := istiolog.Configure(opts); err != nil {
		b.Fatal(err)
	}
	in, err := New(Options{Native: true, Set: []string{"meshConfig.trustDomain=example.org"}})
	if err != nil {
		b.Fatal(err)
	}
	pods := benchPods(b)
	for _, name := range []string{"typical", "64KB"} {
		body, err := ReviewFor(pods[name], "shop")
		if err != nil {
			b.Fatal(err)
		}
		out, err := in.Review(body)
		if err != nil || !strings.Contains(string(out), `"patch"`) {
			b.Fatalf("Istio did not inject the %s pod: %v %s", name, err, out)
		}
		b.Run(name+"/istio", func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := in.Review(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
