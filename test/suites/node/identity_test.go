package node

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/workloads"
)

// mtlsNS holds the mTLS server and client the identity test starts and the fault tests keep
// calling.
const mtlsNS = "node-mtls"

// mtls is the pair of plain workloads doing mTLS with SPIFFE-ID authorization: a server
// (Deployment mtls-server behind Service mtls-server, accepting only the client's ID) and a client
// (Deployment mtls-client) calling it through the Service, a new TLS connection every 200 ms, each
// counting failed requests and checking its own SVID on every update.
type mtls struct {
	serverID, clientID string
	service            string
}

var (
	pairOnce sync.Once
	pair     *mtls
	pairErr  error
)

// mtlsPair starts the pair once for the suite; the tests that use it read its counters before and
// after what they do.
func mtlsPair(t *testing.T) *mtls {
	t.Helper()
	pairOnce.Do(func() { pair, pairErr = startPair(t) })
	require.NoError(t, pairErr)
	return pair
}

func startPair(t *testing.T) (*mtls, error) {
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: mtlsNS, Labels: map[string]string{annotations.InjectionLabel: annotations.InjectionEnabled}}}
	if _, err := k8s.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	if err := cluster.WaitWired(ctx, mtlsNS); err != nil {
		return nil, err
	}
	for _, sa := range []string{"server", "client", "stranger"} {
		if _, err := k8s.CoreV1().ServiceAccounts(mtlsNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	m := &mtls{serverID: spiffeID(mtlsNS, "server"), clientID: spiffeID(mtlsNS, "client")}
	svc, err := k8s.CoreV1().Services(mtlsNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "mtls-server"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "mtls-server"},
			Ports: []corev1.ServicePort{{Name: "https", Port: 8443, TargetPort: intstr.FromInt32(8443)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	m.service = net.JoinHostPort(svc.Spec.ClusterIP, "8443")
	server := workloadDeployment(mtlsNS, "mtls-server", "server", 1, "server", "-allow", m.clientID)
	withIdentityProbe(&server.Spec.Template.Spec)
	if _, err := k8s.AppsV1().Deployments(mtlsNS).Create(ctx, server, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	readyPods(t, mtlsNS, "mtls-server", 1, 3*time.Minute)
	// The Service is reachable (kube-proxy programmed it) before the client starts counting.
	if err := proc.Poll(ctx, time.Minute, 200*time.Millisecond, "Service mtls-server reachable", func(ctx context.Context) (bool, error) {
		c, err := net.DialTimeout("tcp", m.service, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil, err
	}); err != nil {
		return nil, err
	}
	client := workloadDeployment(mtlsNS, "mtls-client", "client", 1, "client", "-server", m.service, "-server-id", m.serverID)
	withIdentityProbe(&client.Spec.Template.Spec)
	if _, err := k8s.AppsV1().Deployments(mtlsNS).Create(ctx, client, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	readyPods(t, mtlsNS, "mtls-client", 1, 3*time.Minute)
	return m, nil
}

// withIdentityProbe makes the workload Ready only once it holds an SVID.
func withIdentityProbe(spec *corev1.PodSpec) {
	spec.Containers[0].ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(statusPort)}},
		PeriodSeconds: 1,
	}
}

// pods are the pair's current pods.
func (m *mtls) pods(t *testing.T) (server, client *corev1.Pod) {
	t.Helper()
	s := readyPods(t, mtlsNS, "mtls-server", 1, 3*time.Minute)
	c := readyPods(t, mtlsNS, "mtls-client", 1, 3*time.Minute)
	return &s[0], &c[0]
}

// snapshot is both workloads' counters at one moment.
type snapshot struct {
	server, client       *corev1.Pod
	serverSt, clientSt   workloads.Status
	serverPod, clientPod string
}

func (m *mtls) snapshot(t *testing.T) snapshot {
	t.Helper()
	s, c := m.pods(t)
	ctx := context.Background()
	ss, err := status(ctx, s)
	require.NoError(t, err)
	cs, err := status(ctx, c)
	require.NoError(t, err)
	return snapshot{server: s, client: c, serverSt: ss, clientSt: cs, serverPod: s.Name, clientPod: c.Name}
}

// since checks what happened between before and now, in the same two processes: the client kept
// succeeding, no request failed, neither side ever held an invalid SVID, and the IDs are the
// registrations'. It reports the failed requests as the fault's figure and fails the test on any.
func (m *mtls) since(t *testing.T, fault string, before snapshot) snapshot {
	t.Helper()
	after := m.snapshot(t)
	require.Equal(t, before.clientPod, after.clientPod, "the client pod was replaced")
	require.Equal(t, before.serverPod, after.serverPod, "the server pod was replaced")
	require.Equal(t, before.clientSt.Started, after.clientSt.Started, "the client process restarted")
	require.Equal(t, before.serverSt.Started, after.serverSt.Started, "the server process restarted")
	failed := after.clientSt.Failed - before.clientSt.Failed
	invalid := after.clientSt.InvalidSVID - before.clientSt.InvalidSVID + after.serverSt.InvalidSVID - before.serverSt.InvalidSVID
	calls := after.clientSt.OK - before.clientSt.OK
	report("failed requests during "+fault, fmt.Sprintf("%d of %d, %d invalid SVIDs held", failed, calls+failed, invalid), "0", failed == 0 && invalid == 0)
	assert.Zero(t, failed, "failed mTLS requests during %s (last error: %s)", fault, after.clientSt.LastError)
	assert.Zero(t, invalid, "invalid SVIDs held during %s (%s / %s)", fault, after.clientSt.LastError, after.serverSt.LastError)
	assert.Greater(t, calls, int64(0), "the client kept calling during %s", fault)
	assert.Equal(t, m.clientID, after.clientSt.ID)
	assert.Equal(t, m.serverID, after.serverSt.ID)
	assert.Equal(t, m.serverID, after.clientSt.PeerID, "the client reached the server it authorized")
	return after
}

// TestMTLSBetweenPlainPods: two plain pods the kubelet started, wired by the webhook, get their
// identities from SPIRE through the CSI volume (k8s_psat node attestation, the k8s workload
// attestor asking the real kubelet) and do mTLS with SPIFFE-ID authorization continuously, through
// a Service (kube-proxy); a pod of another service account is refused by the server.
func TestMTLSBetweenPlainPods(t *testing.T) {
	m := mtlsPair(t)
	s, c := m.pods(t)
	for _, p := range []*corev1.Pod{s, c} {
		assert.Equal(t, string(annotations.ModeWorkload), p.Labels[annotations.InjectedLabel], "%s wired by the webhook", p.Name)
		assert.True(t, hasCSIVolume(p), "%s has the SPIFFE CSI volume", p.Name)
	}
	before := m.snapshot(t)
	waitStatus(t, c, "10 more successful calls", time.Minute, func(st workloads.Status) bool { return st.OK >= before.clientSt.OK+10 })
	m.since(t, "steady state", before)

	// A workload of another service account: the server refuses it, it never gets through.
	stranger := createPod(t, workloadPod(mtlsNS, "stranger", "stranger", "client", "-server", m.service, "-server-id", m.serverID))
	t.Cleanup(func() { deleteAndWait(t, mtlsNS, stranger.Name) })
	stranger = waitPod(t, mtlsNS, stranger.Name, "running", 2*time.Minute, func(p *corev1.Pod) bool { return p.Status.PodIP != "" && ready(p) })
	st := waitStatus(t, stranger, "refused several times", time.Minute, func(st workloads.Status) bool { return st.Failed >= 3 })
	assert.Zero(t, st.OK, "the stranger never got through")
	assert.Equal(t, spiffeID(mtlsNS, "stranger"), st.ID, "it has its own identity")
	assert.Contains(t, st.LastError, "remote error", "refused in the TLS handshake")
}

// TestJWTHelperAsNativeSidecar: a pod annotated spiffe.io/audience gets the JWT helper as a native
// sidecar (an init container that keeps running, with a startup probe); the kubelet starts the
// app only once the helper is ready, which the kubelet's own container statuses show and the app
// confirms (its token was there at its first read); the app's token validates against the bundle
// the helper wrote and against the one the Workload API serves it.
func TestJWTHelperAsNativeSidecar(t *testing.T) {
	ns := newNamespace(t, "node-jwt", true)
	serviceAccount(t, ns, "checkout")
	p := workloadPod(ns, "checkout", "checkout", "jwt", "-audience", "payments")
	p.Annotations = map[string]string{annotations.AudienceAnnotation: "payments"}
	created := createPod(t, p)

	var helper *corev1.Container
	for i := range created.Spec.InitContainers {
		if created.Spec.InitContainers[i].Name == mutators.JWTHelperContainer {
			helper = &created.Spec.InitContainers[i]
		}
	}
	require.NotNil(t, helper, "the helper is an init container")
	require.NotNil(t, helper.RestartPolicy)
	assert.Equal(t, corev1.ContainerRestartPolicyAlways, *helper.RestartPolicy, "a native sidecar")
	require.NotNil(t, helper.StartupProbe, "held by its startup probe")

	got := waitPod(t, ns, p.Name, "Ready", 3*time.Minute, ready)
	var helperStarted, appStarted time.Time
	for _, s := range got.Status.InitContainerStatuses {
		if s.Name == mutators.JWTHelperContainer {
			require.NotNil(t, s.State.Running, "the helper keeps running")
			require.NotNil(t, s.Started)
			assert.True(t, *s.Started, "the kubelet saw its startup probe pass")
			helperStarted = s.State.Running.StartedAt.Time
		}
	}
	for _, s := range got.Status.ContainerStatuses {
		if s.Name == "app" {
			require.NotNil(t, s.State.Running)
			appStarted = s.State.Running.StartedAt.Time
		}
	}
	require.False(t, helperStarted.IsZero() || appStarted.IsZero())
	assert.False(t, appStarted.Before(helperStarted), "the kubelet started the app (%s) after the helper (%s)", appStarted, helperStarted)

	st := waitStatus(t, got, "tokens validated", time.Minute, func(st workloads.Status) bool { return st.OK >= 3 })
	assert.True(t, st.TokenAtStart, "the token was there when the app started: the kubelet held it until the helper was ready")
	assert.Zero(t, st.Failed, "every read of the token validated (last error: %s)", st.LastError)
	assert.Equal(t, spiffeID(ns, "checkout"), st.ID, "sub is the pod's SPIFFE ID")
	report("JWT helper: app started after the helper was ready", fmt.Sprintf("helper %s, app %s (kubelet's start times); token present at the app's first read: %v",
		helperStarted.Format(time.TimeOnly), appStarted.Format(time.TimeOnly), st.TokenAtStart), "app after helper", !appStarted.Before(helperStarted) && st.TokenAtStart)
}
