// Command load is figure 3 of `make bench`: the real `serve` binary over HTTPS at fixed admission
// rates. It starts a kube-apiserver and etcd (test/fixtures/controlplane), builds and starts `spire-mesh-injector
// serve` as a process with a serving certificate and a kubeconfig, lets one admission create the
// namespace's ClusterSPIFFEID and waits for it (the steady state every later admission is in), then
// POSTs AdmissionReviews of the typical post-Istio pod (test/fixtures/benchpod's, the one
// BenchmarkAdmission calls "typical") open-loop at each rate for a fixed time, over a few
// kept-alive connections as the API server does, and reports p50/p99 latency, achieved throughput
// and errors per rate.
//
// Open loop: requests are sent on a fixed schedule whatever the server's answers, and each
// latency runs from the request's scheduled time, not from when a connection became free — a slow
// answer delays the requests queued behind it and is charged to them too (no coordinated
// omission). The generator shares the machine's two cores with the server, so it keeps its own
// cost low: one pre-encoded body, responses checked with a byte search rather than decoded.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/bench/perf"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/benchpod"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
)

// namespace is where the admitted pods are created: the fixture's own.
const namespace = "shop"

// webhookTimeout is the MutatingWebhookConfiguration's timeoutSeconds (kustomize/base): an answer
// later than this is a failure to the API server, so it is one here.
const webhookTimeout = 5 * time.Second

// p99Target is issue 8's target at 500/s, held at 100/s too: a lighter load must not do worse.
const p99Target = 5 * time.Millisecond

