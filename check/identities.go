package check

import (
	"regexp"
	"slices"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
)

// Which SPIFFE IDs the cluster's registrations can issue, and which one a given pod gets, as
// spire-controller-manager decides: its class filter, its ignoreNamespaces, its fallback rule and
// its masking of entries with the same key. IDs are rendered by identity.Render over registrations
// parsed by registration.Parse (spire-controller-manager's own parser): one renderer, one parser.

// issuerKind says whose registration issues an identity.
type issuerKind string

const (
	issuerOurs     issuerKind = "spire-mesh-injector"
	issuerFallback issuerKind = "fallback"
	issuerOther    issuerKind = "other"
)

// issuedID is one SPIFFE ID a registration can give the pods of a service account.
type issuedID struct {
	ID, Namespace, ServiceAccount string
	Registration                  string
	Kind                          issuerKind
}

// idUniverse is every SPIFFE ID the registrations can issue in the cluster as it is: over its
// namespaces and their service accounts.
type idUniverse struct {
	ids  []issuedID
	byID map[string][]issuedID
	// open names registrations whose IDs read other pod fields (labels, name) or the node: they
	// cannot be enumerated from namespaces and service accounts.
	open []string
	// nsExists and sas are the namespaces and each namespace's service accounts.
	nsExists map[string]bool
	sas      map[string]map[string]bool
	// optedIn are the namespaces labelled for the webhook.
	optedIn map[string]bool
	// err, when set, is why the universe could not be built (object names what was unreadable).
	err    error
	errObj string
}

// universe builds (once) the identities the registrations can issue: ours (the configuration's
// template, in every opted-in namespace, whether or not its registration exists yet), every other
// non-fallback registration of a reconciled class, and fallback registrations where no
// non-fallback registration serves every pod.
func (e *evaluator) universe() *idUniverse {
	if e.u != nil {
		return e.u
	}
	u := &idUniverse{byID: map[string][]issuedID{}, nsExists: map[string]bool{}, sas: map[string]map[string]bool{}, optedIn: map[string]bool{}}
	e.u = u
	switch {
	case e.s.AllNamespacesErr != nil:
		u.err, u.errObj = e.s.AllNamespacesErr, "namespaces"
		return u
	case e.s.ServiceAccountsErr != nil:
		u.err, u.errObj = e.s.ServiceAccountsErr, "service accounts"
		return u
	}
	for _, ns := range e.s.AllNamespaces {
		u.nsExists[ns.Name] = true
		u.sas[ns.Name] = map[string]bool{}
		for _, sa := range e.s.ServiceAccounts[ns.Name] {
			u.sas[ns.Name][sa] = true
		}
		if identity.OptedIn(ns.Labels) {
			u.optedIn[ns.Name] = true
		}
	}
	ignore := e.ignoreRule()
	add := func(id issuedID) {
		u.ids = append(u.ids, id)
		u.byID[id.ID] = append(u.byID[id.ID], id)
	}

	// Ours.
	if !identity.ReadsOnlyNamespaceAndSA(e.cfg.SPIFFEIDTemplate()) {
		u.open = append(u.open, "spire-mesh-injector's registrations (registration.spiffeIDTemplate reads other pod or node fields)")
	} else {
		for _, ns := range e.s.AllNamespaces {
			if !u.optedIn[ns.Name] || ignore.match(ns.Name) != "" {
				continue
			}
			for _, sa := range sortedKeys(u.sas[ns.Name]) {
				if id, err := identity.SPIFFEID(e.cfg, probePod(ns.Name, sa)); err == nil && id != "" {
					add(issuedID{ID: id, Namespace: ns.Name, ServiceAccount: sa, Registration: identity.Name(ns.Name), Kind: issuerOurs})
				}
			}
		}
	}

	// Others: non-fallback first, recording the service accounts whose every pod they serve (no
	// pod selector), where a fallback never applies.
	covered := map[[2]string]bool{}
	regs := e.reconciledRegistrations()
	for _, pass := range []bool{false, true} {
		for _, r := range regs {
			if r.parsed.Managed || r.parsed.Fallback != pass {
				continue
			}
			if !identity.ReadsOnlyNamespaceAndSA(r.parsed.SPIFFEID) {
				u.open = append(u.open, "ClusterSPIFFEID "+r.obj.Name+" (its spiffeIDTemplate reads other pod or node fields)")
				continue
			}
			kind := issuerOther
			if pass {
				kind = issuerFallback
			}
			for _, ns := range e.s.AllNamespaces {
				if ignore.match(ns.Name) != "" || !selects(r.parsed.NamespaceSelector, identity.NamespaceLabels(ns.Name, ns.Labels)) {
					continue
				}
				for _, sa := range sortedKeys(u.sas[ns.Name]) {
					key := [2]string{ns.Name, sa}
					if pass && covered[key] {
						continue
					}
					id, err := identity.EntryID(r.parsed.SPIFFEID, e.cfg, probePod(ns.Name, sa))
					if err != nil {
						continue
					}
					if !pass && r.parsed.PodSelector == nil {
						covered[key] = true
					}
					add(issuedID{ID: id, Namespace: ns.Name, ServiceAccount: sa, Registration: r.obj.Name, Kind: kind})
				}
			}
		}
	}
	return u
}

