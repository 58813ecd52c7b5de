package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/node"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/workloads"
)

// The fault tests run while the mTLS pair (identity_test.go) calls continuously; each asserts that
// no request failed and no invalid SVID was held across its fault, and reports it as a NODE figure.

// svidTTL is the X.509-SVID lifetime node.WebhookConfig registers pods with (registration.ttl).
const svidTTL = 2 * time.Minute

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := cluster.Kubectl(context.Background(), args...)
	require.NoError(t, err)
	return out
}

// waitRotated waits until both workloads of the pair hold a newer SVID than in s.
func waitRotated(t *testing.T, m *mtls, s snapshot, rotations int, timeout time.Duration) {
	t.Helper()
	waitStatus(t, s.client, fmt.Sprintf("%d rotations", rotations), timeout, func(st workloads.Status) bool { return st.Serials >= s.clientSt.Serials+rotations })
	waitStatus(t, s.server, fmt.Sprintf("%d rotations", rotations), timeout, func(st workloads.Status) bool { return st.Serials >= s.serverSt.Serials+rotations })
}

// TestSVIDRotation: with 2-minute SVIDs both sides rotate (at half their lifetime) twice while the
// client calls; no call fails.
func TestSVIDRotation(t *testing.T) {
	m := mtlsPair(t)
	before := m.snapshot(t)
	waitRotated(t, m, before, 2, 3*svidTTL)
	m.since(t, "SVID rotation (2 rotations of 2-minute SVIDs)", before)
}

// TestSPIREAgentRestart: the agent's pod is deleted and its DaemonSet replaces it; the workloads
// keep their SVIDs meanwhile, and are served again by the new agent (they rotate).
func TestSPIREAgentRestart(t *testing.T) {
	m := mtlsPair(t)
	before := m.snapshot(t)
	kubectl(t, "-n", node.SPIRENamespace, "delete", "pod", "-l", "app.kubernetes.io/name=spire-agent", "--wait=true")
	require.NoError(t, cluster.Rollout(context.Background(), node.SPIRENamespace, "daemonset/spire-agent", 3*time.Minute))
	waitRotated(t, m, before, 1, 2*svidTTL)
	waitStatus(t, before.client, "20 more calls", time.Minute, func(st workloads.Status) bool { return st.OK >= before.clientSt.OK+20 })
	m.since(t, "SPIRE agent restart", before)
}

