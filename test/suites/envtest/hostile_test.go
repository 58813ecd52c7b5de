package envtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/bench/perf"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
	"github.com/spire-mesh-injector/spire-mesh-injector/webhook"
)

// A crowd of clients, each from its own loopback address (every address of 127.0.0.0/8 reaches
// loopback), holding kept-alive TLS connections to the webhook's port open and idle after one
// request, as any pod in a cluster can. The API server calls the webhook from 127.0.0.1.
type crowd struct {
	addr    string
	stop    chan struct{}
	wg      sync.WaitGroup
	held    atomic.Int64
	dialled atomic.Int64
}

// startCrowd makes clients 127.0.0.2 ... 127.0.0.<1+clients> each keep perClient connections open,
// opening a new one whenever the webhook closes one, until stop.
func startCrowd(t *testing.T, addr string, clients, perClient int) *crowd {
	c := &crowd{addr: addr, stop: make(chan struct{})}
	for i := range clients {
		ip := net.IPv4(127, 0, 0, byte(2+i))
		for range perClient {
			c.wg.Go(func() { c.hold(ip) })
		}
	}
	t.Cleanup(c.close)
	return c
}

func (c *crowd) hold(ip net.IP) {
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		d := &net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: ip}}
		conn, err := tls.DialWithDialer(d, "tcp", c.addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // an attacker's client
		c.dialled.Add(1)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		// One request, as a kept-alive client makes, then idle: it only waits for the webhook to
		// close the connection.
		r := bufio.NewReader(conn)
		if _, err := conn.Write([]byte("GET " + webhook.Path + " HTTP/1.1\r\nHost: webhook\r\n\r\n")); err != nil {
			_ = conn.Close()
			continue
		}
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			_ = conn.Close()
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		c.held.Add(1)
		closed := make(chan struct{})
		go func() { _, _ = io.Copy(io.Discard, r); close(closed) }()
		select {
		case <-c.stop:
		case <-closed:
		}
		_ = conn.Close()
		c.held.Add(-1)
	}
}

func (c *crowd) close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.wg.Wait()
}

// TestIdleCrowdDoesNotKeepTheAPIServerOut: eight clients, each holding more idle connections than
// its share, and together twice the webhook's connection cap, keep reconnecting while pods are
// created through the API server. Every pod is wired (none admitted unwired through the failure
// policy), and readiness stays true throughout (it needs no connection slot), so the replica is
// never taken out of the webhook's endpoints.
func TestIdleCrowdDoesNotKeepTheAPIServerOut(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t, true, nil)
	addr := net.JoinHostPort(cp.Host, strconv.Itoa(cp.Port))
	before := metricSum(t, "spire_mesh_injector_connections_evicted_total", nil) + metricSum(t, "spire_mesh_injector_connections_refused_total", nil)
	c := startCrowd(t, addr, 8, 160)
	eventually(t, "the crowd fills the listener", func() bool { return c.held.Load() >= 400 })

	var notReady atomic.Int64
	readyStop := make(chan struct{})
	var readyWG sync.WaitGroup
	readyWG.Go(func() {
		for {
			select {
			case <-readyStop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if ok, _ := proc.StatusIs(suiteSrv.HealthURL+"/readyz", http.StatusOK)(ctx); !ok {
				notReady.Add(1)
			}
		}
	})
	// At once, as a Deployment's scale-up does: the API server needs more connections than the one
	// it keeps alive, and each must get through the crowd.
	var creates sync.WaitGroup
	for i := range 40 {
		creates.Go(func() {
			p := plainPod(ns, fmt.Sprintf("app-%d", i), nil)
			warns, err := createCollectingWarnings(ctx, p)
			assert.NoError(t, err)
			assert.Empty(t, warns, "the webhook answered pod %s (no failure-policy warning)", p.Name)
			assert.Equal(t, "workload", p.Labels[annotations.InjectedLabel], "pod %s wired", p.Name)
		})
	}
	creates.Wait()
	close(readyStop)
	readyWG.Wait()
	assert.Zero(t, notReady.Load(), "readiness never failed while the crowd held the listener")
	after := metricSum(t, "spire_mesh_injector_connections_evicted_total", nil) + metricSum(t, "spire_mesh_injector_connections_refused_total", nil)
	assert.Greater(t, after-before, 100.0, "the crowd was held to its share and gave way at the cap")
	t.Logf("crowd: %d connections held at the end, %d dialled; %v refused or evicted", c.held.Load(), c.dialled.Load(), after-before)
}

