package check

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
)

// The policy audit: every SPIFFE ID or pattern an Istio AuthorizationPolicy names, resolved
// against the identities the registrations can issue (idUniverse), with Istio's own matching
// rules (pilot/pkg/security/authz/model: principals without spiffe:// and with a prefix or suffix
// '*'; namespaces as .*/ns/<ns>/.*; requestPrincipals split at the last '/'; trust domain
// aliases and cluster.local standing for the mesh's trust domain).

// Source fields and when keys the audit resolves.
const (
	fieldPrincipals        = "principals"
	fieldNamespaces        = "namespaces"
	fieldServiceAccounts   = "serviceAccounts"
	fieldRequestPrincipals = "requestPrincipals"
	fieldClaimSub          = "request.auth.claims[sub]"
)

// whenFields maps the when keys that name identities to the source field with the same matching.
var whenFields = map[string]string{
	"source.principal":             fieldPrincipals,
	"source.namespace":             fieldNamespaces,
	"source.serviceAccount":        fieldServiceAccounts,
	"request.auth.principal":       fieldRequestPrincipals,
	"request.auth.claims[sub]":     fieldClaimSub,
	"request.auth.claims[\"sub\"]": fieldClaimSub,
}

// resolution is what one value resolves to.
type resolution struct {
	// held counts the identities that match it; example is one of them.
	held    int
	example string
	// unknown is true when nothing matched but the check cannot rule it out (a registration whose
	// IDs cannot be enumerated, an unreadable list).
	unknown bool
	// reason says why nothing can match; suggest is the nearest identity for a likely typo.
	reason, suggest string
	// skipped is true for values the audit does not judge (a requestPrincipal of another issuer's
	// users, a claim that is not a SPIFFE ID).
	skipped bool
}

func (r resolution) unsatisfiable() bool { return !r.skipped && !r.unknown && r.held == 0 }

// trustBundle is the mesh's trust domain and its aliases, as Istio reads principals.
func (e *evaluator) trustBundle() []string {
	td := e.cfg.TrustDomain
	var aliases []string
	if m := e.s.IstioMesh; m != nil {
		td = m.TrustDomain
		if td == "" {
			td = istioDefaultTrustDomain
		}
		aliases = m.TrustDomainAliases
	}
	return append([]string{td}, aliases...)
}

