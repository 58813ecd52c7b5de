// Package preview is the offline form of the webhook (`spire-mesh-injector inject`), like
// `istioctl kube-inject`: it reads manifests, mutates the pod template of every workload exactly as
// admission would (the webhook's own entry point, package inject), and passes every other object
// through unchanged, in document order. Nothing holding a pod template passes through silently:
// every one that comes out unwired is reported with the reason, as are the warnings admission
// would give.
package preview

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/pmezard/go-difflib/difflib"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/inject"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
)

// templatePaths are the JSON pointers to the pod (template) of every kind the preview mutates.
var templatePaths = map[schema.GroupKind]string{
	{Group: "", Kind: "Pod"}:                               "",
	{Group: "", Kind: "ReplicationController"}:             "/spec/template",
	{Group: "apps", Kind: "Deployment"}:                    "/spec/template",
	{Group: "apps", Kind: "StatefulSet"}:                   "/spec/template",
	{Group: "apps", Kind: "DaemonSet"}:                     "/spec/template",
	{Group: "apps", Kind: "ReplicaSet"}:                    "/spec/template",
	{Group: "batch", Kind: "Job"}:                          "/spec/template",
	{Group: "batch", Kind: "CronJob"}:                      "/spec/jobTemplate/spec/template",
	{Group: "apps.openshift.io", Kind: "DeploymentConfig"}: "/spec/template",
	// OpenShift's legacy group-less DeploymentConfig (apiVersion: v1), which istioctl kube-inject
	// injects too (it matches kinds by name).
	{Group: "", Kind: "DeploymentConfig"}: "/spec/template",
}

// podTemplateAt are the places another kind may hold a pod template: an object with one there is
// reported, not passed through silently.
var podTemplateAt = []string{"/spec/template/spec/containers", "/spec/jobTemplate/spec/template/spec/containers"}

// Options tune the preview.
type Options struct {
	// Namespace is assumed for objects that name none.
	Namespace string
	// Registrations appends the ClusterSPIFFEIDs that admission would ensure.
	Registrations bool
	// Report receives one line per object holding a pod template that comes out unwired (and
	// why), and per warning admission would give; nil discards them.
	Report io.Writer
	// Diff writes a unified diff of each document the webhook changes, instead of the manifests.
	Diff bool
}

// Summary counts what Inject did.
type Summary struct {
	// Changed is the number of documents the webhook changes.
	Changed int
	// Reported is the number of objects holding a pod template that came out unwired.
	Reported int
	// Warnings is the number of warnings admission would give.
	Warnings int
}

// reporter collects Inject's reports.
type reporter struct {
	w       io.Writer
	summary *Summary
	doc     int
}

func (r *reporter) unwired(what, why string) {
	r.summary.Reported++
	r.line(what, "not wired: "+why)
}

func (r *reporter) warn(what, msg string) {
	r.summary.Warnings++
	r.line(what, "warning: "+msg)
}

func (r *reporter) line(what, msg string) {
	if r.w != nil {
		fmt.Fprintf(r.w, "document %d: %s: %s\n", r.doc, what, msg)
	}
}