// forgedReview is an AdmissionReview of a pod creation in namespace ns, as anyone who can reach the
// webhook's port can send it, owned by a made-up controller and asking for a denial (an empty
// audience), so that the webhook would record an Event if it recorded anything.
func forgedReview(t *testing.T, ns string) []byte {
	p := plainPod(ns, "forged", nil)
	p.Annotations = map[string]string{annotations.AudienceAnnotation: ""}
	ownedByReplicaSet(p, "forged-rs", "0d6f2b0a-0000-4000-8000-000000000001")
	return podtest.ReviewBody(t, podtest.Request(ns, podtest.JSON(t, p)))
}

// TestForgedReviewsWriteNothing: reviews sent straight to the webhook's port (not by the API
// server) for a namespace that is not opted in, or does not exist, make the webhook write nothing
// to the API: no registration, no Event. It still answers them.
func TestForgedReviewsWriteNothing(t *testing.T) {
	ctx := context.Background()
	notOptedIn := namespace(t, false, nil)
	missing := "never-created-" + strconv.Itoa(int(time.Now().UnixNano()%100000))
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool()}}}
	url := "https://" + net.JoinHostPort(cp.Host, strconv.Itoa(cp.Port)) + webhook.Path
	skipped := metricSum(t, "spire_mesh_injector_events_dropped_total", map[string]string{"reason": "out-of-scope"})

	for _, ns := range []string{notOptedIn, missing} {
		// A pod wired as usual would have its namespace's registration ensured.
		plain := plainPod(ns, "wired", nil)
		for _, body := range [][]byte{podtest.ReviewBody(t, podtest.Request(ns, podtest.JSON(t, plain))), forgedReview(t, ns)} {
			resp, err := hc.Post(url, "application/json", bytes.NewReader(body))
			require.NoError(t, err)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode, "%s", b)
		}
	}
	assert.Equal(t, skipped+2, metricSum(t, "spire_mesh_injector_events_dropped_total", map[string]string{"reason": "out-of-scope"}))
	// Give a write the time it would take, then look: nothing.
	time.Sleep(2 * time.Second)
	for _, ns := range []string{notOptedIn, missing} {
		_, err := getCSID(ctx, ns)
		assert.True(t, apierrors.IsNotFound(err), "no registration for namespace %s", ns)
		var events corev1.EventList
		require.NoError(t, k8s.List(ctx, &events, client.InNamespace(ns)))
		assert.Empty(t, events.Items, "no Event in namespace %s", ns)
	}
	assert.GreaterOrEqual(t, metricSum(t, "spire_mesh_injector_registration_ensures_total", map[string]string{"result": "skipped", "reason": "NamespaceNotOptedIn"}), 2.0)
}

