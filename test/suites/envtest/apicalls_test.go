package envtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
)

// The API server counts the requests of one user, by kind, with API Priority and Fairness: it
// classifies every request into the first FlowSchema (by matchingPrecedence) that matches its user
// and verb, and counts it in apiserver_flowcontrol_dispatched_requests_total{flow_schema}. These
// FlowSchemas match only the replica's user, ahead of every built-in one but `exempt` and `probes`
// (which match neither this user nor its requests): its lease requests, its watches, its writes,
// and the rest (gets, lists, discovery): its live reads.
var flowKinds = []struct {
	kind  string
	rules func(leaseNS string) flowcontrolv1.PolicyRulesWithSubjects
}{
	{"leases", func(leaseNS string) flowcontrolv1.PolicyRulesWithSubjects {
		return flowcontrolv1.PolicyRulesWithSubjects{ResourceRules: []flowcontrolv1.ResourcePolicyRule{{
			Verbs: []string{"*"}, APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Namespaces: []string{leaseNS}}}}
	}},
	{"watches", func(string) flowcontrolv1.PolicyRulesWithSubjects {
		return flowcontrolv1.PolicyRulesWithSubjects{ResourceRules: []flowcontrolv1.ResourcePolicyRule{{
			Verbs: []string{"watch"}, APIGroups: []string{"*"}, Resources: []string{"*"}, ClusterScope: true, Namespaces: []string{"*"}}}}
	}},
	{"writes", func(string) flowcontrolv1.PolicyRulesWithSubjects {
		return flowcontrolv1.PolicyRulesWithSubjects{ResourceRules: []flowcontrolv1.ResourcePolicyRule{{
			Verbs: []string{"create", "update", "patch", "delete", "deletecollection"}, APIGroups: []string{"*"}, Resources: []string{"*"}, ClusterScope: true, Namespaces: []string{"*"}}}}
	}},
	{"reads", func(string) flowcontrolv1.PolicyRulesWithSubjects {
		return flowcontrolv1.PolicyRulesWithSubjects{
			ResourceRules:    []flowcontrolv1.ResourcePolicyRule{{Verbs: []string{"*"}, APIGroups: []string{"*"}, Resources: []string{"*"}, ClusterScope: true, Namespaces: []string{"*"}}},
			NonResourceRules: []flowcontrolv1.NonResourcePolicyRule{{Verbs: []string{"*"}, NonResourceURLs: []string{"*"}}}}
	}},
}

// userRequests counts, at the API server, the requests of one user by kind (flowKinds).
type userRequests struct {
	schemas map[string]string // kind -> FlowSchema name
}

// countRequestsOf creates the FlowSchemas that count user's requests (its lease requests in
// leaseNS apart) for the test.
func countRequestsOf(t *testing.T, user, leaseNS string) *userRequests {
	t.Helper()
	u := &userRequests{schemas: map[string]string{}}
	for i, fk := range flowKinds {
		name := user + "-" + fk.kind
		u.schemas[fk.kind] = name
		rules := fk.rules(leaseNS)
		rules.Subjects = []flowcontrolv1.Subject{{Kind: flowcontrolv1.SubjectKindUser, User: &flowcontrolv1.UserSubject{Name: user}}}
		createForTest(t, &flowcontrolv1.FlowSchema{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: flowcontrolv1.FlowSchemaSpec{
				PriorityLevelConfiguration: flowcontrolv1.PriorityLevelConfigurationReference{Name: "workload-high"},
				MatchingPrecedence:         int32(10 + i),
				DistinguisherMethod:        &flowcontrolv1.FlowDistinguisherMethod{Type: flowcontrolv1.FlowDistinguisherMethodByUserType},
				Rules:                      []flowcontrolv1.PolicyRulesWithSubjects{rules},
			},
		})
	}
	return u
}

// counts reads the API server's count of the user's requests, by kind.
func (u *userRequests) counts(t *testing.T) map[string]float64 {
	t.Helper()
	m := apiServerMetrics(t)
	out := map[string]float64{}
	for kind, fs := range u.schemas {
		out[kind] = m.sum("apiserver_flowcontrol_dispatched_requests_total", "flow_schema", fs)
	}
	return out
}

// apiMetrics is one scrape of the kube-apiserver's own /metrics.
type apiMetrics []struct {
	series string
	value  float64
}

// apiServerMetrics scrapes the kube-apiserver's /metrics as the control plane's admin.
func apiServerMetrics(t *testing.T) apiMetrics {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cp.Config)
	require.NoError(t, err)
	raw, err := cs.RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	require.NoError(t, err)
	var m apiMetrics
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			continue
		}
		m = append(m, struct {
			series string
			value  float64
		}{line[:i], v})
	}
	require.NoError(t, sc.Err())
	return m
}

// sum adds the samples of metric name whose labels include every label=value pair of match.
func (m apiMetrics) sum(name string, match ...string) float64 {
	var sum float64
	for _, s := range m {
		n, labels, _ := strings.Cut(s.series, "{")
		if n != name {
			continue
		}
		ok := true
		for i := 0; i+1 < len(match); i += 2 {
			ok = ok && strings.Contains(","+labels, ","+match[i]+`="`+match[i+1]+`"`)
		}
		if ok {
			sum += s.value
		}
	}
	return sum
}

