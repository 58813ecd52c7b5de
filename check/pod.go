package check

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

// `check pod NAMESPACE/NAME`: one pod explained — which registration gives it which SPIFFE ID (as
// spire-controller-manager decides, fallback and masking included), whether spire-controller-manager
// reports that registration's entries as failed or masked, how the webhook wired it (or why not),
// and which AuthorizationPolicies admit it.

// RunPod collects what explaining pod ns/name needs (read-only) and explains it. Policies are read
// in every namespace: any of them may admit the pod as a client.
func RunPod(ctx context.Context, c client.Client, o Options, ns, name string) (*Report, error) {
	o.Namespaces, o.AllPolicies = []string{ns}, true
	o = o.withDefaults()
	snap, err := Collect(ctx, c, o)
	if err != nil {
		return nil, err
	}
	return ExplainPod(o, snap, name), nil
}

// ExplainPod explains pod name of the snapshot's one namespace: the config finding, then the pod's.
func ExplainPod(o Options, s *Snapshot, name string) *Report {
	o = o.withDefaults()
	e := newEvaluator(o, s)
	r := &Report{Config: o.ConfigSource}
	r.Findings = append(r.Findings, e.config()...)
	r.Findings = append(r.Findings, e.explainPod(name)...)
	for i := range r.Findings {
		r.Findings[i].Runbook = Runbook(r.Findings[i].Check)
	}
	return r
}

func (e *evaluator) explainPod(name string) []Finding {
	if len(e.s.Namespaces) != 1 {
		return []Finding{e.finding(Fail, CheckPodWiring, "", "Pod/"+name, "no namespace to look for pod "+name+" in", "", "name it as NAMESPACE/NAME")}
	}
	nd := &e.s.Namespaces[0]
	ns, obj := nd.Name, "Pod/"+name
	switch {
	case nd.Namespace == nil:
		return []Finding{e.finding(Fail, CheckPodWiring, ns, obj, "namespace "+ns+" not found", "", "check the name")}
	case nd.PodsErr != nil:
		return []Finding{e.unreadable(CheckPodWiring, ns, "pods in "+ns, nd.PodsErr)}
	}
	i := slices.IndexFunc(nd.Pods, func(p corev1.Pod) bool { return p.Name == name })
	if i < 0 {
		return []Finding{e.finding(Fail, CheckPodWiring, ns, obj, fmt.Sprintf("pod %s not found in namespace %s", name, ns), "", "kubectl -n "+ns+" get pods")}
	}
	p := &nd.Pods[i]
	out := e.podWiring(nd, p)
	if e.podAmbient(p, nd.Namespace.Labels[IstioDataplaneModeLabel] == "ambient") {
		out = append(out, e.finding(Fail, CheckIstioMode, ns, obj, fmt.Sprintf("pod %s is in Istio's ambient mode", name), ambientWhy,
			fmt.Sprintf("remove %s=ambient from the pod (or its namespace) and use sidecar injection", IstioDataplaneModeLabel)))
	}
	identityFindings, ids := e.podIdentity(nd, p)
	out = append(out, identityFindings...)
	out = append(out, e.podPolicies(nd, p, ids)...)
	return out
}

// hasCSIVolume reports whether the pod mounts a volume of the SPIFFE CSI driver: without one, no
// identity reaches it, whatever the registrations say.
func (e *evaluator) hasCSIVolume(p *corev1.Pod) bool {
	return slices.ContainsFunc(p.Spec.Volumes, func(v corev1.Volume) bool { return v.CSI != nil && v.CSI.Driver == e.cfg.CSIDriver })
}