// TestUsersDataSurvivesAdmission: through the API server, what a user wrote stays theirs — a
// status annotation copied from a wired pod does not make the webhook overwrite the user's own
// socket address or take a container named like the helper; istio-proxy's probe forwarding given
// through valueFrom is kept, with a warning; a hand-set injected label on a pod the webhook
// skips is removed; and pods the webhook could not record within the API server's limits are
// refused by the webhook, naming its limit.
func TestUsersDataSurvivesAdmission(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t, true, nil)
	copied := annotations.Status{Mode: annotations.ModeWorkload, Volumes: []string{"spiffe-workload-api"},
		Mounts: map[string][]string{"app": {"spiffe-workload-api"}}, Env: map[string][]string{"app": {"SPIFFE_ENDPOINT_SOCKET"}}}

	own := corev1.EnvVar{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix:///run/elsewhere/spire-agent.sock"}
	p := plainPod(ns, "copied", nil)
	p.Annotations = map[string]string{annotations.StatusAnnotation: copied.Encode()}
	p.Spec.Containers[0].Env = []corev1.EnvVar{own}
	require.NoError(t, k8s.Create(ctx, p))
	assert.Equal(t, []corev1.EnvVar{own}, p.Spec.Containers[0].Env, "the user's socket address is kept")

	p = plainPod(ns, "helper-named", nil)
	copied.Containers = []string{"spiffe-jwt-helper"}
	p.Annotations = map[string]string{annotations.StatusAnnotation: copied.Encode()}
	p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "spiffe-jwt-helper", Image: "registry.example/theirs:1"})
	err := k8s.Create(ctx, p)
	require.Error(t, err, "a container of the user's with the helper's name is refused, not taken")
	assert.Contains(t, err.Error(), "spec.containers[spiffe-jwt-helper]: the name is reserved by spire-mesh-injector")

	win := plainPod(ns, "windows", map[string]string{annotations.InjectedLabel: "mesh"})
	win.Spec.OS = &corev1.PodOS{Name: corev1.Windows}
	require.NoError(t, k8s.Create(ctx, win))
	assert.NotContains(t, win.Labels, annotations.InjectedLabel, "a hand-set injected label on a skipped pod is removed")

	many := plainPod(ns, "many", nil)
	for i := range 600 {
		many.Spec.Containers = append(many.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: "x"})
	}
	err = k8s.Create(ctx, many)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "spire-mesh-injector: metadata.annotations[spire-mesh-injector.io/status]: recording what spire-mesh-injector injected into 601 containers takes")
	assert.Contains(t, err.Error(), "over its limit of 32768 bytes")

	big := plainPod(ns, "big", nil)
	big.Annotations = map[string]string{"notes": strings.Repeat("x", 256<<10-300)}
	err = k8s.Create(ctx, big)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "spire-mesh-injector: metadata.annotations: with spire-mesh-injector's status annotation", "the webhook names the limit before the API server's own error")

	// A Deployment's pods arrive through the ReplicaSet controller (none runs here): a pod as it
	// would create it, istio-proxy taking ISTIO_KUBE_APP_PROBERS from a ConfigMap.
	mesh := podtest.Decode(t, mustReadPod(t, "jwt-classic-sidecar"))
	mesh.Namespace, mesh.Name = ns, "probers"
	for i := range mesh.Spec.Containers {
		if mesh.Spec.Containers[i].Name == "istio-proxy" {
			mesh.Spec.Containers[i].Env = append(mesh.Spec.Containers[i].Env, corev1.EnvVar{Name: "ISTIO_KUBE_APP_PROBERS", ValueFrom: &corev1.EnvVarSource{
				ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "probers"}, Key: "p"}}})
		}
	}
	warns, err := createCollectingWarnings(ctx, mesh)
	require.NoError(t, err)
	assert.Contains(t, warns, "spire-mesh-injector: ISTIO_KUBE_APP_PROBERS uses valueFrom: helper probes not via pilot-agent; STRICT mTLS fails them")
	for _, c := range mesh.Spec.Containers {
		for _, e := range c.Env {
			if e.Name == "ISTIO_KUBE_APP_PROBERS" {
				assert.NotNil(t, e.ValueFrom, "the app's probe forwarding is kept as written")
			}
		}
	}
}

// mustReadPod reads one of the golden cases' input pods as JSON.
func mustReadPod(t *testing.T, name string) []byte {
	js, _ := podtest.Load(t, filepath.Join(controlplane.Root(), "mutators", "testdata", name+".yaml"))
	return js
}

// deploymentMemoryLimit is the webhook container's memory limit in kustomize/base, the limit the
// real Deployment runs under.
func deploymentMemoryLimit(t *testing.T) int64 {
	b, err := os.ReadFile(filepath.Join(controlplane.Root(), "kustomize", "base", "deployment.yaml"))
	require.NoError(t, err)
	var d appsv1.Deployment
	require.NoError(t, yaml.UnmarshalStrict(b, &d))
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == "webhook" {
			return c.Resources.Limits.Memory().Value()
		}
	}
	t.Fatal("no webhook container in kustomize/base/deployment.yaml")
	return 0
}

