package check

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"text/template"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
)

func nsName(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

// podSet sorts a namespace's live pods by what the webhook did to them.
type podSet struct {
	wired     []*corev1.Pod
	unwired   []*corev1.Pod
	skipped   []*corev1.Pod
	badStatus []*corev1.Pod
	optedOut  int
	statuses  map[*corev1.Pod]annotations.Status
}

func classify(pods []corev1.Pod) podSet {
	ps := podSet{statuses: map[*corev1.Pod]annotations.Status{}}
	for i := range pods {
		p := &pods[i]
		// Finished or leaving pods will not run again: nothing to fix on them.
		if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if p.Labels[annotations.InjectionLabel] == annotations.InjectionDisabled {
			ps.optedOut++
			continue
		}
		raw, ok := p.Annotations[annotations.StatusAnnotation]
		if !ok {
			ps.unwired = append(ps.unwired, p)
			continue
		}
		st, err := annotations.ParseStatus(raw)
		switch {
		case err != nil:
			ps.badStatus = append(ps.badStatus, p)
		case st.Skipped != "":
			ps.statuses[p] = st
			ps.skipped = append(ps.skipped, p)
		case st.Mode != "":
			ps.statuses[p] = st
			ps.wired = append(ps.wired, p)
		default:
			ps.badStatus = append(ps.badStatus, p)
		}
	}
	return ps
}

func (e *evaluator) namespace(nd *NamespaceData) []Finding {
	ns := nd.Name
	if nd.Namespace == nil {
		return []Finding{e.finding(Fail, CheckNamespaceSelector, ns, "Namespace/"+ns, "namespace "+ns+" not found", "", "check the name given with -n")}
	}
	out := e.namespaceSelector(nd)
	if nd.PodsErr != nil {
		return append(out, e.unreadable(CheckPodsNotWired, ns, "pods in "+ns, nd.PodsErr))
	}
	ps := classify(nd.Pods)
	ours, regFindings := e.registration(nd, ps)
	out = append(out, regFindings...)
	if ours != nil {
		out = append(out, e.registrationClass(ns, ours)...)
		out = append(out, e.registrationStatus(ns, ours, ps)...)
	}
	out = append(out, e.overlap(nd, ps)...)
	out = append(out, e.podsNotWired(ns, ps)...)
	out = append(out, e.podSocketFile(ns, ps)...)
	out = append(out, e.jwtAudience(nd, ps)...)
	return out
}

func (e *evaluator) namespaceSelector(nd *NamespaceData) []Finding {
	ns := nd.Name
	obj := "Namespace/" + ns
	if nd.Namespace.Labels[annotations.InjectionLabel] != annotations.InjectionEnabled {
		return []Finding{e.finding(Fail, CheckNamespaceSelector, ns, obj, fmt.Sprintf("namespace %s is not opted in (no label %s=%s)", ns, annotations.InjectionLabel, annotations.InjectionEnabled),
			"the API server does not call the webhook for its pods",
			fmt.Sprintf("kubectl label namespace %s %s=%s, then restart its workloads", ns, annotations.InjectionLabel, annotations.InjectionEnabled))}
	}
	if e.s.Webhook == nil {
		return nil
	}
	nsLabels := labels.Set(maps.Clone(nd.Namespace.Labels))
	if nsLabels == nil {
		nsLabels = labels.Set{}
	}
	// The API server sets this label on every namespace; objects built by hand may lack it.
	nsLabels[corev1.LabelMetadataName] = ns
	var out []Finding
	for _, w := range e.s.Webhook.Webhooks {
		sel, err := metav1.LabelSelectorAsSelector(w.NamespaceSelector)
		if err != nil {
			continue // reported by webhook-configuration
		}
		if !sel.Matches(nsLabels) {
			out = append(out, e.finding(Fail, CheckNamespaceSelector, ns, obj, fmt.Sprintf("webhook %s's namespaceSelector does not select namespace %s although it is opted in", w.Name, ns),
				fmt.Sprintf("the selector is %s: the API server does not call the webhook for this namespace's pods, which start unwired", sel),
				"system, SPIRE and the webhook's own namespaces are excluded on purpose: run the workloads in another namespace, or change namespaceSelector in kustomize"))
			continue
		}
		out = append(out, e.finding(OK, CheckNamespaceSelector, ns, obj, fmt.Sprintf("opted in and selected by webhook %s", w.Name), "", ""))
	}
	return out
}

// registration finds the namespace's own ClusterSPIFFEID and reports whether it is there and
// valid; it returns the object for the checks that read it further.
func (e *evaluator) registration(nd *NamespaceData, ps podSet) (*spirev1alpha1.ClusterSPIFFEID, []Finding) {
	ns := nd.Name
	name := registration.Name(ns)
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
	if ours.Labels[registration.ManagedByLabel] != registration.ManagedByValue {
		return ours, []Finding{e.finding(Warn, CheckRegistration, ns, obj, obj+" exists but is not labelled "+registration.ManagedByLabel+"="+registration.ManagedByValue,
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

// overlap reports other non-fallback registrations of a reconciled class that select this
// namespace's wired pods with another SPIFFE ID: spire-controller-manager would create an entry for
// each and the workload could get either identity.
func (e *evaluator) overlap(nd *NamespaceData, ps podSet) []Finding {
	ns := nd.Name
	if e.s.RegistrationsErr != nil {
		return nil
	}
	rule := e.classRule()
	nsLabels := labels.Set(maps.Clone(nd.Namespace.Labels))
	if nsLabels == nil {
		nsLabels = labels.Set{}
	}
	nsLabels[corev1.LabelMetadataName] = ns
	var out []Finding
	for i := range e.s.Registrations {
		o := &e.s.Registrations[i]
		if o.Labels[registration.ManagedByLabel] == registration.ManagedByValue || o.Spec.Fallback || o.DeletionTimestamp != nil || !rule.accepts(o.Spec.ClassName) {
			continue
		}
		parsed, err := spirev1alpha1.ParseClusterSPIFFEIDSpec(&o.Spec)
		if err != nil {
			continue // spire-controller-manager ignores what it cannot parse
		}
		if parsed.NamespaceSelector != nil && !parsed.NamespaceSelector.Matches(nsLabels) {
			continue
		}
		var hit []string
		var example string
		for _, p := range ps.wired {
			if parsed.PodSelector != nil && !parsed.PodSelector.Matches(labels.Set(p.Labels)) {
				continue
			}
			ours, _ := registration.SPIFFEID(e.cfg, p)
			theirs := render(parsed.SPIFFEIDTemplate, e.cfg, p)
			if ours != "" && ours == theirs {
				continue // the same entry: spire-controller-manager masks one, the workload gets one identity
			}
			hit = append(hit, p.Name)
			if example == "" {
				example = fmt.Sprintf("pod %s: %q from it, %q from ours", p.Name, theirs, ours)
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

// render renders a SPIFFE ID template as spire-controller-manager would before scheduling (node
// fields empty); "" when it cannot.
func render(t *template.Template, cfg *config.Config, pod *corev1.Pod) string {
	// The field names spire-controller-manager gives its templates.
	data := struct {
		TrustDomain, ClusterName, ClusterDomain string
		PodMeta                                 *metav1.ObjectMeta
		PodSpec                                 *corev1.PodSpec
		NodeMeta                                *metav1.ObjectMeta
		NodeSpec                                *corev1.NodeSpec
	}{cfg.TrustDomain, cfg.ClusterName, cfg.ClusterDomain, &pod.ObjectMeta, &pod.Spec, &metav1.ObjectMeta{}, &corev1.NodeSpec{}}
	var buf bytes.Buffer
	if err := t.Execute(&buf, &data); err != nil {
		return ""
	}
	return buf.String()
}

// workload is what owns a pod, and the command that re-creates its pods.
type workload struct {
	kind, name, fix string
}

func owner(ns string, p *corev1.Pod) workload {
	ref := metav1.GetControllerOf(p)
	if ref == nil {
		return workload{"Pod", p.Name, fmt.Sprintf("delete pod %s and create it again from its manifest (kubectl -n %s delete pod %s)", p.Name, ns, p.Name)}
	}
	switch ref.Kind {
	case "ReplicaSet":
		// A Deployment names its ReplicaSets <deployment>-<pod-template-hash>; reading the name
		// saves a read of the ReplicaSet (and the permission for it).
		if h := p.Labels[appsPodTemplateHash]; h != "" && strings.HasSuffix(ref.Name, "-"+h) {
			d := strings.TrimSuffix(ref.Name, "-"+h)
			return workload{"Deployment", d, fmt.Sprintf("kubectl -n %s rollout restart deployment/%s", ns, d)}
		}
	case "StatefulSet", "DaemonSet":
		return workload{ref.Kind, ref.Name, fmt.Sprintf("kubectl -n %s rollout restart %s/%s", ns, strings.ToLower(ref.Kind), ref.Name)}
	case "ReplicationController":
		// An OpenShift DeploymentConfig labels its pods with its own name.
		if dc := p.Labels["deploymentconfig"]; dc != "" {
			return workload{"DeploymentConfig", dc, fmt.Sprintf("oc -n %s rollout latest dc/%s", ns, dc)}
		}
	}
	return workload{ref.Kind, ref.Name, ""}
}

// appsPodTemplateHash is the label a Deployment puts on its ReplicaSets' pods.
const appsPodTemplateHash = "pod-template-hash"

func (e *evaluator) podsNotWired(ns string, ps podSet) []Finding {
	var out []Finding
	type group struct {
		w    workload
		pods []string
	}
	groupBy := func(pods []*corev1.Pod, reason func(*corev1.Pod) string) []group {
		idx := map[string]int{}
		var gs []group
		for _, p := range pods {
			w := owner(ns, p)
			key := w.kind + "/" + w.name + "/" + reason(p)
			i, ok := idx[key]
			if !ok {
				i = len(gs)
				idx[key] = i
				gs = append(gs, group{w: w})
			}
			gs[i].pods = append(gs[i].pods, p.Name)
		}
		return gs
	}
	fixOf := func(g group) string {
		if g.w.fix != "" {
			return g.w.fix
		}
		return fmt.Sprintf("kubectl -n %s delete pod %s (%s/%s creates new ones, which the webhook wires)", ns, strings.Join(g.pods, " "), g.w.kind, g.w.name)
	}
	noReason := func(*corev1.Pod) string { return "" }
	for _, g := range groupBy(ps.unwired, noReason) {
		out = append(out, e.finding(Fail, CheckPodsNotWired, ns, g.w.kind+"/"+g.w.name,
			fmt.Sprintf("%d pod(s) not wired (no %s annotation): %s", len(g.pods), annotations.StatusAnnotation, strings.Join(g.pods, ", ")),
			"created before the namespace opted in, or while the webhook was unreachable (failurePolicy Ignore): no SPIFFE CSI volume, no SPIRE identity",
			fixOf(g)))
	}
	skipReason := func(p *corev1.Pod) string { return string(ps.statuses[p].Skipped) }
	for _, g := range groupBy(ps.skipped, skipReason) {
		var reason annotations.SkipReason
		for _, p := range ps.skipped {
			if p.Name == g.pods[0] {
				reason = ps.statuses[p].Skipped
			}
		}
		why, fix := "the webhook left them alone", fixOf(g)
		if reason == annotations.SkipWindows {
			why, fix = "the SPIFFE CSI driver serves Linux nodes only: they run without SPIRE identity", "run the workload on Linux, or label it "+annotations.InjectionLabel+"="+annotations.InjectionDisabled+" to record that it needs none"
		}
		out = append(out, e.finding(Warn, CheckPodsNotWired, ns, g.w.kind+"/"+g.w.name,
			fmt.Sprintf("%d pod(s) skipped by the webhook (%s): %s", len(g.pods), reason, strings.Join(g.pods, ", ")), why, fix))
	}
	for _, g := range groupBy(ps.badStatus, noReason) {
		out = append(out, e.finding(Warn, CheckPodsNotWired, ns, g.w.kind+"/"+g.w.name,
			fmt.Sprintf("%d pod(s) with an unreadable %s annotation: %s", len(g.pods), annotations.StatusAnnotation, strings.Join(g.pods, ", ")),
			"written by another version of the webhook, or by hand: the check cannot tell whether they are wired", fixOf(g)))
	}
	if len(out) > 0 {
		return out
	}
	what := "no running pods"
	if len(ps.wired) > 0 {
		what = fmt.Sprintf("all %d running pod(s) wired", len(ps.wired))
	}
	if ps.optedOut > 0 {
		what += fmt.Sprintf(" (%d opted out with %s=%s)", ps.optedOut, annotations.InjectionLabel, annotations.InjectionDisabled)
	}
	return []Finding{e.finding(OK, CheckPodsNotWired, ns, "", what, "", "")}
}

// podSocketFile checks what istio-proxy in each wired mesh pod will look for: a pod wired under an
// older configuration keeps the socket file name it was given.
func (e *evaluator) podSocketFile(ns string, ps podSet) []Finding {
	want := e.cfg.SocketFileName
	meshDefault := config.IstioDefaultSocketFileName
	if e.s.IstioMesh != nil && e.s.IstioMesh.SocketFile != "" {
		meshDefault = e.s.IstioMesh.SocketFile
	}
	mesh := 0
	wrong := map[string][]*corev1.Pod{}
	for _, p := range ps.wired {
		if ps.statuses[p].Mode != annotations.ModeMesh {
			continue
		}
		proxy := findContainer(p, e.cfg.Istio.ProxyContainerName)
		if proxy == nil {
			continue
		}
		mesh++
		got := meshDefault
		for _, env := range proxy.Env {
			if env.Name == "WORKLOAD_IDENTITY_SOCKET_FILE" {
				got = env.Value
				if env.ValueFrom != nil {
					got = "(from " + describeValueFrom(env.ValueFrom) + ")"
				}
			}
		}
		if got != want {
			wrong[got] = append(wrong[got], p)
		}
	}
	if mesh == 0 {
		return nil
	}
	if len(wrong) == 0 {
		return []Finding{e.finding(OK, CheckSocketFile, ns, "", fmt.Sprintf("istio-proxy in %d wired pod(s) looks for %s", mesh, want), "", "")}
	}
	var out []Finding
	for _, got := range slices.Sorted(maps.Keys(wrong)) {
		pods := wrong[got]
		var names, fixes []string
		seen := map[string]bool{}
		for _, p := range pods {
			names = append(names, p.Name)
			w := owner(ns, p)
			fix := w.fix
			if fix == "" {
				fix = fmt.Sprintf("kubectl -n %s delete pod %s", ns, p.Name)
			}
			if !seen[fix] {
				seen[fix] = true
				fixes = append(fixes, fix)
			}
		}
		out = append(out, e.finding(Fail, CheckSocketFile, ns, "",
			fmt.Sprintf("istio-proxy in %d wired pod(s) looks for socket file %s, the agent publishes %s: %s", len(pods), got, want, strings.Join(names, ", ")),
			"pilot-agent finds no Workload API socket: the proxy errors, or serves Istio's own CA's certificates",
			strings.Join(fixes, "; ")))
	}
	return out
}

func describeValueFrom(v *corev1.EnvVarSource) string {
	switch {
	case v.ConfigMapKeyRef != nil:
		return "ConfigMap " + v.ConfigMapKeyRef.Name
	case v.SecretKeyRef != nil:
		return "Secret " + v.SecretKeyRef.Name
	case v.FieldRef != nil:
		return v.FieldRef.FieldPath
	}
	return "a reference"
}

// findContainer looks for the proxy where Istio may put it: containers, or initContainers for a
// native sidecar.
func findContainer(p *corev1.Pod, name string) *corev1.Container {
	for _, list := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
	}
	return nil
}

func (e *evaluator) jwtAudience(nd *NamespaceData, ps podSet) []Finding {
	ns := nd.Name
	requested := map[string][]string{}
	for _, p := range ps.wired {
		for _, a := range ps.statuses[p].Audiences {
			requested[a] = append(requested[a], p.Name)
		}
	}
	if len(requested) == 0 {
		return nil
	}
	auds := slices.Sorted(maps.Keys(requested))
	where := ns
	if ns != e.o.IstioRootNamespace {
		where += " or " + e.o.IstioRootNamespace
	}
	switch err := nd.RequestAuthErr; {
	case errors.Is(err, errNotInstalled):
		return []Finding{e.finding(OK, CheckJWTAudience, ns, "", fmt.Sprintf("pods request JWT-SVIDs for %s; Istio's RequestAuthentication CRD is not installed", strings.Join(auds, ", ")),
			"nothing in the mesh validates JWTs here: not compared", "")}
	case err != nil:
		return []Finding{e.unreadable(CheckJWTAudience, ns, "RequestAuthentications in "+where, err)}
	}
	if len(nd.RequestAuthentications) == 0 {
		return []Finding{e.finding(OK, CheckJWTAudience, ns, "", fmt.Sprintf("pods request JWT-SVIDs for %s; no RequestAuthentication in %s", strings.Join(auds, ", "), where),
			"the tokens are for services elsewhere: not compared", "")}
	}
	accepted := map[string]bool{}
	var names []string
	for _, ra := range nd.RequestAuthentications {
		names = append(names, ra.Namespace+"/"+ra.Name)
		for _, rule := range ra.Rules {
			if len(rule) == 0 {
				return []Finding{e.finding(OK, CheckJWTAudience, ns, "RequestAuthentication/"+ra.Namespace+"/"+ra.Name,
					fmt.Sprintf("pods request JWT-SVIDs for %s; RequestAuthentication %s/%s accepts any audience", strings.Join(auds, ", "), ra.Namespace, ra.Name), "", "")}
			}
			for _, a := range rule {
				accepted[a] = true
			}
		}
	}
	var out []Finding
	for _, a := range auds {
		if accepted[a] {
			continue
		}
		out = append(out, e.finding(Warn, CheckJWTAudience, ns, "",
			fmt.Sprintf("pod(s) %s request JWT-SVIDs for audience %q, which no RequestAuthentication in %s accepts (%s accept %s)", strings.Join(requested[a], ", "), a, where, strings.Join(names, ", "), strings.Join(slices.Sorted(maps.Keys(accepted)), ", ")),
			"a token for this audience sent to a service here is refused (401 Audiences in Jwt are not allowed); fine if the audience is a service in another namespace or outside the mesh",
			fmt.Sprintf("add %q to the audiences of the RequestAuthentication of the service the tokens are for, or correct the pods' %s annotation", a, annotations.AudienceAnnotation)))
	}
	if len(out) > 0 {
		return out
	}
	return []Finding{e.finding(OK, CheckJWTAudience, ns, "", fmt.Sprintf("every requested audience (%s) is accepted by a RequestAuthentication in %s", strings.Join(auds, ", "), where), "", "")}
}
