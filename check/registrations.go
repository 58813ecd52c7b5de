package check

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
)

// The registration checks of one namespace: its own ClusterSPIFFEID, its class and status, and
// other registrations that compete with it.

// registration finds the namespace's own ClusterSPIFFEID and reports whether it is there and
// valid; it returns the object for the checks that read it further.
func (e *evaluator) registration(nd *NamespaceData, ps podSet) (*spirev1alpha1.ClusterSPIFFEID, []Finding) {
	ns := nd.Name
	name := identity.Name(ns)
	obj := "ClusterSPIFFEID/" + name
	switch err := e.s.RegistrationsErr; {
	case errors.Is(err, errNotInstalled):
		return nil, []Finding{e.finding(Fail, CheckRegistration, ns, obj, "the ClusterSPIFFEID CRD (spire.spiffe.io/v1alpha1) is not installed",
			"without spire-controller-manager nothing turns registrations into SPIRE entries", "install ZTWIM or spire-controller-manager")}
	case err != nil:
		return nil, []Finding{e.unreadable(CheckRegistration, ns, "ClusterSPIFFEIDs", err)}
	}
	var ours *spirev1alpha1.ClusterSPIFFEID
	for i := range e.s.Registrations {
		if e.s.Registrations[i].Name == name {
			ours = &e.s.Registrations[i]
		}
	}
	if ours == nil {
		if len(ps.wired) == 0 {
			return nil, []Finding{e.finding(OK, CheckRegistration, ns, obj, "no ClusterSPIFFEID yet, and no wired pod", "the webhook creates it with the first wired pod", "")}
		}
		return nil, []Finding{e.finding(Fail, CheckRegistration, ns, obj, fmt.Sprintf("%s missing; %d wired pod(s) wait for it", obj, len(ps.wired)),
			"spire-controller-manager creates SPIRE entries only for pods a ClusterSPIFFEID selects: these pods get no SVID",
			fmt.Sprintf("kubectl get events -n default --field-selector involvedObject.kind=Namespace,involvedObject.name=%s | grep Registration (the reason says what blocks it); the webhook's reconciler creates it once the cause is gone", ns))}
	}
	if _, err := spirev1alpha1.ParseClusterSPIFFEIDSpec(&ours.Spec); err != nil {
		return ours, []Finding{e.finding(Fail, CheckRegistration, ns, obj, obj+" is rejected by spire-controller-manager's parser: "+err.Error(),
			"spire-controller-manager skips it: no entries for this namespace", "delete it; the webhook's reconciler re-creates it from its configuration")}
	}
	if ours.Labels[identity.ManagedByLabel] != identity.ManagedByValue {
		return ours, []Finding{e.finding(Warn, CheckRegistration, ns, obj, obj+" exists but is not labelled "+identity.ManagedByLabel+"="+identity.ManagedByValue,
			"someone else created an object with the webhook's name: the reconciler never touches it", "delete it; the webhook re-creates its own")}
	}
	want, err := registration.Build(e.cfg, ns, nd.Namespace)
	if err != nil {
		return ours, []Finding{e.finding(Fail, CheckRegistration, ns, "Namespace/"+ns, err.Error(),
			"the webhook cannot build this namespace's registration: it refuses or warns on every pod", "fix the namespace annotation "+annotations.FederatesWithAnnotation)}
	}
	if !e.o.ConfigFromDefaults {
		if diff := specDiff(want.Spec, ours.Spec); len(diff) > 0 {
			return ours, []Finding{e.finding(Warn, CheckRegistration, ns, obj, fmt.Sprintf("%s differs from what the configuration gives in %s", obj, strings.Join(diff, ", ")),
				"the webhook runs another configuration than "+e.o.ConfigSource+", or its reconciler has not repaired the object yet",
				"check that the webhook runs this configuration (kubectl -n spire-mesh-injector logs deploy/spire-mesh-injector); the elected replica restores the spec")}
		}
	}
	return ours, []Finding{e.finding(OK, CheckRegistration, ns, obj, obj+" present and valid", "spiffeIDTemplate "+ours.Spec.SPIFFEIDTemplate, "")}
}

// specDiff names the top-level spec fields that differ, as spire-controller-manager's JSON names.
func specDiff(want, have spirev1alpha1.ClusterSPIFFEIDSpec) []string {
	toMap := func(s spirev1alpha1.ClusterSPIFFEIDSpec) map[string]json.RawMessage {
		b, _ := json.Marshal(s)
		m := map[string]json.RawMessage{}
		_ = json.Unmarshal(b, &m)
		return m
	}
	w, h := toMap(want), toMap(have)
	keys := map[string]bool{}
	for k := range w {
		keys[k] = true
	}
	for k := range h {
		keys[k] = true
	}
	var diff []string
	for k := range keys {
		if !bytes.Equal(w[k], h[k]) {
			diff = append(diff, k)
		}
	}
	sort.Strings(diff)
	return diff
}

func (e *evaluator) registrationClass(ns string, ours *spirev1alpha1.ClusterSPIFFEID) []Finding {
	obj := "ClusterSPIFFEID/" + ours.Name
	rule := e.classRule()
	if !rule.accepts(ours.Spec.ClassName) {
		return []Finding{e.finding(Fail, CheckRegistrationClass, ns, obj, fmt.Sprintf("%s has className %q; spire-controller-manager reconciles %s", obj, ours.Spec.ClassName, rule),
			"it is ignored without a word: no SPIRE entries, no status",
			fmt.Sprintf("set registration.className: %q and restart the webhook; its reconciler updates every registration", rule.class))}
	}
	return []Finding{e.finding(OK, CheckRegistrationClass, ns, obj, fmt.Sprintf("className %q is reconciled", ours.Spec.ClassName), "spire-controller-manager reconciles "+rule.String(), "")}
}

