package check

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// istioTemplates returns the items of a pod's inject.istio.io/templates, comma-split and trimmed
// as Istio's injector reads them (selectTemplates).
func istioTemplates(p *corev1.Pod) []string {
	v, ok := p.Annotations[IstioTemplatesAnnotation]
	if !ok {
		return nil
	}
	var out []string
	for _, t := range strings.Split(v, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// withoutSPIRETemplate is the annotation's value once "spire" is removed; "" means remove the
// annotation (what is left is Istio's default, sidecar, or nothing).
func withoutSPIRETemplate(items []string) string {
	var rest []string
	for _, t := range items {
		if t != "spire" {
			rest = append(rest, t)
		}
	}
	if len(rest) == 0 || (len(rest) == 1 && rest[0] == "sidecar") {
		return ""
	}
	return strings.Join(rest, ",")
}

// templateFix is the command that removes "spire" from a workload's pod template.
func templateFix(ns string, w workload, value string) string {
	op := `{"op":"remove","path":"/spec/template/metadata/annotations/inject.istio.io~1templates"}`
	if value != "" {
		op = fmt.Sprintf(`{"op":"replace","path":"/spec/template/metadata/annotations/inject.istio.io~1templates","value":%q}`, value)
	}
	cli, res := "kubectl", ""
	switch w.kind {
	case "Deployment", "StatefulSet", "DaemonSet":
		res = strings.ToLower(w.kind) + "/" + w.name
	case "DeploymentConfig":
		cli, res = "oc", "dc/"+w.name
	}
	if res == "" {
		what := "annotation " + IstioTemplatesAnnotation + ": " + value
		if value == "" {
			what = "the annotation " + IstioTemplatesAnnotation
		}
		if w.kind == "Pod" {
			return fmt.Sprintf("create pod %s again with %s (a running pod's injection cannot change)", w.name, what)
		}
		return fmt.Sprintf("set %s in %s/%s's pod template (or its owner's), then re-create the pods", what, w.kind, w.name)
	}
	return fmt.Sprintf("%s -n %s patch %s --type=json -p '[%s]' (rolls the pods out)", cli, ns, res, op)
}

// istioSPIRETemplate lists the workloads whose pods still ask for Istio's spire injection
// template: spire-mesh-injector already wires the proxy to SPIRE, so the template is redundant,
// and on native sidecars it leaves an image-less istio-proxy stub in containers.
func (e *evaluator) istioSPIRETemplate(nd *NamespaceData) []Finding {
	ns := nd.Name
	type group struct {
		w     workload
		pods  []string
		value string
	}
	var groups []*group
	idx := map[string]*group{}
	for i := range nd.Pods {
		p := &nd.Pods[i]
		items := istioTemplates(p)
		if !livePod(p) || !slices.Contains(items, "spire") {
			continue
		}
		w := owner(ns, p)
		key := w.kind + "/" + w.name
		if g, ok := idx[key]; ok {
			g.pods = append(g.pods, p.Name)
			continue
		}
		g := &group{w: w, pods: []string{p.Name}, value: withoutSPIRETemplate(items)}
		idx[key] = g
		groups = append(groups, g)
	}
	if len(groups) == 0 {
		return []Finding{e.finding(OK, CheckIstioSPIRETemplate, ns, "", "no pod asks for Istio's spire injection template", "", "")}
	}
	var out []Finding
	for _, g := range groups {
		out = append(out, e.finding(Warn, CheckIstioSPIRETemplate, ns, g.w.kind+"/"+g.w.name,
			fmt.Sprintf("%s/%s still asks for Istio's spire injection template (%s includes spire): pods %s", g.w.kind, g.w.name, IstioTemplatesAnnotation, strings.Join(g.pods, ", ")),
			"spire-mesh-injector already gives istio-proxy the SPIFFE CSI volume and socket: the template is redundant, needs the spire template in every revision's mesh configuration, and on native sidecars leaves an image-less istio-proxy stub in containers",
			templateFix(ns, g.w, g.value)))
	}
	return out
}
