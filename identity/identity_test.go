package identity

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

func cfg(t *testing.T, extra string) *config.Config { return podtest.ConfigWith(t, extra) }

// TestPure keeps the domain below the impure layers: the pure packages must never depend, even
// indirectly, on a Kubernetes client, controller-runtime or a metrics library.
func TestPure(t *testing.T) {
	for _, pkg := range []string{"identity", "mutators", "annotations", "config", "jwthelper/contract"} {
		out, err := exec.Command("go", "list", "-deps", "github.com/spire-mesh-injector/spire-mesh-injector/"+pkg).CombinedOutput()
		require.NoError(t, err, "%s", out)
		for _, dep := range strings.Fields(string(out)) {
			for _, banned := range []string{"sigs.k8s.io/controller-runtime", "k8s.io/client-go", "github.com/prometheus/", "google.golang.org/grpc"} {
				assert.False(t, strings.HasPrefix(dep, banned), "package %s depends on %s", pkg, dep)
			}
		}
	}
}

func TestName(t *testing.T) {
	assert.Equal(t, "spire-mesh-injector-payments", Name("payments"))
	ns63 := strings.Repeat("a", 63)
	assert.Equal(t, NamePrefix+ns63, Name(ns63))
	long := Name(strings.Repeat("b", 300))
	assert.LessOrEqual(t, len(long), 253)
	assert.True(t, strings.HasPrefix(long, NamePrefix))
	assert.NotEqual(t, long, Name(strings.Repeat("b", 299)+"c"))
}

func TestSPIFFEID(t *testing.T) {
	c := cfg(t, "")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "n1"}, Spec: corev1.PodSpec{ServiceAccountName: "api"}}
	id, err := SPIFFEID(c, pod)
	require.NoError(t, err)
	assert.Equal(t, "spiffe://example.org/ns/n1/sa/api", id)

	id, err = SPIFFEID(c, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "n1"}})
	require.NoError(t, err)
	assert.Equal(t, "spiffe://example.org/ns/n1/sa/default", id, "the ServiceAccount admission plugin's default")

	other := cfg(t, "registration:\n  spiffeIDTemplate: 'spiffe://other.org/ns/{{ .PodMeta.Namespace }}'\n")
	_, err = SPIFFEID(other, pod)
	require.ErrorContains(t, err, "outside trust domain example.org")

	node := cfg(t, "registration:\n  spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/node/{{ .NodeMeta.Name }}'\n")
	id, err = SPIFFEID(node, pod)
	require.NoError(t, err)
	assert.Empty(t, id, "unknown before scheduling")
}

// TestIDsAreSPIFFEID: the memo gives every pod what SPIFFEID gives it, for a template that reads
// only the namespace and service account (remembered), one that reads the pod's name (never
// remembered: two pods of one service account differ), one that reads the node, and past the
// memo's bound.
func TestIDsAreSPIFFEID(t *testing.T) {
	pod := func(ns, sa, name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.PodSpec{ServiceAccountName: sa}}
	}
	for name, extra := range map[string]string{
		"per service account": "",
		"per pod":             "registration:\n  spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}'\n",
		"per node":            "registration:\n  spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/node/{{ .NodeMeta.Name }}'\n",
		"another domain":      "registration:\n  spiffeIDTemplate: 'spiffe://other.org/ns/{{ .PodMeta.Namespace }}'\n",
	} {
		t.Run(name, func(t *testing.T) {
			c := cfg(t, extra)
			ids := NewIDs(c)
			for i := range maxKnownIDs + 10 {
				for _, p := range []*corev1.Pod{pod("n"+strconv.Itoa(i%(maxKnownIDs+5)), "api", "a"), pod("n1", "api", "b"), pod("n1", "", "c")} {
					want, wantErr := SPIFFEID(c, p)
					got, err := ids.For(p)
					require.Equal(t, wantErr, err)
					require.Equal(t, want, got, "%s/%s %s", p.Namespace, p.Spec.ServiceAccountName, p.Name)
				}
			}
			assert.LessOrEqual(t, len(ids.known), maxKnownIDs)
		})
	}
}