// TestSPIREServerDownLongerThanHalfAnSVIDLifetime: the SPIRE server (and spire-controller-manager,
// its sidecar) is scaled to zero for 65 s, longer than the 60 s after which the agent renews
// SVIDs; it starts when both workloads' SVIDs were renewed recently enough to outlive the outage.
// The agent keeps serving the SVIDs it has; once the server is back they are renewed.
func TestSPIREServerDownLongerThanHalfAnSVIDLifetime(t *testing.T) {
	m := mtlsPair(t)
	outage := svidTTL/2 + 5*time.Second
	var before snapshot
	require.NoError(t, proc.Poll(context.Background(), 2*svidTTL, time.Second, "both SVIDs fresh enough to outlive the outage", func(context.Context) (bool, error) {
		before = m.snapshot(t)
		left := min(time.Until(time.Unix(before.clientSt.NotAfter, 0)), time.Until(time.Unix(before.serverSt.NotAfter, 0)))
		return left > outage+20*time.Second, nil
	}))
	kubectl(t, "-n", node.SPIRENamespace, "scale", "statefulset/spire-server", "--replicas=0")
	require.NoError(t, proc.Poll(context.Background(), time.Minute, 200*time.Millisecond, "spire-server gone", func(ctx context.Context) (bool, error) {
		l, err := k8s.CoreV1().Pods(node.SPIRENamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=spire-server"})
		return err == nil && len(l.Items) == 0, err
	}))
	down := time.Now()
	time.Sleep(outage)
	kubectl(t, "-n", node.SPIRENamespace, "scale", "statefulset/spire-server", "--replicas=1")
	require.NoError(t, cluster.Rollout(context.Background(), node.SPIRENamespace, "statefulset/spire-server", 3*time.Minute))
	t.Logf("SPIRE server down for %s", time.Since(down).Round(time.Second))
	waitRotated(t, m, before, 1, 2*svidTTL)
	m.since(t, fmt.Sprintf("SPIRE server down %s (SVID lifetime %s)", outage, svidTTL), before)
}

// TestKubeletRestart: the kubelet stops and starts again; running pods keep calling, and a pod
// created afterwards gets its identity (the k8s workload attestor asks the new kubelet).
func TestKubeletRestart(t *testing.T) {
	m := mtlsPair(t)
	before := m.snapshot(t)
	require.NoError(t, cluster.StopKubelet())
	time.Sleep(10 * time.Second)
	require.NoError(t, cluster.StartKubelet(context.Background()))
	waitStatus(t, before.client, "20 more calls", time.Minute, func(st workloads.Status) bool { return st.OK >= before.clientSt.OK+20 })
	m.since(t, "kubelet restart", before)

	ns := newNamespace(t, "node-after-kubelet", true)
	p := createPod(t, workloadPod(ns, "after", "default", "first-svid"))
	p = waitPod(t, ns, p.Name, "running", 2*time.Minute, func(p *corev1.Pod) bool { return p.Status.PodIP != "" })
	st := waitStatus(t, p, "an SVID", 2*time.Minute, func(st workloads.Status) bool { return st.FirstSVID != 0 })
	assert.Equal(t, spiffeID(ns, "default"), st.ID)
}

// TestNodeDrain: the node is cordoned and the pair's pods are evicted (kubectl drain); their
// Deployments re-create them, wired by the webhook, and they start once the node is uncordoned,
// with the same SPIFFE IDs, and call each other again without failures.
func TestNodeDrain(t *testing.T) {
	m := mtlsPair(t)
	before := m.snapshot(t)
	kubectl(t, "drain", node.NodeName, "--ignore-daemonsets", "--delete-emptydir-data", "--pod-selector=app in (mtls-server,mtls-client)", "--timeout=2m")
	uncordoned := false
	defer func() {
		if !uncordoned {
			kubectl(t, "uncordon", node.NodeName)
		}
	}()
	var pending []corev1.Pod
	require.NoError(t, proc.Poll(context.Background(), time.Minute, 300*time.Millisecond, "replacement pods pending on the cordoned node", func(ctx context.Context) (bool, error) {
		l, err := k8s.CoreV1().Pods(mtlsNS).List(ctx, metav1.ListOptions{LabelSelector: "app in (mtls-server,mtls-client)"})
		if err != nil {
			return false, err
		}
		pending = pending[:0]
		for _, p := range l.Items {
			if p.Status.Phase == corev1.PodPending && p.Spec.NodeName == "" {
				pending = append(pending, p)
			}
		}
		return len(pending) == 2, nil
	}))
	for _, p := range pending {
		assert.True(t, hasCSIVolume(&p), "%s re-created wired", p.Name)
		assert.Equal(t, string(annotations.ModeWorkload), p.Labels[annotations.InjectedLabel])
	}
	kubectl(t, "uncordon", node.NodeName)
	uncordoned = true
	s, c := m.pods(t)
	assert.NotEqual(t, before.serverPod, s.Name, "the server pod was replaced")
	assert.NotEqual(t, before.clientPod, c.Name, "the client pod was replaced")
	waitStatus(t, c, "calling again", time.Minute, func(st workloads.Status) bool { return st.OK > 0 })
	again := m.snapshot(t)
	assert.Equal(t, m.clientID, again.clientSt.ID, "the same SPIFFE ID after the drain")
	assert.Equal(t, m.serverID, again.serverSt.ID, "the same SPIFFE ID after the drain")
	waitStatus(t, c, "20 more calls", time.Minute, func(st workloads.Status) bool { return st.OK >= again.clientSt.OK+20 })
	m.since(t, "the pair's first 20 calls after a node drain", again)
}

// churn creates pods, one every interval, in an opted-in namespace, while during runs beside it;
// it returns how many creations failed and how many pods were stored without the webhook's wiring.
func churn(t *testing.T, ns string, count int, interval time.Duration, during func()) (failed, unwired int, errs []string) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); during() }()
	for i := range count {
		p, err := k8s.CoreV1().Pods(ns).Create(context.Background(), workloadPod(ns, fmt.Sprintf("churn-%03d", i), "default", "idle"), metav1.CreateOptions{})
		switch {
		case err != nil:
			failed++
			errs = append(errs, err.Error())
		case !hasCSIVolume(p) || p.Labels[annotations.InjectedLabel] == "":
			unwired++
		}
		time.Sleep(interval)
	}
	<-done
	return failed, unwired, errs
}

// TestWebhookRollingUpdateDuringPodCreation: a configuration change re-applied with `kubectl
// apply -k` rolls the webhook's Deployment (the ConfigMap's name carries a hash of its content;
// maxUnavailable 0) while pods are being created: every pod is admitted and wired.
func TestWebhookRollingUpdateDuringPodCreation(t *testing.T) {
	ns := newNamespace(t, "node-rollout", true)
	changed := node.WebhookConfig + `  resources:
    requests: {cpu: 10m, memory: 24Mi}
    limits: {memory: 80Mi}
`
	rolled := make(chan error, 1)
	failed, unwired, errs := churn(t, ns, 60, 250*time.Millisecond, func() {
		time.Sleep(2 * time.Second)
		rolled <- cluster.DeployWebhook(context.Background(), changed)
	})
	require.NoError(t, <-rolled, "the rolling update")
	report("failed pod creations during a rolling update of the webhook", fmt.Sprintf("%d failed, %d unwired of 60", failed, unwired), "0", failed+unwired == 0)
	assert.Zero(t, failed, "creations refused: %s", joinErrs(errs))
	assert.Zero(t, unwired, "pods stored without the webhook's wiring")
}

