package node

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/workloads"
)

// firstSVIDPods is how many pods the first-SVID figure is measured over.
const firstSVIDPods = 50

// createPaced creates pods one after the other, one every interval, and returns when each create
// request was sent (the pod's creation as its user sees it; creationTimestamp has only seconds).
func createPaced(t *testing.T, pods []*corev1.Pod, interval time.Duration) map[string]time.Time {
	t.Helper()
	created := map[string]time.Time{}
	for _, p := range pods {
		at := time.Now()
		createPod(t, p)
		created[p.Namespace+"/"+p.Name] = at
		time.Sleep(interval)
	}
	return created
}

// TestTimeToFirstSVID is the figure "pod creation → first SVID in the app": 50 plain pods created
// at 2 per second in an opted-in namespace; each app records when the Workload API gave it its
// first X.509-SVID. It includes admission (ours and the registration), scheduling, the kubelet
// starting the pod and publishing the CSI volume, spire-controller-manager's entry and the agent's
// sync.
func TestTimeToFirstSVID(t *testing.T) {
	ns := newNamespace(t, "node-first-svid", true)
	var pods []*corev1.Pod
	for i := range firstSVIDPods {
		pods = append(pods, workloadPod(ns, fmt.Sprintf("svid-%02d", i), "default", "first-svid"))
	}
	created := createPaced(t, pods, 500*time.Millisecond)
	var (
		mu        sync.Mutex
		latencies []time.Duration
		wg        sync.WaitGroup
	)
	for _, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := waitPod(t, ns, p.Name, "running with an address", 3*time.Minute, func(p *corev1.Pod) bool { return p.Status.PodIP != "" })
			st := waitStatus(t, got, "first SVID", 3*time.Minute, func(st workloads.Status) bool { return st.FirstSVID != 0 })
			if st.ID != spiffeID(ns, "default") {
				t.Errorf("%s: SVID %s", p.Name, st.ID)
			}
			mu.Lock()
			latencies = append(latencies, time.Unix(0, st.FirstSVID).Sub(created[ns+"/"+p.Name]))
			mu.Unlock()
		}()
	}
	wg.Wait()
	require.Len(t, latencies, firstSVIDPods)
	p50, p99 := percentile(latencies, 50), percentile(latencies, 99)
	report("pod creation to first SVID in the app, p50", fmt.Sprintf("%s over %d pods", seconds(p50), len(latencies)), "5s", p50 <= 5*time.Second)
	report("pod creation to first SVID in the app, p99", fmt.Sprintf("%s over %d pods", seconds(p99), len(latencies)), "10s", p99 <= 10*time.Second)
}

// TestTimeToReadyWithAndWithoutTheWebhook is the webhook's share of pod start-up: the same pod,
// created alternately in an opted-in namespace (our webhook in the chain, the CSI volume published
// before the container starts) and in one that is not, 20 of each at 2 per second; time from the
// create request to the pod's Ready condition, as a watcher sees it.
func TestTimeToReadyWithAndWithoutTheWebhook(t *testing.T) {
	const each = 20
	with := newNamespace(t, "node-ready-with", true)
	without := newNamespace(t, "node-ready-without", false)
	var pods []*corev1.Pod
	for i := range each {
		pods = append(pods, workloadPod(with, fmt.Sprintf("ready-%02d", i), "default", "idle"),
			workloadPod(without, fmt.Sprintf("ready-%02d", i), "default", "idle"))
	}
	readyAt := map[string]time.Time{}
	var mu sync.Mutex
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			for _, ns := range []string{with, without} {
				l, err := k8s.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
				if err != nil {
					continue
				}
				now := time.Now()
				mu.Lock()
				for i := range l.Items {
					key := ns + "/" + l.Items[i].Name
					if _, seen := readyAt[key]; !seen && ready(&l.Items[i]) {
						readyAt[key] = now
					}
				}
				mu.Unlock()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	created := createPaced(t, pods, 250*time.Millisecond)
	err := proc.Poll(context.Background(), 3*time.Minute, 200*time.Millisecond, "every pod Ready", func(context.Context) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return len(readyAt) == len(pods), nil
	})
	cancel()
	<-done
	require.NoError(t, err)
	var w, wo []time.Duration
	for key, at := range readyAt {
		d := at.Sub(created[key])
		if strings.HasPrefix(key, with+"/") {
			w = append(w, d)
		} else {
			wo = append(wo, d)
		}
	}
	pw, pwo := percentile(w, 50), percentile(wo, 50)
	report("pod creation to Ready with / without the webhook, p50", fmt.Sprintf("%s / %s, the webhook's share %s (p99 %s / %s; %d pods each)",
		seconds(pw), seconds(pwo), seconds(pw-pwo), seconds(percentile(w, 99)), seconds(percentile(wo, 99)), len(w)), "share 1s", pw-pwo <= time.Second)
}
