package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/node"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/workloads"
)

// statusPort is where every test workload serves its workloads.Status.
const statusPort = 8080

// newNamespace creates namespace name, opted in to injection as a user opts one in (or not), and
// deletes it when the test ends (kube-controller-manager removes what it holds).
func newNamespace(t *testing.T, name string, optedIn bool) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if optedIn {
		ns.Labels = map[string]string{annotations.InjectionLabel: annotations.InjectionEnabled}
	}
	_, err := k8s.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = k8s.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	if optedIn {
		// What the tests measure starts with a namespace the API server and the webhook know.
		require.NoError(t, cluster.WaitWired(context.Background(), name))
	}
	return name
}

// serviceAccount creates a service account: the SPIFFE ID is spiffe://<td>/ns/<ns>/sa/<name>.
func serviceAccount(t *testing.T, ns, name string) {
	t.Helper()
	_, err := k8s.CoreV1().ServiceAccounts(ns).Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	require.NoError(t, err)
}

// spiffeID is the SPIFFE ID the webhook's registration gives a pod of service account sa in ns.
func spiffeID(ns, sa string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", node.TrustDomain, ns, sa)
}

// workloadPod is a pod running the test workload with args, its status served on statusPort.
func workloadPod(ns, name, sa string, args ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name}},
		Spec:       workloadSpec(sa, args...),
	}
}

func workloadSpec(sa string, args ...string) corev1.PodSpec {
	zero := int64(0)
	return corev1.PodSpec{
		ServiceAccountName:            sa,
		TerminationGracePeriodSeconds: &zero,
		Containers: []corev1.Container{{
			Name: "app", Image: node.WorkloadImage, ImagePullPolicy: corev1.PullNever, Args: args,
			Ports: []corev1.ContainerPort{{Name: "status", ContainerPort: statusPort}},
		}},
	}
}

// workloadDeployment is a Deployment of replicas test workloads.
func workloadDeployment(ns, name, sa string, replicas int32, args ...string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: workloadSpec(sa, args...)},
		},
	}
}

func createPod(t *testing.T, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	got, err := k8s.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{})
	require.NoError(t, err)
	return got
}

// waitPod waits until pod ns/name satisfies cond and returns it.
func waitPod(t *testing.T, ns, name, what string, timeout time.Duration, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	err := proc.Poll(context.Background(), timeout, 200*time.Millisecond, fmt.Sprintf("pod %s/%s %s", ns, name, what), func(ctx context.Context) (bool, error) {
		var err error
		p, err = k8s.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return cond(p), nil
	})
	if err != nil {
		require.NoError(t, err, "%s\n--- kubelet log ---\n%s", describe(ns, name), cluster.LogTail("kubelet"))
	}
	return p
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// describe is `kubectl describe pod`, for a failure message.
func describe(ns, name string) string {
	out, _ := cluster.Kubectl(context.Background(), "-n", ns, "describe", "pod", name)
	return out
}

// readyPods waits until the Deployment's pods (label app=name) are all Ready, replicas of them, and
// returns them.
func readyPods(t *testing.T, ns, app string, replicas int, timeout time.Duration) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	err := proc.Poll(context.Background(), timeout, 300*time.Millisecond, fmt.Sprintf("%d ready pods app=%s in %s", replicas, app, ns), func(ctx context.Context) (bool, error) {
		l, err := k8s.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return false, err
		}
		pods = pods[:0]
		for _, p := range l.Items {
			if p.DeletionTimestamp == nil && ready(&p) {
				pods = append(pods, p)
			}
		}
		return len(pods) == replicas && len(l.Items) == replicas, nil
	})
	require.NoError(t, err)
	return pods
}

var httpc = &http.Client{Timeout: 3 * time.Second}

// status reads a test workload's status from its pod's address (the host reaches pods on the
// node's bridge).
func status(ctx context.Context, p *corev1.Pod) (workloads.Status, error) {
	var st workloads.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:%d/", p.Status.PodIP, statusPort), nil)
	if err != nil {
		return st, err
	}
	r, err := httpc.Do(req)
	if err != nil {
		return st, err
	}
	defer r.Body.Close()
	return st, json.NewDecoder(r.Body).Decode(&st)
}

// waitStatus polls a workload's status until cond holds.
func waitStatus(t *testing.T, p *corev1.Pod, what string, timeout time.Duration, cond func(workloads.Status) bool) workloads.Status {
	t.Helper()
	var st workloads.Status
	err := proc.Poll(context.Background(), timeout, 250*time.Millisecond, fmt.Sprintf("%s/%s: %s", p.Namespace, p.Name, what), func(ctx context.Context) (bool, error) {
		var err error
		if st, err = status(ctx, p); err != nil {
			return false, err
		}
		if !cond(st) {
			return false, fmt.Errorf("status %+v", st)
		}
		return true, nil
	})
	require.NoError(t, err)
	return st
}

// percentile is the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p/100*float64(len(s))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(s) {
		i = len(s) - 1
	}
	return s[i]
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

// deleteAndWait deletes a pod and waits until it is gone.
func deleteAndWait(t *testing.T, ns, name string) {
	t.Helper()
	err := k8s.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return
	}
	require.NoError(t, err)
	require.NoError(t, proc.Poll(context.Background(), time.Minute, 200*time.Millisecond, "pod "+name+" gone", func(ctx context.Context) (bool, error) {
		_, err := k8s.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}))
}

func hasCSIVolume(p *corev1.Pod) bool {
	for _, v := range p.Spec.Volumes {
		if v.CSI != nil && v.CSI.Driver == "csi.spiffe.io" && v.CSI.ReadOnly != nil && *v.CSI.ReadOnly {
			return true
		}
	}
	return false
}

func joinErrs(errs []string) string { return strings.Join(errs, "; ") }