func (e *evaluator) registrationStatus(ns string, ours *spirev1alpha1.ClusterSPIFFEID, ps podSet) []Finding {
	obj := "ClusterSPIFFEID/" + ours.Name
	st := ours.Status.Stats
	wired := len(ps.wired)
	seeSCM := "read spire-controller-manager's log (ZTWIM: kubectl -n zero-trust-workload-identity-manager logs deploy/spire-controller-manager)"
	var out []Finding
	if st == (spirev1alpha1.ClusterSPIFFEIDStats{}) {
		if wired == 0 {
			return []Finding{e.finding(OK, CheckRegistrationStatus, ns, obj, "no status yet, and no wired pod", "", "")}
		}
		return []Finding{e.finding(Fail, CheckRegistrationStatus, ns, obj, fmt.Sprintf("%s has no status from spire-controller-manager although %d wired pod(s) exist", obj, wired),
			"spire-controller-manager has not reconciled it: it is not running, or it ignores this className",
			"check the class-name finding, then "+seeSCM)}
	}
	if st.NamespacesIgnored > 0 {
		out = append(out, e.finding(Fail, CheckRegistrationStatus, ns, obj, fmt.Sprintf("spire-controller-manager ignores namespace %s (namespacesIgnored %d)", ns, st.NamespacesIgnored),
			"the namespace matches its ignoreNamespaces: no entries for its pods",
			"remove the namespace from spire-controller-manager's ignoreNamespaces, or run the workloads elsewhere"))
	}
	if st.PodEntryRenderFailures > 0 {
		out = append(out, e.finding(Fail, CheckRegistrationStatus, ns, obj, fmt.Sprintf("podEntryRenderFailures %d", st.PodEntryRenderFailures),
			"spire-controller-manager could not render an entry for some selected pods (template fields missing on the pod or node)", seeSCM))
	}
	if st.EntryFailures > 0 {
		out = append(out, e.finding(Fail, CheckRegistrationStatus, ns, obj, fmt.Sprintf("entryFailures %d", st.EntryFailures),
			"the SPIRE server refused to create or update some entries: those pods get no SVID", seeSCM+" and the SPIRE server's"))
	}
	if st.EntriesMasked > 0 {
		out = append(out, e.finding(Warn, CheckRegistrationStatus, ns, obj, fmt.Sprintf("entriesMasked %d", st.EntriesMasked),
			"another ClusterSPIFFEID produces the same entries for some pods", "see the overlap finding"))
	}
	if st.PodsSelected < wired {
		out = append(out, e.finding(Warn, CheckRegistrationStatus, ns, obj, fmt.Sprintf("spire-controller-manager selected %d of %d wired pods at its last run", st.PodsSelected, wired),
			"stats are from its last reconcile (watch-driven, usually within a second of a pod change); a lasting gap means pods it cannot see or select",
			seeSCM))
	}
	if len(out) > 0 {
		return out
	}
	return []Finding{e.finding(OK, CheckRegistrationStatus, ns, obj, fmt.Sprintf("podsSelected %d, entriesToSet %d, no failures", st.PodsSelected, st.EntriesToSet), "", "")}
}

// overlap reports other registrations of a reconciled class that compete with ours for this
// namespace's wired pods (identity.Registration.Competes): spire-controller-manager would create an
// entry for each and the workload could get either identity.
func (e *evaluator) overlap(nd *NamespaceData, ps podSet) []Finding {
	ns := nd.Name
	if e.s.RegistrationsErr != nil {
		return nil
	}
	nsLabels := identity.NamespaceLabels(ns, nd.Namespace.Labels)
	var out []Finding
	for _, rr := range e.reconciledRegistrations() {
		o, r := rr.obj, rr.parsed
		var hit []string
		var example string
		for _, p := range ps.wired {
			c, err := r.Competes(e.cfg, p, func() (labels.Set, error) { return nsLabels, nil })
			if err != nil || c == nil {
				continue
			}
			hit = append(hit, p.Name)
			if example == "" {
				example = fmt.Sprintf("pod %s: %q from it, %q from ours", p.Name, c.Theirs, c.Ours)
			}
		}
		if len(hit) == 0 {
			continue
		}
		out = append(out, e.finding(Fail, CheckOverlap, ns, "ClusterSPIFFEID/"+o.Name,
			fmt.Sprintf("ClusterSPIFFEID %s (className %q, not fallback) also selects %d wired pod(s) with another SPIFFE ID (%s)", o.Name, o.Spec.ClassName, len(hit), example),
			"spire-controller-manager creates an entry for each registration: the workload may receive either identity, and the webhook refuses to ensure its own next to it",
			fmt.Sprintf("give %s fallback: true, narrow its selectors, or label the pods %s=%s", o.Name, annotations.InjectionLabel, annotations.InjectionDisabled)))
	}
	if len(out) == 0 {
		return []Finding{e.finding(OK, CheckOverlap, ns, "", "no other non-fallback registration selects the wired pods with another identity", "", "")}
	}
	return out
}