// expandPrincipal is Istio's trustdomain.Bundle.ReplaceTrustDomainAliases for one principal: a
// principal in the mesh's trust domain, an alias or cluster.local stands for each of them.
func expandPrincipal(v string, bundle []string) []string {
	parts := strings.Split(v, "/")
	if len(parts) != 5 || parts[0] == "*" {
		return []string{v}
	}
	td := parts[0]
	if td != istioDefaultTrustDomain && !tdMatchesAny(td, bundle) {
		return []string{v}
	}
	var out []string
	for _, b := range bundle {
		p := v
		if !globSuffix(b, td) {
			p = b + "/" + strings.Join(parts[1:], "/")
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// tdMatchesAny is Istio's trustdomain stringMatch.
func tdMatchesAny(a string, list []string) bool {
	for _, s := range list {
		if a == s || s == "*" || globPrefix(a, s) || globPrefix(s, a) || globSuffix(a, s) || globSuffix(s, a) {
			return true
		}
	}
	return false
}

func globPrefix(a, pattern string) bool {
	return strings.HasSuffix(pattern, "*") && strings.HasPrefix(a, strings.TrimSuffix(pattern, "*"))
}

func globSuffix(a, pattern string) bool {
	return strings.HasPrefix(pattern, "*") && strings.HasSuffix(a, strings.TrimPrefix(pattern, "*"))
}

// stringMatch is Istio's matcher.StringMatcherWithPrefix: "*" any non-empty value, "*x" a suffix,
// "x*" a prefix, else exact; prefix is prepended to the value (not to a bare "*").
func stringMatch(v, prefix string) func(string) bool {
	switch {
	case v == "*":
		return func(s string) bool { return s != "" }
	case strings.HasPrefix(v, "*"):
		suffix := strings.TrimPrefix(v, "*")
		return func(s string) bool { return strings.HasPrefix(s, prefix) && strings.HasSuffix(s[len(prefix):], suffix) }
	case strings.HasSuffix(v, "*"):
		p := prefix + strings.TrimSuffix(v, "*")
		return func(s string) bool { return strings.HasPrefix(s, p) }
	}
	return func(s string) bool { return s == prefix+v }
}

// idMatcher returns how Istio matches a peer's SPIFFE ID for a value of field, in a policy in
// namespace policyNS; nil for values the audit does not judge.
func (e *evaluator) idMatcher(field, v, policyNS string) func(string) bool {
	switch field {
	case fieldPrincipals:
		var ms []func(string) bool
		for _, p := range expandPrincipal(v, e.trustBundle()) {
			ms = append(ms, stringMatch(p, "spiffe://"))
		}
		return func(id string) bool {
			return slices.ContainsFunc(ms, func(m func(string) bool) bool { return m(id) })
		}
	case fieldNamespaces:
		re, err := regexp.Compile("^.*/ns/" + strings.ReplaceAll(v, "*", ".*") + "/.*$")
		if err != nil {
			return nil
		}
		return re.MatchString
	case fieldServiceAccounts:
		ns, sa, ok := strings.Cut(v, "/")
		if !ok {
			ns, sa = policyNS, v
		}
		re := regexp.MustCompile("^spiffe://.+/ns/" + regexp.QuoteMeta(ns) + "/(.+/|)sa/" + regexp.QuoteMeta(sa) + "(/.+)?$")
		return re.MatchString
	case fieldClaimSub:
		if !strings.Contains(v, "spiffe://") {
			return nil
		}
		return stringMatch(v, "")
	}
	return nil
}

// issuers are the issuers RequestAuthentications in the audited scope accept.
func (e *evaluator) issuers() []string {
	var out []string
	for _, ra := range e.s.RequestAuthentications {
		for _, r := range ra.Rules {
			if r.Issuer != "" && !slices.Contains(out, r.Issuer) {
				out = append(out, r.Issuer)
			}
		}
	}
	return out
}

// resolve resolves one value of a source field (or the matching when key).
func (e *evaluator) resolve(field, v, policyNS string) resolution {
	key := field + "\x00" + policyNS + "\x00" + v
	if r, ok := e.resolutions[key]; ok {
		return r
	}
	if e.resolutions == nil {
		e.resolutions = map[string]resolution{}
	}
	r := e.resolveUncached(field, v, policyNS)
	e.resolutions[key] = r
	return r
}

func (e *evaluator) resolveUncached(field, v, policyNS string) resolution {
	if field == fieldRequestPrincipals {
		return e.resolveRequestPrincipal(v)
	}
	m := e.idMatcher(field, v, policyNS)
	if m == nil {
		return resolution{skipped: true}
	}
	u := e.universe()
	if u.err != nil {
		return resolution{unknown: true}
	}
	var r resolution
	for _, id := range u.ids {
		if m(id.ID) {
			if r.held == 0 {
				r.example = id.ID
			}
			r.held++
		}
	}
	if r.held > 0 {
		return r
	}
	r.reason = e.whyNoIdentity(field, v, policyNS)
	if len(u.open) > 0 {
		r.unknown = true
		r.reason += "; it could still be rendered by " + strings.Join(u.open, ", ")
	}
	if !strings.Contains(v, "*") && field != fieldNamespaces {
		r.suggest = e.nearest(field, v)
	}
	return r
}

// resolveRequestPrincipal judges "<issuer>/<subject>" as Istio splits it, at the last '/'. A
// JWT-SVID's subject is a SPIFFE ID, which contains '/': no value that spells one out can match.
func (e *evaluator) resolveRequestPrincipal(v string) resolution {
	idx := strings.LastIndex(v, "/")
	if strings.Contains(v, "spiffe://") {
		iss, sub := v, ""
		if idx >= 0 {
			iss, sub = v[:idx], v[idx+1:]
		}
		return resolution{reason: fmt.Sprintf("Istio splits requestPrincipals at the last '/': issuer %q, subject %q; a JWT-SVID's subject is a whole SPIFFE ID, so no token matches", iss, sub)}
	}
	if v == "*" || idx < 0 {
		return resolution{skipped: true}
	}
	iss := v[:idx]
	if errors.Is(e.s.RequestAuthenticationsErr, errNotInstalled) {
		return resolution{reason: "Istio's RequestAuthentication CRD is not installed: no request has a principal"}
	}
	if e.s.RequestAuthenticationsErr != nil {
		return resolution{unknown: true}
	}
	issuers := e.issuers()
	m := stringMatch(iss, "")
	if iss == "*" {
		m = func(s string) bool { return s != "" }
	}
	for _, i := range issuers {
		if m(i) {
			return resolution{held: 1, example: i}
		}
	}
	if len(issuers) == 0 {
		return resolution{reason: fmt.Sprintf("issuer %q: no RequestAuthentication accepts any issuer, so requests carry no principal", iss)}
	}
	return resolution{reason: fmt.Sprintf("issuer %q: no RequestAuthentication accepts it (they accept %s)", iss, strings.Join(issuers, ", "))}
}

// whyNoIdentity names the likeliest reason a value matches no identity.
func (e *evaluator) whyNoIdentity(field, v, policyNS string) string {
	u := e.universe()
	ns, sa, td := "", "", ""
	switch field {
	case fieldPrincipals:
		if strings.HasPrefix(v, "spiffe://") {
			return "principals are written without spiffe:// (Istio adds it: this matches spiffe://" + v + ")"
		}
		parts := strings.Split(v, "/")
		if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" || strings.Contains(v, "*") {
			return "no identity the registrations can issue matches"
		}
		td, ns, sa = parts[0], parts[2], parts[4]
	case fieldServiceAccounts:
		var ok bool
		if ns, sa, ok = strings.Cut(v, "/"); !ok {
			ns, sa = policyNS, v
		}
	case fieldNamespaces:
		if strings.Contains(v, "*") {
			return "no identity the registrations can issue is in a matching namespace"
		}
		ns = v
	case fieldClaimSub:
		id, err := parseIDPath(v)
		if err != nil {
			return "no identity the registrations can issue matches"
		}
		td, ns, sa = id[0], id[1], id[2]
	}
	bundle := e.trustBundle()
	if td != "" && td != e.cfg.TrustDomain && (field == fieldClaimSub || (td != istioDefaultTrustDomain && !tdMatchesAny(td, bundle))) {
		return fmt.Sprintf("trust domain %s is not SPIRE's (%s)", td, e.cfg.TrustDomain)
	}
	switch {
	case !u.nsExists[ns]:
		return fmt.Sprintf("namespace %s does not exist", ns)
	case sa != "" && !u.sas[ns][sa]:
		return fmt.Sprintf("service account %s does not exist in namespace %s", sa, ns)
	}
	if p := e.ignoreRule().match(ns); p != "" {
		return fmt.Sprintf("spire-controller-manager ignores namespace %s (ignoreNamespaces %q)", ns, p)
	}
	for _, id := range u.ids {
		if id.Namespace == ns && (sa == "" || id.ServiceAccount == sa) {
			return fmt.Sprintf("its workloads get %s from %s, not this ID", id.ID, id.Registration)
		}
	}
	if !u.optedIn[ns] {
		return fmt.Sprintf("no registration gives namespace %s's workloads an identity: it is not opted in (label %s=%s) and no other registration selects it", ns, annotations.InjectionLabel, annotations.InjectionEnabled)
	}
	return "no registration renders an identity there"
}

// parseIDPath reads spiffe://<td>/ns/<ns>/sa/<sa> into its three parts.
func parseIDPath(v string) ([3]string, error) {
	parts := strings.Split(strings.TrimPrefix(v, "spiffe://"), "/")
	if !strings.HasPrefix(v, "spiffe://") || len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" {
		return [3]string{}, fmt.Errorf("not a ns/sa SPIFFE ID")
	}
	return [3]string{parts[0], parts[2], parts[4]}, nil
}

// nearest is the issuable identity closest to an exact value, when it is close enough to be a
// typo of it.
func (e *evaluator) nearest(field, v string) string {
	prefix := "spiffe://"
	if field == fieldClaimSub {
		prefix = ""
	}
	best, bestD := "", 1<<30
	for _, id := range e.universe().ids {
		cand := id.ID
		if field == fieldPrincipals {
			cand = strings.TrimPrefix(id.ID, prefix)
		}
		if field == fieldServiceAccounts {
			cand = id.Namespace + "/" + id.ServiceAccount
		}
		if d := levenshtein(v, cand); d < bestD {
			best, bestD = cand, d
		}
	}
	if best == "" || bestD > max(2, len(v)/8) {
		return ""
	}
	return best
}

// policyValue is one identity value written in a policy, where it is, and how it resolves.
type policyValue struct {
	where, field, value string
	not                 bool
	res                 resolution
}

// values lists every identity value of a rule with its resolution.
func (e *evaluator) ruleValues(ap *AuthorizationPolicy, i int) []policyValue {
	rule := ap.Rules[i]
	var out []policyValue
	add := func(where, field string, not bool, vs []string) {
		for _, v := range vs {
			out = append(out, policyValue{where: where, field: field, value: v, not: not, res: e.resolve(field, v, ap.Namespace)})
		}
	}
	for j, f := range rule.From {
		where := fmt.Sprintf("rules[%d].from[%d].source", i, j)
		add(where+".principals", fieldPrincipals, false, f.Principals)
		add(where+".notPrincipals", fieldPrincipals, true, f.NotPrincipals)
		add(where+".namespaces", fieldNamespaces, false, f.Namespaces)
		add(where+".notNamespaces", fieldNamespaces, true, f.NotNamespaces)
		add(where+".serviceAccounts", fieldServiceAccounts, false, f.ServiceAccounts)
		add(where+".notServiceAccounts", fieldServiceAccounts, true, f.NotServiceAccounts)
		add(where+".requestPrincipals", fieldRequestPrincipals, false, f.RequestPrincipals)
		add(where+".notRequestPrincipals", fieldRequestPrincipals, true, f.NotRequestPrincipals)
	}
	for j, w := range rule.When {
		field, ok := whenFields[w.Key]
		if !ok {
			continue
		}
		where := fmt.Sprintf("rules[%d].when[%d] %s", i, j, w.Key)
		add(where, field, false, w.Values)
		add(where+" notValues", field, true, w.NotValues)
	}
	return out
}

// sourceSatisfiable is false when a field the audit resolves is set and none of its values can
// match: the source then matches no request.
func (e *evaluator) sourceSatisfiable(ap *AuthorizationPolicy, f AuthzSource) bool {
	for _, c := range []struct {
		field string
		vs    []string
	}{{fieldPrincipals, f.Principals}, {fieldNamespaces, f.Namespaces}, {fieldServiceAccounts, f.ServiceAccounts}, {fieldRequestPrincipals, f.RequestPrincipals}} {
		if len(c.vs) == 0 {
			continue
		}
		if !slices.ContainsFunc(c.vs, func(v string) bool { return !e.resolve(c.field, v, ap.Namespace).unsatisfiable() }) {
			return false
		}
	}
	return true
}

// ruleSatisfiable is false when no request can match the rule: every source is unsatisfiable, or
// a when condition on an identity has no value that can match.
func (e *evaluator) ruleSatisfiable(ap *AuthorizationPolicy, rule AuthzRule) bool {
	for _, w := range rule.When {
		field, ok := whenFields[w.Key]
		if !ok || len(w.Values) == 0 {
			continue
		}
		if !slices.ContainsFunc(w.Values, func(v string) bool { return !e.resolve(field, v, ap.Namespace).unsatisfiable() }) {
			return false
		}
	}
	if len(rule.From) == 0 {
		return true
	}
	return slices.ContainsFunc(rule.From, func(f AuthzSource) bool { return e.sourceSatisfiable(ap, f) })
}

// policyPrincipals is the audit's cluster-wide half: values no workload can ever match.
func (e *evaluator) policyPrincipals() []Finding {
	switch err := e.s.AuthorizationPoliciesErr; {
	case errors.Is(err, errNotInstalled):
		return []Finding{e.finding(OK, CheckPolicyPrincipals, "", "", "Istio's AuthorizationPolicy CRD is not installed: no policy to audit", "", "")}
	case err != nil:
		return []Finding{e.unreadable(CheckPolicyPrincipals, "", "AuthorizationPolicies", err)}
	}
	u := e.universe()
	if u.err != nil {
		return []Finding{e.unreadable(CheckPolicyPrincipals, "", u.errObj, u.err)}
	}
	aps := slices.Clone(e.s.AuthorizationPolicies)
	slices.SortFunc(aps, func(a, b AuthorizationPolicy) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	var out []Finding
	values := 0
	for i := range aps {
		ap := &aps[i]
		var fails, warns []string
		var reqPrincipal, suggested bool
		for r := range ap.Rules {
			for _, pv := range e.ruleValues(ap, r) {
				values++
				if pv.res.skipped || pv.res.held > 0 {
					continue
				}
				line := fmt.Sprintf("%s %q: %s", pv.where, pv.value, pv.res.reason)
				if pv.res.suggest != "" {
					line += fmt.Sprintf(" (did you mean %q?)", pv.res.suggest)
					suggested = true
				}
				if pv.field == fieldRequestPrincipals {
					reqPrincipal = true
				}
				switch {
				case pv.res.unknown:
					warns = append(warns, line+" [cannot be confirmed]")
				case pv.not:
					warns = append(warns, line+" [excludes nobody]")
				case ap.Action == "ALLOW":
					fails = append(fails, line)
				default:
					warns = append(warns, line+" [the rule never applies]")
				}
			}
		}
		if len(fails)+len(warns) == 0 {
			continue
		}
		st, why := Fail, "Istio compares the peer's SPIFFE ID (or the token's issuer and subject) with these values: no workload can ever match them, so the requests this ALLOW rule means to let through are denied (403 RBAC: access denied)"
		if len(fails) == 0 {
			st, why = Warn, fmt.Sprintf("a %s rule that no identity matches never applies, and a not-value that matches nothing excludes nobody; values marked cannot be confirmed depend on registrations whose IDs the check cannot enumerate", ap.Action)
		}
		fix := "principals are <trust domain>/ns/<namespace>/sa/<service account>, without spiffe://; correct the value, or create the service account, or opt the namespace in"
		if reqPrincipal {
			fix += "; for JWT-SVIDs write requestPrincipals <issuer>/* and match the SPIFFE ID with when: key request.auth.claims[sub] (manifests/jwt-svid)"
		}
		if !suggested && len(u.ids) > 0 {
			fix += fmt.Sprintf("; identities the registrations issue look like %s", strings.TrimPrefix(u.ids[0].ID, "spiffe://"))
		}
		out = append(out, e.finding(st, CheckPolicyPrincipals, ap.Namespace, "AuthorizationPolicy/"+ap.Name,
			fmt.Sprintf("AuthorizationPolicy %s/%s (%s): %s", ap.Namespace, ap.Name, ap.Action, strings.Join(append(fails, warns...), "; ")), why, fix))
	}
	if len(out) > 0 {
		return out
	}
	what := "no AuthorizationPolicy"
	if len(aps) > 0 {
		what = fmt.Sprintf("every identity value (%d) in %d AuthorizationPolicy object(s) matches identities the registrations can issue", values, len(aps))
	}
	return []Finding{e.finding(OK, CheckPolicyPrincipals, "", "", what, fmt.Sprintf("%d identities issuable in %d namespace(s)", len(u.ids), countNamespaces(u.ids)), "")}
}

func countNamespaces(ids []issuedID) int {
	seen := map[string]bool{}
	for _, id := range ids {
		seen[id.Namespace] = true
	}
	return len(seen)
}

// appliesToPod reports whether an AuthorizationPolicy is enforced by pod's sidecar: in the pod's
// namespace or Istio's root namespace, selecting its labels, and not attached through targetRefs
// (those apply to gateways and waypoints).
func (e *evaluator) appliesToPod(ap *AuthorizationPolicy, pod *corev1.Pod) bool {
	if ap.TargetRefs || (ap.Namespace != pod.Namespace && ap.Namespace != e.o.IstioRootNamespace) {
		return false
	}
	return labels.SelectorFromSet(ap.Selector).Matches(labels.Set(pod.Labels))
}

// admission says how a pod's sidecar treats requests: allowed by default (no ALLOW policy selects
// it), or the ALLOW policies that select it and whether any rule of theirs can match.
type admission struct {
	allows   []string
	admitted bool
}

func (e *evaluator) admissionOf(pod *corev1.Pod) admission {
	var a admission
	for i := range e.s.AuthorizationPolicies {
		ap := &e.s.AuthorizationPolicies[i]
		if ap.Action != "ALLOW" || !e.appliesToPod(ap, pod) {
			continue
		}
		desc := ap.Namespace + "/" + ap.Name
		if len(ap.Rules) == 0 {
			desc += " (no rules: denies everything)"
		}
		a.allows = append(a.allows, desc)
		if slices.ContainsFunc(ap.Rules, func(r AuthzRule) bool { return e.ruleSatisfiable(ap, r) }) {
			a.admitted = true
		}
	}
	return a
}

// policyAdmission is the audit's per-namespace half: wired mesh workloads that ALLOW policies
// select (the namespace then denies by default) and that no rule can admit.
func (e *evaluator) policyAdmission(nd *NamespaceData, ps podSet) []Finding {
	ns := nd.Name
	switch err := e.s.AuthorizationPoliciesErr; {
	case errors.Is(err, errNotInstalled):
		return []Finding{e.finding(OK, CheckPolicyAdmission, ns, "", "Istio's AuthorizationPolicy CRD is not installed: nothing denies by default", "", "")}
	case err != nil:
		return []Finding{e.unreadable(CheckPolicyAdmission, ns, "AuthorizationPolicies", err)}
	}
	type wl struct {
		w    workload
		pods []string
		a    admission
	}
	var wls []*wl
	idx := map[string]*wl{}
	for _, p := range ps.wired {
		if ps.statuses[p].Mode != annotations.ModeMesh {
			continue
		}
		w := owner(ns, p)
		key := w.kind + "/" + w.name
		if x, ok := idx[key]; ok {
			x.pods = append(x.pods, p.Name)
			continue
		}
		x := &wl{w: w, pods: []string{p.Name}, a: e.admissionOf(p)}
		idx[key] = x
		wls = append(wls, x)
	}
	var out []Finding
	selected := 0
	for _, x := range wls {
		if len(x.a.allows) == 0 {
			continue
		}
		selected++
		if x.a.admitted {
			continue
		}
		out = append(out, e.finding(Warn, CheckPolicyAdmission, ns, x.w.kind+"/"+x.w.name,
			fmt.Sprintf("%s/%s (pods %s) is selected by ALLOW AuthorizationPolicies %s, and none of their rules can match a request", x.w.kind, x.w.name, strings.Join(x.pods, ", "), strings.Join(x.a.allows, ", ")),
			"once an ALLOW policy selects a workload, Istio denies every request no ALLOW rule matches: rules that name identities no workload can hold (see policy-principals) admit nobody, so every request to it is refused (403 RBAC: access denied)",
			"add an ALLOW rule for the clients that should reach it (principals <trust domain>/ns/<namespace>/sa/<service account>), or correct the rules policy-principals reports"))
	}
	if len(out) > 0 {
		return out
	}
	what := "no wired mesh workload"
	if len(wls) > 0 {
		what = fmt.Sprintf("%d wired mesh workload(s): %d selected by ALLOW policies and admitted by at least one rule, %d allowed by default", len(wls), selected, len(wls)-selected)
	}
	return []Finding{e.finding(OK, CheckPolicyAdmission, ns, "", what, "", "")}
}

// sourceMatchesID reports whether a source's identity fields all admit a peer with SPIFFE ID id
// (request principals are about tokens, not the peer, and are not considered); ok is false when
// the source names no identity at all.
func (e *evaluator) sourceMatchesID(ap *AuthorizationPolicy, f AuthzSource, id string) (match, ok bool) {
	match = true
	check := func(field string, vs []string, not bool) {
		if len(vs) == 0 {
			return
		}
		ok = true
		hit := slices.ContainsFunc(vs, func(v string) bool {
			m := e.idMatcher(field, v, ap.Namespace)
			return m != nil && m(id)
		})
		if hit == not {
			match = false
		}
	}
	check(fieldPrincipals, f.Principals, false)
	check(fieldPrincipals, f.NotPrincipals, true)
	check(fieldNamespaces, f.Namespaces, false)
	check(fieldNamespaces, f.NotNamespaces, true)
	check(fieldServiceAccounts, f.ServiceAccounts, false)
	check(fieldServiceAccounts, f.NotServiceAccounts, true)
	return match, ok
}
