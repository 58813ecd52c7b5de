package envtest

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
)

// callCounter counts the API requests a server makes, watches apart; paths lists every request's
// path, watches included.
type callCounter struct {
	mu     sync.Mutex
	reads  []string
	writes []string
	paths  []string
	on     bool
}

// sawPath says whether the server requested a path containing s.
func (c *callCounter) sawPath(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.paths {
		if strings.Contains(p, s) {
			return true
		}
	}
	return false
}

func (c *callCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		c.mu.Lock()
		c.paths = append(c.paths, r.URL.Path)
		if c.on && r.URL.Query().Get("watch") != "true" {
			line := r.Method + " " + r.URL.Path
			if r.Method == http.MethodGet {
				c.reads = append(c.reads, line)
			} else {
				c.writes = append(c.writes, line)
			}
		}
		c.mu.Unlock()
		return rt.RoundTrip(r)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestSteadyStateCostsNoAPICall runs a replica whose every API request is counted, registered for
// one namespace (its own webhook configuration, failurePolicy Fail). Once the namespace's
// registration exists, admitting pods costs no API write and no live API read: the cache answers.
func TestSteadyStateCostsNoAPICall(t *testing.T) {
	ctx := context.Background()
	counter := &callCounter{on: true}
	cfg := rest.CopyConfig(cp.Config)
	cfg.WrapTransport = counter.wrap
	r := startReplica(t, cfg, "steady-state-lease", "steady-state-test")
	// This replica must be the only one wiring the namespace's pods (otherwise it would only see
	// pods already wired): the suite's own webhook configuration steps aside meanwhile.
	main := &admissionregistrationv1.MutatingWebhookConfiguration{}
	require.NoError(t, k8s.Get(ctx, client.ObjectKey{Name: "spire-mesh-injector"}, main))
	require.NoError(t, k8s.Delete(ctx, main))
	t.Cleanup(func() {
		main.ResourceVersion, main.UID = "", ""
		require.NoError(t, k8s.Create(context.Background(), main))
		require.NoError(t, waitWebhookActive(context.Background()))
	})
	ns := namespace(t, true, nil)
	r.serve(t, ns)
	// The first pod creates the registration (a write, as it should).
	eventually(t, "the webhook is active and the registration exists", func() bool {
		p := plainPod(ns, fmt.Sprintf("first-%d", len(counter.writes)), nil)
		if err := k8s.Create(ctx, p); err != nil || p.Labels[annotations.InjectedLabel] == "" {
			return false
		}
		_, err := getCSID(ctx, ns)
		return err == nil
	})

	// The counter sees this replica's requests: its lease, in a namespace of its own, proves it.
	// (Its cache lists through watches, Kubernetes 1.35's streaming lists, counted apart.)
	counter.mu.Lock()
	sawLease := false
	for _, w := range counter.writes {
		sawLease = sawLease || strings.Contains(w, "/namespaces/steady-state-lease/leases")
	}
	counter.reads, counter.writes = nil, nil
	counter.mu.Unlock()
	require.True(t, sawLease, "the counter sees this replica's API requests")
	before := metricSum(t, "spire_mesh_injector_admissions_total", map[string]string{"result": "mutated"})
	ensuresBefore := metricSum(t, "spire_mesh_injector_registration_ensures_total", map[string]string{"result": "exists"})
	const pods = 50
	for i := range pods {
		p := plainPod(ns, fmt.Sprintf("steady-%d", i), nil)
		require.NoError(t, k8s.Create(ctx, p))
		require.Equal(t, "workload", p.Labels[annotations.InjectedLabel])
	}
	counter.mu.Lock()
	counter.on = false
	reads, writes := counter.reads, counter.writes
	counter.mu.Unlock()
	assert.Equal(t, float64(pods), metricSum(t, "spire_mesh_injector_admissions_total", map[string]string{"result": "mutated"})-before, "this replica wired every pod")
	assert.Equal(t, float64(pods), metricSum(t, "spire_mesh_injector_registration_ensures_total", map[string]string{"result": "exists"})-ensuresBefore, "and ensured the registration for each, from the cache")
	// The reconciler (leader of its own lease here) may renew its lease meanwhile: that is not
	// per admission.
	var admissionWrites []string
	for _, w := range writes {
		if !strings.Contains(w, "/leases/") {
			admissionWrites = append(admissionWrites, w)
		}
	}
	var admissionReads []string
	for _, r := range reads {
		if !strings.Contains(r, "/leases/") {
			admissionReads = append(admissionReads, r)
		}
	}
	assert.Empty(t, admissionWrites, "API writes while admitting %d pods", pods)
	assert.Empty(t, admissionReads, "live API reads while admitting %d pods", pods)
	t.Logf("MEASURE steady state: %d admissions, %d API writes, %d live API reads (lease renewals apart: %d)", pods, len(admissionWrites), len(admissionReads), len(writes)+len(reads)-len(admissionWrites)-len(admissionReads))
}