func TestDesiredSpec(t *testing.T) {
	c := cfg(t, "registration:\n  federatesWith: [partner.example]\n")
	s, err := DesiredSpec(c, "payments", map[string]string{annotations.FederatesWithAnnotation: "bank.example, partner.example"})
	require.NoError(t, err)
	assert.Equal(t, []string{"bank.example", "partner.example"}, s.FederatesWith, "sorted, without duplicates")
	assert.Equal(t, map[string]string{NamespaceNameLabel: "payments"}, s.NamespaceSelector.MatchLabels)
	assert.Equal(t, WiredPodSelector(), s.PodSelector)
	_, err = DesiredSpec(c, "payments", map[string]string{annotations.FederatesWithAnnotation: "example.org"})
	require.ErrorContains(t, err, "is the cluster's own trust domain")
}

func TestHoldBack(t *testing.T) {
	s := Spec{FederatesWith: []string{"bank.example", "partner.example", "typo.example"}}
	kept, held := s.HoldBack(Federation{"partner.example": false, "bank.example": true, "other.example": true})
	assert.Equal(t, []string{"bank.example", "partner.example"}, kept.FederatesWith)
	assert.Equal(t, []string{"typo.example"}, held)
	kept, held = s.HoldBack(nil)
	assert.Equal(t, s.FederatesWith, kept.FederatesWith, "unknown federation: nothing held back")
	assert.Empty(t, held)
	kept, held = s.HoldBack(Federation{})
	assert.Empty(t, kept.FederatesWith, "no ClusterFederatedTrustDomain: nothing to federate with")
	assert.Equal(t, s.FederatesWith, held)
}

func TestCompetes(t *testing.T) {
	c := cfg(t, "")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop", Labels: map[string]string{"app": "web"}}, Spec: corev1.PodSpec{ServiceAccountName: "web"}}
	tmpl := func(s string) *template.Template { return template.Must(template.New("").Parse(s)) }
	sel := func(m map[string]string) labels.Selector { return labels.SelectorFromSet(m) }
	nsLabels := func() (labels.Set, error) { return NamespaceLabels("shop", map[string]string{"team": "a"}), nil }
	other := tmpl("spiffe://example.org/x/{{ .PodMeta.Name }}")
	same := tmpl(config.DefaultSPIFFEIDTemplate)
	for name, tt := range map[string]struct {
		r    Registration
		want *Competitor
	}{
		"another ID":                 {Registration{SPIFFEID: other}, &Competitor{Theirs: "spiffe://example.org/x/p", Ours: "spiffe://example.org/ns/shop/sa/web"}},
		"the same ID":                {Registration{SPIFFEID: same}, nil},
		"a fallback":                 {Registration{SPIFFEID: other, Fallback: true}, nil},
		"ours":                       {Registration{SPIFFEID: other, Managed: true}, nil},
		"being deleted":              {Registration{SPIFFEID: other, Deleted: time.Unix(1, 0)}, nil},
		"pod selector not matched":   {Registration{SPIFFEID: other, PodSelector: sel(map[string]string{"app": "db"})}, nil},
		"pod selector matched":       {Registration{SPIFFEID: other, PodSelector: sel(map[string]string{"app": "web"})}, &Competitor{Theirs: "spiffe://example.org/x/p", Ours: "spiffe://example.org/ns/shop/sa/web"}},
		"namespace not matched":      {Registration{SPIFFEID: other, NamespaceSelector: sel(map[string]string{"team": "b"})}, nil},
		"namespace matched by name":  {Registration{SPIFFEID: other, NamespaceSelector: sel(map[string]string{NamespaceNameLabel: "shop"})}, &Competitor{Theirs: "spiffe://example.org/x/p", Ours: "spiffe://example.org/ns/shop/sa/web"}},
		"a template that cannot run": {Registration{SPIFFEID: tmpl("{{ .Nope }}")}, &Competitor{Ours: "spiffe://example.org/ns/shop/sa/web"}},
	} {
		got, err := tt.r.Competes(c, pod, nsLabels)
		require.NoError(t, err, name)
		assert.Equal(t, tt.want, got, name)
	}
}