// webhookPIDs are the PIDs of the webhook's processes in pod p (found through the kubelet's
// cgroup of the pod).
func webhookPIDs(t *testing.T, p corev1.Pod) []int {
	t.Helper()
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cg, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		if strings.HasPrefix(string(cmd), "/spire-mesh-injector\x00") && strings.Contains(string(cg), "pod"+string(p.UID)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestWebhookReplicaKilledDuringPodChurn: one of the webhook's two replicas is killed (SIGKILL)
// while pods are being created; the other serves, the kubelet restarts the killed one, and no pod
// creation fails or goes unwired.
func TestWebhookReplicaKilledDuringPodChurn(t *testing.T) {
	ns := newNamespace(t, "node-kill", true)
	require.NoError(t, cluster.Rollout(context.Background(), node.WebhookNamespace, "deployment/spire-mesh-injector", 2*time.Minute))
	var running []corev1.Pod
	require.NoError(t, proc.Poll(context.Background(), time.Minute, 500*time.Millisecond, "two webhook replicas, none terminating", func(ctx context.Context) (bool, error) {
		pods, err := k8s.CoreV1().Pods(node.WebhookNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=spire-mesh-injector"})
		if err != nil {
			return false, err
		}
		running = running[:0]
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && ready(&p) {
				running = append(running, p)
			}
		}
		return len(running) == 2 && len(pods.Items) == 2, nil
	}))
	victim := running[0]
	pids := webhookPIDs(t, victim)
	require.Len(t, pids, 1, "the webhook process of %s", victim.Name)
	failed, unwired, errs := churn(t, ns, 40, 250*time.Millisecond, func() {
		time.Sleep(3 * time.Second)
		require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	})
	report("failed pod creations with one webhook replica killed", fmt.Sprintf("%d failed, %d unwired of 40", failed, unwired), "0", failed+unwired == 0)
	assert.Zero(t, failed, "creations refused: %s", joinErrs(errs))
	assert.Zero(t, unwired, "pods stored without the webhook's wiring")
	require.NoError(t, cluster.Rollout(context.Background(), node.WebhookNamespace, "deployment/spire-mesh-injector", 2*time.Minute))
	got, err := k8s.CoreV1().Pods(node.WebhookNamespace).Get(context.Background(), victim.Name, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Positive(t, got.Status.ContainerStatuses[0].RestartCount, "the kubelet restarted the killed replica")
}

// TestWebhookDownWithTheValidatingPolicy: with the webhook scaled to zero (failurePolicy Ignore),
// the validating-policy component refuses pods in opted-in namespaces with the cause, and pods in
// other namespaces are created as usual.
func TestWebhookDownWithTheValidatingPolicy(t *testing.T) {
	optedIn := newNamespace(t, "node-down-optedin", true)
	other := newNamespace(t, "node-down-other", false)
	kubectl(t, "-n", node.WebhookNamespace, "scale", "deployment/spire-mesh-injector", "--replicas=0")
	defer func() {
		kubectl(t, "-n", node.WebhookNamespace, "scale", "deployment/spire-mesh-injector", "--replicas=2")
		require.NoError(t, cluster.Rollout(context.Background(), node.WebhookNamespace, "deployment/spire-mesh-injector", 2*time.Minute))
	}()
	require.NoError(t, proc.Poll(context.Background(), time.Minute, 300*time.Millisecond, "no webhook pod left", func(ctx context.Context) (bool, error) {
		l, err := k8s.CoreV1().Pods(node.WebhookNamespace).List(ctx, metav1.ListOptions{})
		return err == nil && len(l.Items) == 0, err
	}))
	const tries = 10
	refused, admitted := 0, 0
	var cause string
	for i := range tries {
		_, err := k8s.CoreV1().Pods(optedIn).Create(context.Background(), workloadPod(optedIn, fmt.Sprintf("refused-%d", i), "default", "idle"), metav1.CreateOptions{})
		if err != nil {
			refused++
			cause = err.Error()
		}
		_, err = k8s.CoreV1().Pods(other).Create(context.Background(), workloadPod(other, fmt.Sprintf("fine-%d", i), "default", "idle"), metav1.CreateOptions{})
		if err == nil {
			admitted++
		}
	}
	report("opted-in pods created unwired while the webhook was down", fmt.Sprintf("%d of %d (refused by the validating policy)", tries-refused, tries), "0", refused == tries)
	report("pod creations refused in other namespaces while the webhook was down", fmt.Sprintf("%d of %d", tries-admitted, tries), "0", admitted == tries)
	assert.Equal(t, tries, refused, "every opted-in pod refused")
	assert.Contains(t, cause, "requires SPIRE identity", "the refusal says why")
	assert.Contains(t, cause, "webhook was unreachable")
	assert.Equal(t, tries, admitted, "other namespaces unaffected")
}