// TestLargeReviewsStayWithinTheMemoryLimit runs the real `serve` binary as the Deployment does
// (MEMORY_LIMIT set from the container's limit) and floods it: 48 clients at once, each sending
// reviews of pods just under the 7 MiB request bound, for ten seconds. Its peak resident memory
// (VmHWM) stays under the Deployment's memory limit: bodies beyond the bytes-in-flight bound are
// shed with 503 at once. Reviews over the bound are refused with 413, counted and logged, and a pod
// whose wiring would be absurd (thousands of containers) is refused with the reason.
func TestLargeReviewsStayWithinTheMemoryLimit(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	bin, err := controlplane.Build(dir, "./cmd/spire-mesh-injector")
	require.NoError(t, err)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	require.NoError(t, cp.WriteKubeconfig(kubeconfig, "default"))
	limit := deploymentMemoryLimit(t)
	logPath := filepath.Join(dir, "serve.log")
	srv, err := perf.StartServe(ctx, perf.ServeOptions{Bin: bin, Kubeconfig: kubeconfig, LeaseNamespace: leaseNamespace,
		CertDir: cp.CertDir, CA: cp.CA, LogPath: logPath,
		// A lease of its own: the suite's server holds the usual one.
		Args: []string{"--leader-elect=false"},
		Env:  []string{"MEMORY_LIMIT=" + strconv.FormatInt(limit, 10)}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Stop() })
	idle, err := proc.ReadMemory(srv.PID())
	require.NoError(t, err)

	ns := namespace(t, true, nil)
	huge := plainPod(ns, "huge", nil)
	huge.Annotations = map[string]string{"payload": strings.Repeat("x", webhook.MaxRequestBytes-64<<10)}
	body := podtest.ReviewBody(t, podtest.Request(ns, podtest.JSON(t, huge)))
	require.Less(t, len(body), webhook.MaxRequestBytes)

	client, err := perf.TLSClient(cp.CA, 64, 30*time.Second)
	require.NoError(t, err)
	post := func(b []byte) (int, string) {
		resp, err := client.Post(srv.URL, "application/json", bytes.NewReader(b))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}
	var answered, shed, other atomic.Int64
	var otherSeen sync.Map
	deadline := time.Now().Add(10 * time.Second)
	var wg sync.WaitGroup
	for range 48 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				switch code, msg := post(body); code {
				case http.StatusOK:
					answered.Add(1)
				case http.StatusServiceUnavailable:
					shed.Add(1)
					time.Sleep(20 * time.Millisecond)
				default:
					other.Add(1)
					otherSeen.Store(code, msg)
				}
			}
		})
	}
	wg.Wait()
	mem, err := proc.ReadMemory(srv.PID())
	if err != nil {
		logged, _ := os.ReadFile(logPath)
		t.Fatalf("the server is gone (%v); its log ends:\n%s", err, logged[max(0, len(logged)-8<<10):])
	}
	t.Logf("48 clients, 10 s of %.1f MiB reviews: %d answered, %d shed, %d other; RSS idle %s, peak %s, limit %s",
		float64(len(body))/(1<<20), answered.Load(), shed.Load(), other.Load(), perf.MiB(idle.RSS), perf.MiB(mem.HWM), perf.MiB(limit))
	assert.Less(t, mem.HWM, limit, "peak resident memory stays under the Deployment's memory limit")
	assert.Positive(t, answered.Load(), "large reviews within the bound are answered")
	assert.Positive(t, shed.Load(), "beyond the bytes in flight, reviews are shed")
	assert.Zero(t, other.Load())
	otherSeen.Range(func(k, v any) bool { t.Logf("answer %v: %.200s", k, v); return true })

	// Over the request bound: refused at once, counted and logged.
	code, msg := post(append(body, bytes.Repeat([]byte(" "), webhook.MaxRequestBytes)...))
	assert.Equal(t, http.StatusRequestEntityTooLarge, code, msg)
	m, err := srv.Metrics(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1.0, m.Sum("spire_mesh_injector_requests_refused_total", "reason", "too-large"))
	assert.Positive(t, m.Sum("spire_mesh_injector_requests_refused_total", "reason", "shed"))
	logged, err := os.ReadFile(logPath)
	require.NoError(t, err)
	assert.Contains(t, string(logged), `"reason":"too-large"`)

	// Thousands of containers: refused with the reason, not answered with a huge patch.
	many := plainPod(ns, "many", nil)
	for i := range 20000 {
		many.Spec.Containers = append(many.Spec.Containers, corev1.Container{Name: "c" + strconv.Itoa(i), Image: "x"})
	}
	code, msg = post(podtest.ReviewBody(t, podtest.Request(ns, podtest.JSON(t, many))))
	require.Equal(t, http.StatusOK, code, msg)
	var review struct {
		Response struct {
			Allowed bool
			Patch   []byte
			Status  metav1.Status `json:"status"`
		} `json:"response"`
	}
	require.NoError(t, json.Unmarshal([]byte(msg), &review))
	assert.False(t, review.Response.Allowed)
	assert.Empty(t, review.Response.Patch)
	assert.Contains(t, review.Response.Status.Message, "recording what spire-mesh-injector injected into 20001 containers takes")
}