// asWebhook gives user the webhook's permissions, as kustomize/base renders them: its ClusterRole,
// and its leader-election Role in leaseNS.
func asWebhook(t *testing.T, user, leaseNS string) {
	t.Helper()
	installBaseRBAC(t)
	y, err := controlplane.Kustomize(filepath.Join(controlplane.Root(), "kustomize", "base"))
	require.NoError(t, err)
	decoder := serializer.NewCodecFactory(clientgoscheme.Scheme).UniversalDeserializer()
	subject := []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}}
	for _, doc := range bytes.Split(y, []byte("\n---\n")) {
		obj, _, err := decoder.Decode(doc, nil, nil)
		require.NoError(t, err)
		switch o := obj.(type) {
		case *rbacv1.ClusterRole:
			createForTest(t, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user},
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: o.Name}, Subjects: subject})
		case *rbacv1.Role:
			role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: o.Name, Namespace: leaseNS}, Rules: o.Rules}
			createForTest(t, role)
			createForTest(t, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: leaseNS},
				RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name}, Subjects: subject})
		}
	}
}

// TestSteadyStateCostsNoAPICall runs a replica of the real server as a user of its own, with the
// webhook's RBAC, registered (its own webhook configuration, failurePolicy Fail) for one
// namespace. Once the namespace's registration exists, admitting pods costs no API write and no
// live API read: the cache answers. The API server itself counts the replica's requests (figure 4
// of docs/performance.md), and its calls to the replica's webhook.
func TestSteadyStateCostsNoAPICall(t *testing.T) {
	ctx := context.Background()
	const user, leaseNS, label = "steady-state-replica", "steady-state-lease", "steady-state-test"
	const webhookName = "steady-state.spire-mesh-injector.io"
	require.NoError(t, createNamespace(ctx, leaseNS, false))
	asWebhook(t, user, leaseNS)
	requests := countRequestsOf(t, user, leaseNS)
	au, err := cp.Env.AddUser(envtest.User{Name: user}, cp.Config)
	require.NoError(t, err)
	cfg := rest.CopyConfig(au.Config())
	cfg.QPS, cfg.Burst = cp.Config.QPS, cp.Config.Burst
	r := startReplica(t, cfg, leaseNS, label)
	update(t, &admissionregistrationv1.MutatingWebhookConfiguration{}, "spire-mesh-injector-"+label, "", func(o client.Object) {
		o.(*admissionregistrationv1.MutatingWebhookConfiguration).Webhooks[0].Name = webhookName
	})

	// The API server counts this user's requests: its lease, in a namespace of its own, proves
	// it (APF's configuration takes a moment to follow new FlowSchemas).
	eventually(t, "the API server counts the replica's lease requests", func() bool { return requests.counts(t)["leases"] > 0 })

	// This replica must be the only one wiring the namespace's pods (otherwise it would only see
	// pods already wired): the suite's own webhook configuration steps aside meanwhile, and the
	// test waits until the API server no longer calls it.
	main := &admissionregistrationv1.MutatingWebhookConfiguration{}
	require.NoError(t, k8s.Get(ctx, client.ObjectKey{Name: "spire-mesh-injector"}, main))
	require.NoError(t, k8s.Delete(ctx, main))
	t.Cleanup(func() {
		main.ResourceVersion, main.UID = "", ""
		require.NoError(t, k8s.Create(context.Background(), main))
		require.NoError(t, waitWebhookActive(context.Background()))
	})
	elsewhere := namespace(t, true, nil)
	eventually(t, "the API server no longer calls the suite's webhook", func() bool {
		return !wiredOnDryRun(ctx, plainPod(elsewhere, "probe", nil))
	})

	ns := namespace(t, true, nil)
	r.serve(t, ns)
	// The first pod creates the registration (a write, as it should).
	writesBefore := requests.counts(t)["writes"]
	i := 0
	eventually(t, "the replica's webhook is active and the registration exists", func() bool {
		i++
		p := plainPod(ns, fmt.Sprintf("first-%d", i), nil)
		if err := k8s.Create(ctx, p); err != nil || p.Labels[annotations.InjectedLabel] == "" {
			return false
		}
		_, err := getCSID(ctx, ns)
		return err == nil
	})
	// Writes are counted: the registration's creation is one.
	eventually(t, "the API server counts the replica's writes", func() bool { return requests.counts(t)["writes"] > writesBefore })

	before, calls := requests.counts(t), apiServerMetrics(t).sum("apiserver_admission_webhook_request_total", "name", webhookName)
	const pods = 50
	for i := range pods {
		p := plainPod(ns, fmt.Sprintf("steady-%d", i), nil)
		require.NoError(t, k8s.Create(ctx, p))
		require.Equal(t, "workload", p.Labels[annotations.InjectedLabel])
	}
	after, callsAfter := requests.counts(t), apiServerMetrics(t).sum("apiserver_admission_webhook_request_total", "name", webhookName)
	assert.Equal(t, float64(pods), callsAfter-calls, "the API server called this replica's webhook once per pod")
	writes, reads := after["writes"]-before["writes"], after["reads"]-before["reads"]
	// The reconciler (leader of its own lease here) may renew its lease meanwhile: that is not
	// per admission, and counted apart.
	assert.Zero(t, writes, "API writes by the replica while admitting %d pods", pods)
	assert.Zero(t, reads, "live API reads by the replica while admitting %d pods", pods)
	t.Logf("MEASURE steady state: %d admissions, %d API writes, %d live API reads (counted at the API server for user %s; lease requests apart: %d, watch requests: %d)",
		pods, int(writes), int(reads), user, int(after["leases"]-before["leases"]), int(after["watches"]-before["watches"]))
}
