package check

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

func nsName(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

func (e *evaluator) namespace(nd *NamespaceData) []Finding {
	ns := nd.Name
	if nd.Namespace == nil {
		return []Finding{e.finding(Fail, CheckNamespaceSelector, ns, "Namespace/"+ns, "namespace "+ns+" not found", "", "check the name given with -n")}
	}
	out := e.namespaceSelector(nd)
	out = append(out, e.scmIgnore(nd)...)
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
	out = append(out, e.istioMode(nd)...)
	out = append(out, e.jwksFetch(nd)...)
	out = append(out, e.policyAdmission(nd, ps)...)
	out = append(out, e.istioSPIRETemplate(nd)...)
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
	nsLabels := identity.NamespaceLabels(ns, nd.Namespace.Labels)
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