// Inject reads YAML documents (or JSON) from r and writes the result to w: the manifests, or with
// Options.Diff the diff of each changed document. Input is treated as if its namespaces were opted
// in; a pod's opt-out label still wins. A pod the webhook would deny is an error naming the
// document.
func Inject(r io.Reader, w io.Writer, chain *mutators.Chain, opts Options) (Summary, error) {
	if opts.Namespace == "" {
		opts.Namespace = "default"
	}
	var summary Summary
	rep := &reporter{w: opts.Report, summary: &summary}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var out [][]byte
	namespaces := map[string]bool{}
	for n := 1; ; n++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return summary, fmt.Errorf("document %d: %w", n, err)
		}
		if isEmpty(doc) {
			continue
		}
		rep.doc = n
		res, err := injectDocument(doc, chain, opts.Namespace, namespaces, rep)
		if err != nil {
			return summary, fmt.Errorf("document %d: %w", n, err)
		}
		if !bytes.Equal(res, doc) {
			summary.Changed++
			if opts.Diff {
				if err := writeDiff(w, n, doc, res); err != nil {
					return summary, err
				}
			}
		}
		out = append(out, res)
	}
	if opts.Diff {
		return summary, nil
	}
	if opts.Registrations {
		list := make([]string, 0, len(namespaces))
		for ns := range namespaces {
			list = append(list, ns)
		}
		sort.Strings(list)
		for _, ns := range list {
			b, err := registrationYAML(chain, ns)
			if err != nil {
				return summary, err
			}
			out = append(out, b)
		}
	}
	for i, doc := range out {
		if i > 0 {
			if _, err := io.WriteString(w, "---\n"); err != nil {
				return summary, err
			}
		}
		if _, err := w.Write(doc); err != nil {
			return summary, err
		}
		if len(doc) > 0 && doc[len(doc)-1] != '\n' {
			if _, err := io.WriteString(w, "\n"); err != nil {
				return summary, err
			}
		}
	}
	return summary, nil
}

// writeDiff writes the unified diff of document n: both sides in the same YAML form (keys sorted,
// comments dropped), so that only what the webhook changes shows.
func writeDiff(w io.Writer, n int, before, after []byte) error {
	norm := func(doc []byte) (string, error) {
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return "", err
		}
		y, err := yaml.JSONToYAML(js)
		return string(y), err
	}
	a, err := norm(before)
	if err != nil {
		return err
	}
	b, err := norm(after)
	if err != nil {
		return err
	}
	d, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(a), B: difflib.SplitLines(b),
		FromFile: fmt.Sprintf("document %d, as written", n), ToFile: fmt.Sprintf("document %d, as the webhook wires it", n), Context: 3,
	})
	if err != nil {
		return err
	}
	_, err = io.WriteString(w, d)
	return err
}

// registrationYAML prints namespace ns's ClusterSPIFFEID as one would apply it: without the
// status its Go type always carries.
func registrationYAML(chain *mutators.Chain, ns string) ([]byte, error) {
	obj, err := registration.Build(chain.Config(), ns, nil)
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, err
	}
	delete(m, "status")
	delete(m["metadata"].(map[string]any), "creationTimestamp")
	return yaml.Marshal(m)
}

// isEmpty reports whether a YAML document holds only blank lines and comments.
func isEmpty(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		t := strings.TrimSpace(line)
		if t != "" && !strings.HasPrefix(t, "#") {
			return false
		}
	}
	return true
}

type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// injectDocument returns the document unchanged (same bytes) unless it holds a workload, or a List
// of objects some of which are workloads.
func injectDocument(doc []byte, chain *mutators.Chain, defaultNS string, namespaces map[string]bool, rep *reporter) ([]byte, error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	var h header
	if err := json.Unmarshal(js, &h); err != nil {
		return nil, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	gk := schema.FromAPIVersionAndKind(h.APIVersion, h.Kind).GroupKind()
	if gk == (schema.GroupKind{Kind: "List"}) {
		return injectList(js, chain, defaultNS, namespaces, rep)
	}
	out, changed, err := injectObject(js, h, chain, defaultNS, namespaces, rep)
	if err != nil || !changed {
		return doc, err
	}
	return yaml.JSONToYAML(out)
}

func injectList(js []byte, chain *mutators.Chain, defaultNS string, namespaces map[string]bool, rep *reporter) ([]byte, error) {
	var list map[string]json.RawMessage
	if err := json.Unmarshal(js, &list); err != nil {
		return nil, err
	}
	var items []json.RawMessage
	if raw, ok := list["items"]; ok {
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, fmt.Errorf("the items of the List: %w", err)
		}
	}
	for i, item := range items {
		var h header
		if err := json.Unmarshal(item, &h); err != nil {
			return nil, fmt.Errorf("item %d of the List: %w", i, err)
		}
		out, _, err := injectObject(item, h, chain, defaultNS, namespaces, rep)
		if err != nil {
			return nil, fmt.Errorf("item %d of the List: %w", i, err)
		}
		items[i] = out
	}
	b, err := json.Marshal(items)
	if err != nil {
		return nil, err
	}
	list["items"] = b
	b, err = json.Marshal(list)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(b)
}