// reconciledReg is a ClusterSPIFFEID spire-controller-manager reconciles, parsed by its parser.
type reconciledReg struct {
	obj    *spirev1alpha1.ClusterSPIFFEID
	parsed *identity.Registration
}

// reconciledRegistrations are the ClusterSPIFFEIDs of a class spire-controller-manager
// reconciles that its parser accepts (it skips the others without a word).
func (e *evaluator) reconciledRegistrations() []reconciledReg {
	rule := e.classRule()
	var out []reconciledReg
	for i := range e.s.Registrations {
		o := &e.s.Registrations[i]
		if !rule.accepts(o.Spec.ClassName) {
			continue
		}
		r, err := registration.Parse(o)
		if err != nil {
			continue
		}
		out = append(out, reconciledReg{obj: o, parsed: r})
	}
	return out
}

// probePod stands for any pod of service account sa in namespace ns.
func probePod(ns, sa string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns}, Spec: corev1.PodSpec{ServiceAccountName: sa}}
}

func selects(sel labels.Selector, set labels.Set) bool { return sel == nil || sel.Matches(set) }

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ignoreRule is spire-controller-manager's ignoreNamespaces, as far as the check knows.
type ignoreRule struct {
	patterns []string
	res      []*regexp.Regexp
	// bad are entries that are not regular expressions (spire-controller-manager does not start).
	bad    []string
	source string
	// known is false when neither its configuration nor ZTWIM is visible.
	known bool
}

func (e *evaluator) ignoreRule() ignoreRule {
	var r ignoreRule
	switch {
	case e.s.SCM != nil:
		r = ignoreRule{patterns: e.s.SCM.IgnoreNamespaces, source: e.s.SCM.Source, known: true}
		if e.s.SCM.IgnoreNamespacesDefaulted {
			r.source += " (not set there: spire-controller-manager's defaults)"
		}
	case e.s.ZTWIM != nil:
		r = ignoreRule{patterns: ZTWIMIgnoreNamespaces, source: "ZTWIM (what it writes into its spire-controller-manager's configuration)", known: true}
	default:
		r = ignoreRule{patterns: SCMDefaultIgnoreNamespaces, source: "spire-controller-manager's defaults (its configuration is not visible)"}
	}
	for _, p := range r.patterns {
		re, err := regexp.Compile(p)
		if err != nil {
			r.bad = append(r.bad, p)
			continue
		}
		r.res = append(r.res, re)
	}
	return r
}

// match returns the entry that makes spire-controller-manager ignore namespace ns, or "". Like
// spire-controller-manager (pkg/namespace.IsIgnored), it matches unanchored: "openshift-*" ignores
// every name that contains "openshift".
func (r ignoreRule) match(ns string) string {
	for _, re := range r.res {
		if re.MatchString(ns) {
			return re.String()
		}
	}
	return ""
}

// podEntry is one entry spire-controller-manager makes for a pod (identity.Entries), with the
// registration it comes from.
type podEntry struct {
	identity.Entry
	reg *spirev1alpha1.ClusterSPIFFEID
}

// maskedBy names the registration whose entry wins for the same key, or "".
func (pe podEntry) maskedBy() string {
	if pe.MaskedBy == nil {
		return ""
	}
	return pe.MaskedBy.Name
}

// podEntries applies spire-controller-manager's rules to one pod (identity.Entries) over the
// registrations of the classes it reconciles. ignoredBy is the ignoreNamespaces entry that leaves
// the namespace without entries.
func (e *evaluator) podEntries(pod *corev1.Pod, nsLabels labels.Set) (entries, failures []podEntry, ignoredBy string) {
	if ignoredBy = e.ignoreRule().match(pod.Namespace); ignoredBy != "" {
		return nil, nil, ignoredBy
	}
	regs := e.reconciledRegistrations()
	parsed := make([]*identity.Registration, len(regs))
	objs := make(map[*identity.Registration]*spirev1alpha1.ClusterSPIFFEID, len(regs))
	for i, r := range regs {
		parsed[i], objs[r.parsed] = r.parsed, r.obj
	}
	es, fs := identity.Entries(e.cfg, pod, nsLabels, parsed)
	for _, x := range es {
		entries = append(entries, podEntry{Entry: x, reg: objs[x.Registration]})
	}
	for _, x := range fs {
		failures = append(failures, podEntry{Entry: x, reg: objs[x.Registration]})
	}
	return entries, failures, ""
}

// describeIssuer names a registration for the report.
func describeIssuer(reg *spirev1alpha1.ClusterSPIFFEID, fallback bool) string {
	switch {
	case identity.IsManaged(reg.Labels):
		return "ClusterSPIFFEID " + reg.Name + " (spire-mesh-injector's)"
	case fallback && reg.Name == ztwimFallbackName:
		return "ClusterSPIFFEID " + reg.Name + " (ZTWIM's fallback)"
	case fallback:
		return "ClusterSPIFFEID " + reg.Name + " (a fallback)"
	}
	return "ClusterSPIFFEID " + reg.Name + " (another registration)"
}

// ztwimFallbackName is the fallback registration ZTWIM creates for every namespace but its own.
const ztwimFallbackName = "zero-trust-workload-identity-manager-spire-default"

// levenshtein is the edit distance between a and b, to suggest the identity a typo meant.
func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