func (e *evaluator) podWiring(nd *NamespaceData, p *corev1.Pod) []Finding {
	ns, obj := nd.Name, "Pod/"+p.Name
	w := owner(ns, p)
	fix := w.fix
	if fix == "" {
		fix = fmt.Sprintf("kubectl -n %s delete pod %s (%s/%s creates a new one, which the webhook wires)", ns, p.Name, w.kind, w.name)
	}
	if p.Labels[annotations.InjectionLabel] == annotations.InjectionDisabled {
		return []Finding{e.finding(OK, CheckPodWiring, ns, obj, fmt.Sprintf("pod %s is opted out (label %s=%s): the API server never sends it to the webhook", p.Name, annotations.InjectionLabel, annotations.InjectionDisabled),
			"it gets a SPIRE identity only from a registration that selects it and a SPIFFE CSI volume it mounts itself", "")}
	}
	raw, ok := p.Annotations[annotations.StatusAnnotation]
	if !ok {
		if !identity.OptedIn(nd.Namespace.Labels) {
			return []Finding{e.finding(Fail, CheckPodWiring, ns, obj, fmt.Sprintf("pod %s is not wired: namespace %s is not opted in", p.Name, ns),
				"the API server does not call the webhook for its pods",
				fmt.Sprintf("kubectl label namespace %s %s=%s, then %s", ns, annotations.InjectionLabel, annotations.InjectionEnabled, fix))}
		}
		why := "created before the namespace opted in, or while the webhook was unreachable (failurePolicy Ignore)"
		for _, r := range e.s.Registrations {
			if r.Name == identity.Name(ns) && p.CreationTimestamp.Before(&r.CreationTimestamp) {
				why = fmt.Sprintf("created at %s, before the namespace's registration (%s): most likely before the namespace opted in", p.CreationTimestamp.UTC().Format("2006-01-02T15:04:05Z"), r.CreationTimestamp.UTC().Format("2006-01-02T15:04:05Z"))
			}
		}
		return []Finding{e.finding(Fail, CheckPodWiring, ns, obj, fmt.Sprintf("pod %s is not wired (no %s annotation)", p.Name, annotations.StatusAnnotation), why, fix)}
	}
	st, err := annotations.ParseStatus(raw)
	switch {
	case err != nil:
		return []Finding{e.finding(Warn, CheckPodWiring, ns, obj, fmt.Sprintf("pod %s has an unreadable %s annotation", p.Name, annotations.StatusAnnotation), err.Error(), fix)}
	case st.Skipped != "":
		return []Finding{e.finding(Warn, CheckPodWiring, ns, obj, fmt.Sprintf("pod %s was skipped by the webhook (%s)", p.Name, st.Skipped), "the webhook left it alone", fix)}
	}
	what := fmt.Sprintf("pod %s is wired in %s mode", p.Name, st.Mode)
	var details []string
	if st.Registration != "" {
		details = append(details, "registration "+st.Registration)
	}
	if st.SPIFFEID != "" {
		details = append(details, "SPIFFE ID "+st.SPIFFEID)
	}
	if len(st.Audiences) > 0 {
		details = append(details, "JWT-SVID audiences "+strings.Join(st.Audiences, ", "))
	}
	if st.ConfigVersion != "" {
		details = append(details, "configuration "+st.ConfigVersion)
	}
	return []Finding{e.finding(OK, CheckPodWiring, ns, obj, what, strings.Join(details, ", "), "")}
}

