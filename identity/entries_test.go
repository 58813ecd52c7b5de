package identity

import (
	"testing"
	"text/template"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

func TestTemplateReads(t *testing.T) {
	for tmpl, want := range map[string]struct{ onlyNSAndSA, node bool }{
		config.DefaultSPIFFEIDTemplate: {true, false},
		"spiffe://{{ .TrustDomain }}/{{ .ClusterName }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}": {true, false},
		"spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}":                                 {false, false},
		`spiffe://{{ .TrustDomain }}/app/{{ index .PodMeta.Labels "app" }}`:                                               {false, false},
		"spiffe://{{ .TrustDomain }}/node/{{ .NodeMeta.Name }}":                                                           {false, true},
		"spiffe://{{ .TrustDomain }}/{{ if .PodSpec.ServiceAccountName }}sa{{ end }}":                                     {true, false},
		"spiffe://{{ $.TrustDomain }}/x":                                                                                  {true, false},
		"spiffe://{{ $.NodeSpec.ProviderID }}":                                                                            {false, true},
		"spiffe://x/{{ with .NodeMeta }}{{ .Name }}{{ end }}":                                                             {false, true},
		"spiffe://x/{{ with .PodMeta }}{{ .Namespace }}{{ end }}":                                                         {false, false},
		"spiffe://x/{{ $n := .PodMeta.Namespace }}{{ $n }}":                                                               {false, false},
		"spiffe://x/{{ . }}":                    {false, false},
		"spiffe://x/{{ (.PodMeta).Namespace }}": {false, false},
		// ".Node" in text is not a read.
		"spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/x.Node": {true, false},
	} {
		parsed, err := template.New("t").Parse(tmpl)
		require.NoError(t, err)
		assert.Equal(t, want.onlyNSAndSA, ReadsOnlyNamespaceAndSA(parsed), "ReadsOnlyNamespaceAndSA(%s)", tmpl)
		assert.Equal(t, want.node, ReadsNode(parsed), "ReadsNode(%s)", tmpl)
	}
}

// TestPrefers pins spire-controller-manager's objectCmp: older first, then not being deleted (or
// deleted later), then the lower UID.
func TestPrefers(t *testing.T) {
	t0, t1 := time.Unix(100, 0), time.Unix(200, 0)
	for name, tt := range map[string]struct {
		a, b Registration
		want bool
	}{
		"older":                       {Registration{Created: t0, UID: "b"}, Registration{Created: t1, UID: "a"}, true},
		"newer":                       {Registration{Created: t1, UID: "a"}, Registration{Created: t0, UID: "b"}, false},
		"not deleting over deleting":  {Registration{Created: t0, UID: "b"}, Registration{Created: t0, UID: "a", Deleted: t1}, true},
		"deleting under not deleting": {Registration{Created: t0, UID: "a", Deleted: t1}, Registration{Created: t0, UID: "b"}, false},
		"deleted later":               {Registration{Created: t0, UID: "b", Deleted: t1}, Registration{Created: t0, UID: "a", Deleted: t0}, true},
		"lower UID":                   {Registration{Created: t0, UID: "a"}, Registration{Created: t0, UID: "b"}, true},
		"same":                        {Registration{Created: t0, UID: "a"}, Registration{Created: t0, UID: "a"}, false},
	} {
		assert.Equal(t, tt.want, Prefers(&tt.a, &tt.b), name)
	}
}

func TestEntries(t *testing.T) {
	c := cfg(t, "")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop", Labels: map[string]string{"app": "web"}}, Spec: corev1.PodSpec{ServiceAccountName: "web"}}
	nsLabels := NamespaceLabels("shop", nil)
	tmpl := func(s string) *template.Template { return template.Must(template.New("").Parse(s)) }
	ours := tmpl(config.DefaultSPIFFEIDTemplate)
	t0, t1, t2 := time.Unix(100, 0), time.Unix(200, 0), time.Unix(300, 0)
	reg := func(name string, created time.Time, t *template.Template, mod func(*Registration)) *Registration {
		r := &Registration{Name: name, Created: created, UID: name, SPIFFEID: t}
		if mod != nil {
			mod(r)
		}
		return r
	}
	fallback := func(r *Registration) { r.Fallback = true }
	type got struct {
		ID, MaskedBy string
		Node         bool
	}
	summarize := func(es []Entry) map[string]got {
		out := map[string]got{}
		for _, e := range es {
			g := got{ID: e.ID, Node: e.NodeDependent}
			if e.MaskedBy != nil {
				g.MaskedBy = e.MaskedBy.Name
			}
			out[e.Registration.Name] = g
		}
		return out
	}
	const id = "spiffe://example.org/ns/shop/sa/web"
	for name, tt := range map[string]struct {
		regs     []*Registration
		entries  map[string]got
		failures []string
	}{
		"one": {regs: []*Registration{reg("a", t0, ours, nil)}, entries: map[string]got{"a": {ID: id}}},
		"a fallback yields": {regs: []*Registration{reg("fb", t0, ours, fallback), reg("a", t1, ours, nil)},
			entries: map[string]got{"a": {ID: id}}},
		"a fallback serves when nothing else does": {regs: []*Registration{reg("fb", t0, ours, fallback), reg("a", t1, ours, func(r *Registration) { r.PodSelector = labels.SelectorFromSet(labels.Set{"app": "db"}) })},
			entries: map[string]got{"fb": {ID: id}}},
		"a fallback serves when the other cannot render": {regs: []*Registration{reg("fb", t0, ours, fallback), reg("bad", t1, tmpl("spiffe://other.org/x"), nil)},
			entries: map[string]got{"fb": {ID: id}}, failures: []string{"bad"}},
		"a node-dependent entry serves the pod": {regs: []*Registration{reg("fb", t0, ours, fallback), reg("n", t1, tmpl("spiffe://example.org/n/{{ .NodeMeta.Name }}"), nil)},
			entries: map[string]got{"n": {Node: true}}},
		"the older masks": {regs: []*Registration{reg("new", t2, ours, nil), reg("old", t0, ours, nil), reg("mid", t1, ours, nil)},
			entries: map[string]got{"new": {ID: id, MaskedBy: "old"}, "old": {ID: id}, "mid": {ID: id, MaskedBy: "old"}}},
		"other selectors: not the same entry": {regs: []*Registration{reg("new", t1, ours, nil), reg("old", t0, ours, func(r *Registration) { r.WorkloadSelectors = []string{"k8s:ns:shop"} })},
			entries: map[string]got{"new": {ID: id}, "old": {ID: id}}},
		"another ID: two entries": {regs: []*Registration{reg("a", t0, ours, nil), reg("b", t1, tmpl("spiffe://example.org/x/{{ .PodMeta.Name }}"), nil)},
			entries: map[string]got{"a": {ID: id}, "b": {ID: "spiffe://example.org/x/p"}}},
		"not selected": {regs: []*Registration{reg("a", t0, ours, func(r *Registration) { r.NamespaceSelector = labels.SelectorFromSet(labels.Set{"team": "x"}) })},
			entries: map[string]got{}},
	} {
		es, fs := Entries(c, pod, nsLabels, tt.regs)
		assert.Equal(t, tt.entries, summarize(es), name)
		var failed []string
		for _, f := range fs {
			require.Error(t, f.Err, name)
			failed = append(failed, f.Registration.Name)
		}
		assert.Equal(t, tt.failures, failed, name)
	}
}
