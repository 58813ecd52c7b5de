package check

import (
	"fmt"
	"strings"
)

// scmIgnore reports a namespace spire-controller-manager's ignoreNamespaces would leave without
// entries. The entries are unanchored regular expressions, so ZTWIM's "openshift-*" also ignores
// team-openshift-demo: the webhook wires such a namespace's pods, and none of them gets an SVID.
func (e *evaluator) scmIgnore(nd *NamespaceData) []Finding {
	ns := nd.Name
	r := e.ignoreRule()
	obj := "Namespace/" + ns
	var out []Finding
	if len(r.bad) > 0 {
		out = append(out, e.finding(Warn, CheckSCMIgnore, ns, "", fmt.Sprintf("spire-controller-manager's ignoreNamespaces has entries that are not regular expressions: %s", strings.Join(r.bad, ", ")),
			"spire-controller-manager compiles each entry at start-up and does not start on an invalid one ("+r.source+")",
			"correct ignoreNamespaces in spire-controller-manager's configuration"))
	}
	if p := r.match(ns); p != "" {
		why := fmt.Sprintf("ignoreNamespaces (%s, from %s) are unanchored regular expressions: %q matches %q. spire-controller-manager renders no entries for the namespace's pods: wired pods get no SVID (and their registration counts namespacesIgnored)", strings.Join(r.patterns, ", "), r.source, p, ns)
		fix := "run the workloads in a namespace no entry matches"
		if e.s.ZTWIM != nil {
			fix += " (ZTWIM writes spire-controller-manager's configuration and restores it)"
		} else {
			anchored := "^" + p + "$"
			if strings.HasSuffix(p, "-*") {
				// Written as a glob: what was meant is the prefix.
				anchored = "^" + strings.TrimSuffix(p, "*")
			}
			fix += ", or anchor the entry in spire-controller-manager's configuration (" + anchored + ")"
		}
		return append(out, e.finding(Fail, CheckSCMIgnore, ns, obj, fmt.Sprintf("spire-controller-manager ignores namespace %s (ignoreNamespaces entry %q)", ns, p), why, fix))
	}
	what := fmt.Sprintf("spire-controller-manager does not ignore namespace %s", ns)
	why := fmt.Sprintf("ignoreNamespaces %s, from %s", strings.Join(r.patterns, ", "), r.source)
	return append(out, e.finding(OK, CheckSCMIgnore, ns, "", what, why, ""))
}