func main() {
	rates := flag.String("rates", "100,500,2000", "admission rates per second, comma-separated")
	duration := flag.Duration("duration", 15*time.Second, "measured time at each rate")
	warmup := flag.Duration("warmup", 3*time.Second, "unmeasured time at each rate before it (connections, caches, GC pacing)")
	conns := flag.Int("conns", 8, "kept-alive HTTPS connections (the API server keeps a pool of them per webhook)")
	out := flag.String("out", "bench-results/load.json", "raw results (JSON); the serve log goes beside it")
	flag.Parse()
	var rs []int
	for _, f := range strings.Split(*rates, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r <= 0 {
			fmt.Fprintf(os.Stderr, "load: -rates: %q is not a positive number\n", f)
			os.Exit(2)
		}
		rs = append(rs, r)
	}
	if err := run(rs, *duration, *warmup, *conns, *out); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

// Step is the result at one rate.
type Step struct {
	Rate     int     `json:"offeredPerSecond"`
	Sent     int     `json:"sent"`
	Errors   int     `json:"errors"`
	Achieved float64 `json:"achievedPerSecond"`
	// Latencies in milliseconds, from the scheduled send time to the whole response read.
	P50  float64 `json:"p50Ms"`
	P90  float64 `json:"p90Ms"`
	P99  float64 `json:"p99Ms"`
	P999 float64 `json:"p999Ms"`
	Max  float64 `json:"maxMs"`
	// ServeCPU and GeneratorCPU are the cores each process used on average.
	ServeCPU     float64 `json:"serveCores"`
	GeneratorCPU float64 `json:"generatorCores"`
	// ServeRSS is the server's resident memory at the end of the step.
	ServeRSS int64 `json:"serveRSSBytes"`
	// FirstError is an example of what failed, if anything did.
	FirstError string `json:"firstError,omitempty"`
}

// Results are the raw results written to -out.
type Results struct {
	Pod         string        `json:"pod"`
	BodyBytes   int           `json:"bodyBytes"`
	Connections int           `json:"connections"`
	Duration    time.Duration `json:"durationNs"`
	Steps       []Step        `json:"steps"`
	// ServeAdmissions counts what the server says it did meanwhile, by result.
	ServeAdmissions map[string]float64 `json:"serveAdmissions"`
	// ServeEnsures counts registration ensures by result: all "exists" (from the cache) but the first.
	ServeEnsures map[string]float64 `json:"serveEnsures"`
}

func run(rates []int, duration, warmup time.Duration, conns int, out string) error {
	ctx := context.Background()
	work, err := os.MkdirTemp("", "smi-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	fmt.Fprintln(os.Stderr, "load: starting kube-apiserver and etcd, building serve")
	cp, err := perf.StartControlPlane(ctx, work)
	if err != nil {
		return err
	}
	defer func() { _ = cp.Stop() }()
	if err := cp.Client.Create(ctx, controlplane.Namespace(namespace, true, nil)); err != nil {
		return err
	}
	srv, err := cp.Serve(ctx, strings.TrimSuffix(out, filepath.Ext(out))+"-serve.log")
	if err != nil {
		return err
	}
	defer func() { _ = srv.Stop() }()

	body, err := perf.TypicalReview(namespace)
	if err != nil {
		return err
	}
	client, err := perf.TLSClient(cp.CA, conns, webhookTimeout)
	if err != nil {
		return err
	}
	// The first admission creates the namespace's registration; every later one finds it in the
	// cache. Measure only that steady state.
	if err := perf.Admit(ctx, client, srv.URL, body, &bytes.Buffer{}); err != nil {
		return fmt.Errorf("first admission: %w", err)
	}
	if err := proc.Poll(ctx, 30*time.Second, 100*time.Millisecond, "the namespace's ClusterSPIFFEID", func(ctx context.Context) (bool, error) {
		err := cp.Client.Get(ctx, types.NamespacedName{Name: identity.Name(namespace)}, &spirev1alpha1.ClusterSPIFFEID{})
		return err == nil, nil
	}); err != nil {
		return err
	}
	// The watch delivers the create to the server's cache right after; give it a moment.
	time.Sleep(time.Second)

	res := Results{Pod: benchpod.TypicalFixture, BodyBytes: len(body), Connections: conns, Duration: duration}
	for _, rate := range rates {
		fmt.Fprintf(os.Stderr, "load: %d/s for %s (after %s of warm-up)\n", rate, duration, warmup)
		if _, err := step(ctx, client, srv, body, rate, warmup, conns); err != nil {
			return err
		}
		s, err := step(ctx, client, srv, body, rate, duration, conns)
		if err != nil {
			return err
		}
		res.Steps = append(res.Steps, s)
	}
	m, err := srv.Metrics(ctx)
	if err != nil {
		return err
	}
	res.ServeAdmissions, res.ServeEnsures = map[string]float64{}, map[string]float64{}
	for _, r := range []string{"mutated", "unchanged", "skipped", "denied", "error"} {
		res.ServeAdmissions[r] = m.Sum("spire_mesh_injector_admissions_total", "result", r)
	}
	for _, r := range []string{"exists", "created", "error"} {
		res.ServeEnsures[r] = m.Sum("spire_mesh_injector_registration_ensures_total", "result", r)
	}
	if err := perf.WriteJSON(out, res); err != nil {
		return err
	}

	for _, s := range res.Steps {
		value := fmt.Sprintf("p50 %.2fms, p99 %.2fms, %.0f/s achieved, %d errors", s.P50, s.P99, s.Achieved, s.Errors)
		figure := fmt.Sprintf("https-%drps", s.Rate)
		if s.Rate >= 1000 {
			// Above what the issue sets a latency target for: hold it to keeping up.
			perf.Line(os.Stdout, figure, value, fmt.Sprintf(">=%d/s achieved, 0 errors", s.Rate*99/100),
				s.Errors == 0 && s.Achieved >= float64(s.Rate)*0.99)
			continue
		}
		perf.Line(os.Stdout, figure, value, fmt.Sprintf("p99 <%s, 0 errors", p99Target),
			s.Errors == 0 && s.P99 < float64(p99Target)/float64(time.Millisecond))
	}
	return nil
}

// step sends rate admissions a second for d, open-loop, and measures them.
func step(ctx context.Context, client *http.Client, srv *perf.Serve, body []byte, rate int, d time.Duration, conns int) (Step, error) {
	n := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, n)
	done := make([]time.Time, n)
	failed := make([]bool, n)
	var errCount atomic.Int64
	var firstErr atomic.Value
	// Buffered for the whole step: the schedule never waits for a worker.
	jobs := make(chan int, n)

	cpu0, err := proc.CPUTime(srv.PID())
	if err != nil {
		return Step{}, err
	}
	self0, err := proc.CPUTime(os.Getpid())
	if err != nil {
		return Step{}, err
	}
	start := time.Now().Add(10 * time.Millisecond)
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			var buf bytes.Buffer
			for i := range jobs {
				sched := start.Add(time.Duration(i) * interval)
				err := perf.Admit(ctx, client, srv.URL, body, &buf)
				done[i] = time.Now()
				lat[i] = done[i].Sub(sched)
				if err != nil {
					failed[i] = true
					if errCount.Add(1) == 1 {
						firstErr.Store(err.Error())
					}
				}
			}
		})
	}
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	wall := time.Since(start)
	cpu1, err := proc.CPUTime(srv.PID())
	if err != nil {
		return Step{}, err
	}
	self1, _ := proc.CPUTime(os.Getpid())
	mem, err := proc.ReadMemory(srv.PID())
	if err != nil {
		return Step{}, err
	}

	s := Step{Rate: rate, Sent: n, Errors: int(errCount.Load()),
		ServeCPU: (cpu1 - cpu0).Seconds() / wall.Seconds(), GeneratorCPU: (self1 - self0).Seconds() / wall.Seconds(), ServeRSS: mem.RSS}
	if v, ok := firstErr.Load().(string); ok {
		s.FirstError = v
	}
	// Achieved: successful admissions over the time from the first scheduled send to the last
	// answer.
	last := start
	for i := range n {
		if done[i].After(last) {
			last = done[i]
		}
	}
	s.Achieved = float64(n-s.Errors) / last.Sub(start).Seconds()
	ok := make([]time.Duration, 0, n)
	for i := range n {
		if !failed[i] {
			ok = append(ok, lat[i])
		}
	}
	slices.Sort(ok)
	q := func(p float64) float64 {
		if len(ok) == 0 {
			return 0
		}
		return float64(ok[min(len(ok)-1, int(p*float64(len(ok))))]) / float64(time.Millisecond)
	}
	s.P50, s.P90, s.P99, s.P999, s.Max = q(0.50), q(0.90), q(0.99), q(0.999), q(1)
	return s, nil
}