// podIdentity says which registration gives the pod which SPIFFE ID, and what
// spire-controller-manager reports about those entries; it returns the pod's SPIFFE IDs.
func (e *evaluator) podIdentity(nd *NamespaceData, p *corev1.Pod) ([]Finding, []string) {
	ns, obj := nd.Name, "Pod/"+p.Name
	switch err := e.s.RegistrationsErr; {
	case errors.Is(err, errNotInstalled):
		return []Finding{e.finding(Fail, CheckPodIdentity, ns, obj, "the ClusterSPIFFEID CRD is not installed: no registration gives the pod an identity", "", "install ZTWIM or spire-controller-manager")}, nil
	case err != nil:
		return []Finding{e.unreadable(CheckPodIdentity, ns, "ClusterSPIFFEIDs", err)}, nil
	}
	entries, failures, ignoredBy := e.podEntries(p, identity.NamespaceLabels(ns, nd.Namespace.Labels))
	if ignoredBy != "" {
		return []Finding{e.finding(Fail, CheckPodIdentity, ns, obj, fmt.Sprintf("spire-controller-manager ignores namespace %s (ignoreNamespaces entry %q): no registration gives pod %s an SVID", ns, ignoredBy, p.Name),
			"its ignoreNamespaces are unanchored regular expressions", "run the workload in a namespace no entry matches")}, nil
	}
	var out []Finding
	var ids []string
	var served []podEntry
	var notes []string
	for _, pe := range entries {
		if pe.maskedBy() != "" {
			continue
		}
		served = append(served, pe)
		if pe.ID != "" && !slices.Contains(ids, pe.ID) {
			ids = append(ids, pe.ID)
		}
	}
	if p.Spec.NodeName == "" {
		notes = append(notes, "the pod is not scheduled yet: spire-controller-manager renders its entries once it is")
	}
	for _, f := range failures {
		notes = append(notes, fmt.Sprintf("%s selects it but cannot render an entry: %v", describeIssuer(f.reg, f.Registration.Fallback), f.Err))
	}
	mounts := e.hasCSIVolume(p)
	switch {
	case len(served) == 0:
		why := "no ClusterSPIFFEID of a class spire-controller-manager reconciles selects it and renders an entry"
		if len(notes) > 0 {
			why += "; " + strings.Join(notes, "; ")
		}
		out = append(out, e.finding(Fail, CheckPodIdentity, ns, obj, fmt.Sprintf("no registration gives pod %s a SPIFFE ID", p.Name), why,
			"wire it (see pod-wiring), or give its namespace a registration"))
	case len(ids) > 1:
		var from []string
		for _, pe := range served {
			from = append(from, fmt.Sprintf("%s from %s", pe.ID, describeIssuer(pe.reg, pe.Registration.Fallback)))
		}
		out = append(out, e.finding(Fail, CheckPodIdentity, ns, obj, fmt.Sprintf("pod %s gets %d SPIFFE IDs: %s", p.Name, len(ids), strings.Join(from, "; ")),
			"SPIRE delivers every entry; Istio's SDS default (and go-spiffe's default SVID) is the one with the lowest entry ID, which is random per pod",
			"give the other registration fallback: true, or narrow its selectors (see the overlap finding of check -n "+ns+")"))
	default:
		pe := served[0]
		id := pe.ID
		if pe.NodeDependent {
			id = "(an ID that depends on its node)"
		}
		what := fmt.Sprintf("pod %s gets %s from %s", p.Name, id, describeIssuer(pe.reg, pe.Registration.Fallback))
		st, why, fix := OK, strings.Join(notes, "; "), ""
		if raw, ok := p.Annotations[annotations.StatusAnnotation]; ok {
			if s, err := annotations.ParseStatus(raw); err == nil && s.SPIFFEID != "" && pe.ID != "" && s.SPIFFEID != pe.ID {
				st, why = Warn, fmt.Sprintf("its status annotation says %s (wired under another configuration, or another registration wins)", s.SPIFFEID)
				fix = "compare the registrations: kubectl get clusterspiffeid -o custom-columns=NAME:.metadata.name,CLASS:.spec.className,FALLBACK:.spec.fallback,TEMPLATE:.spec.spiffeIDTemplate"
			}
		}
		if !mounts {
			st, why = Fail, fmt.Sprintf("but it mounts no volume of the SPIFFE CSI driver %s: the SVID cannot reach it", e.cfg.CSIDriver)
			fix = "wire it (see pod-wiring), or mount the CSI volume"
		}
		out = append(out, e.finding(st, CheckPodIdentity, ns, obj, what, why, fix))
	}
	out = append(out, e.podEntryStatus(ns, obj, entries, failures)...)
	return out, ids
}

// podEntryStatus reports what spire-controller-manager says about the registrations serving the
// pod: entry failures, masked entries, render failures.
func (e *evaluator) podEntryStatus(ns, obj string, entries, failures []podEntry) []Finding {
	seeSCM := "read spire-controller-manager's log (ZTWIM: kubectl -n zero-trust-workload-identity-manager logs deploy/spire-controller-manager) and the SPIRE server's"
	var out []Finding
	var oks []string
	for _, pe := range entries {
		reg := "ClusterSPIFFEID/" + pe.reg.Name
		if pe.maskedBy() != "" {
			out = append(out, e.finding(Warn, CheckPodEntries, ns, reg, fmt.Sprintf("%s's entry for this pod is masked by ClusterSPIFFEID %s (same SPIFFE ID %s, older)", describeIssuer(pe.reg, pe.Registration.Fallback), pe.maskedBy(), pe.ID),
				"spire-controller-manager keeps one entry per SPIFFE ID, parent and selectors, from the oldest registration: "+pe.maskedBy()+"'s federatesWith, DNS names and TTLs apply, "+pe.reg.Name+"'s are dropped (it counts entriesMasked)",
				"give "+pe.maskedBy()+" the same spec, or delete it if it is a leftover"))
			continue
		}
		st := pe.reg.Status.Stats
		switch {
		case st == (spirev1alpha1.ClusterSPIFFEIDStats{}):
			out = append(out, e.finding(Warn, CheckPodEntries, ns, reg, fmt.Sprintf("%s has no status from spire-controller-manager", describeIssuer(pe.reg, pe.Registration.Fallback)),
				"it has not reconciled it (yet): it is not running, or it ignores the class", seeSCM))
		case st.EntryFailures > 0:
			out = append(out, e.finding(Fail, CheckPodEntries, ns, reg, fmt.Sprintf("%s reports entryFailures %d", describeIssuer(pe.reg, pe.Registration.Fallback), st.EntryFailures),
				"the SPIRE server refused some of its entries (this pod's may be one): for example a federatesWith trust domain it holds no bundle for. The pod keeps no SVID, and a fallback does not step in",
				seeSCM))
		default:
			oks = append(oks, fmt.Sprintf("%s: podsSelected %d, entriesToSet %d, no entry failures", pe.reg.Name, st.PodsSelected, st.EntriesToSet))
		}
	}
	for _, f := range failures {
		out = append(out, e.finding(Fail, CheckPodEntries, ns, "ClusterSPIFFEID/"+f.reg.Name, fmt.Sprintf("%s cannot render an entry for the pod: %v", describeIssuer(f.reg, f.Registration.Fallback), f.Err),
			"spire-controller-manager counts a podEntryRenderFailure and creates nothing from it", "correct its spiffeIDTemplate"))
	}
	if len(out) == 0 && len(oks) > 0 {
		out = append(out, e.finding(OK, CheckPodEntries, ns, obj, strings.Join(oks, "; "), "", ""))
	}
	return out
}

