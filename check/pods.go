package check

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
)

// The pod checks of one namespace: which pods the webhook wired, and what their proxies look for.

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
		proxy, _, ok := mutators.FindContainer(p, e.cfg.Istio.ProxyContainerName)
		if !ok {
			continue
		}
		mesh++
		got := meshDefault
		for _, env := range proxy.Env {
			if env.Name == mutators.EnvIstioSocketFile {
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