// injectObject mutates the pod (template) of a workload object given as JSON, and reports a pod
// template it leaves unwired, and admission's warnings.
func injectObject(js []byte, h header, chain *mutators.Chain, defaultNS string, namespaces map[string]bool, rep *reporter) ([]byte, bool, error) {
	gk := schema.FromAPIVersionAndKind(h.APIVersion, h.Kind).GroupKind()
	what := h.Kind + "/" + h.Metadata.Name
	prefix, ok := templatePaths[gk]
	if !ok {
		for _, p := range podTemplateAt {
			if _, err := extract(js, p); err == nil {
				rep.unwired(what, fmt.Sprintf("%s holds a pod template at %s, but is not a kind spire-mesh-injector wires; its pods are wired when they are created, in an opted-in namespace", h.APIVersion+" "+h.Kind, strings.TrimSuffix(p, "/spec/containers")))
			}
		}
		return js, false, nil
	}
	tmpl, err := extract(js, prefix)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", what, err)
	}
	pod, err := inject.DecodePod(tmpl)
	if err != nil {
		return nil, false, fmt.Errorf("%s: pod template: %w", what, err)
	}
	ns := h.Metadata.Namespace
	if ns == "" {
		ns = defaultNS
	}
	// The webhook's own entry point: the preview is what admission does by construction.
	res, err := inject.Pod(chain.Run, pod, ns)
	if err != nil {
		return nil, false, fmt.Errorf("%s: %w", what, err)
	}
	for _, w := range res.Result.Warnings {
		rep.warn(what, w)
	}
	switch {
	case res.Result.Skipped == annotations.SkipOptOut:
		rep.unwired(what, fmt.Sprintf("the pod template opts out (label %s=%s)", annotations.InjectionLabel, annotations.InjectionDisabled))
	case res.Result.Skipped != "":
		rep.unwired(what, "skipped: "+string(res.Result.Skipped))
	case res.Result.Mode != "":
		namespaces[ns] = true
	}
	ops := res.Ops
	if len(ops) == 0 {
		return js, false, nil
	}
	for i := range ops {
		ops[i].Path = prefix + ops[i].Path
	}
	raw, err := inject.EncodePatch(ops)
	if err != nil {
		return nil, false, err
	}
	patch, err := jsonpatch.DecodePatch(raw)
	if err != nil {
		return nil, false, err
	}
	// A template may omit metadata altogether; admission always sees it.
	apply := jsonpatch.NewApplyOptions()
	apply.EnsurePathExistsOnAdd = true
	out, err := patch.ApplyWithOptions(js, apply)
	if err != nil {
		return nil, false, fmt.Errorf("%s: applying patch: %w", what, err)
	}
	return out, true, nil
}

// extract returns the JSON value at pointer (made of plain keys) in js.
func extract(js []byte, pointer string) ([]byte, error) {
	if pointer == "" {
		return js, nil
	}
	cur := json.RawMessage(js)
	for _, key := range strings.Split(strings.TrimPrefix(pointer, "/"), "/") {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(cur, &obj); err != nil || obj == nil {
			return nil, fmt.Errorf("%s is not an object", pointer)
		}
		next, ok := obj[key]
		if !ok || bytes.Equal(bytes.TrimSpace(next), []byte("null")) {
			return nil, fmt.Errorf("%s is missing", strings.ReplaceAll(strings.TrimPrefix(pointer, "/"), "/", "."))
		}
		cur = next
	}
	return cur, nil
}