// podPolicies lists the AuthorizationPolicies that admit (or deny) the pod as a client, by its
// SPIFFE ID, and how its own sidecar treats requests.
func (e *evaluator) podPolicies(nd *NamespaceData, p *corev1.Pod, ids []string) []Finding {
	ns, obj := nd.Name, "Pod/"+p.Name
	switch err := e.s.AuthorizationPoliciesErr; {
	case errors.Is(err, errNotInstalled):
		return []Finding{e.finding(OK, CheckPodPolicies, ns, obj, "Istio's AuthorizationPolicy CRD is not installed: no policy admits or denies it", "", "")}
	case err != nil:
		return []Finding{e.unreadable(CheckPodPolicies, ns, "AuthorizationPolicies", err)}
	}
	var allowedBy, deniedBy []string
	for i := range e.s.AuthorizationPolicies {
		ap := &e.s.AuthorizationPolicies[i]
		hit := false
		for _, rule := range ap.Rules {
			for _, f := range rule.From {
				for _, id := range ids {
					if m, ok := e.sourceMatchesID(ap, f, id); ok && m {
						hit = true
					}
				}
			}
		}
		if !hit {
			continue
		}
		desc := ap.Namespace + "/" + ap.Name
		if ap.Action == "DENY" {
			deniedBy = append(deniedBy, desc)
		} else if ap.Action == "ALLOW" {
			allowedBy = append(allowedBy, desc)
		}
	}
	slices.Sort(allowedBy)
	slices.Sort(deniedBy)
	client := "as a client (by its SPIFFE ID), no policy names it"
	if len(ids) == 0 {
		client = "as a client it has no SPIFFE ID a policy could name"
	} else if len(allowedBy)+len(deniedBy) > 0 {
		client = "as a client, admitted by ALLOW policies: " + orNone(allowedBy) + "; denied by DENY policies: " + orNone(deniedBy)
	}
	if !e.hasSidecar(p) {
		return []Finding{e.finding(OK, CheckPodPolicies, ns, obj, client+"; it has no sidecar: Istio enforces no policy on requests to it", "", "")}
	}
	a := e.admissionOf(p)
	switch {
	case len(a.allows) == 0:
		return []Finding{e.finding(OK, CheckPodPolicies, ns, obj, client+"; as a server, no ALLOW policy selects it: requests are allowed unless a DENY policy matches", "", "")}
	case !a.admitted:
		return []Finding{e.finding(Warn, CheckPodPolicies, ns, obj, client+"; as a server, ALLOW policies "+strings.Join(a.allows, ", ")+" select it and none of their rules can match a request",
			"Istio then denies every request to it (403 RBAC: access denied)", "add an ALLOW rule for its clients, or correct the rules policy-principals reports")}
	}
	return []Finding{e.finding(OK, CheckPodPolicies, ns, obj, client+"; as a server, ALLOW policies "+strings.Join(a.allows, ", ")+" select it and admit the requests their rules match", "", "")}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
