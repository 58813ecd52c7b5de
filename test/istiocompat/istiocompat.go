// Package istiocompat checks spire-mesh-injector against Istio's real injector: the istio-injector
// program of the separate module test/istio (Istio's own pkg/kube/inject with the templates Istio's
// installer renders), built and cached by `test/fixtures/tools/build.sh istio`. This package runs it, holds
// the corpus of workloads, and compares results; the envtest suite uses it too.
package istiocompat

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/tools"
)

// Injector is the folder build.sh istio prints: istio-injector and Istio's SPIRE sample config.
type Injector struct{ Dir string }

// Require finds the istio-injector build (ISTIO_ASSETS), skipping the test without it unless
// SMI_REQUIRE_ISTIO is set, as `make test` sets it.
func Require(t testing.TB) Injector {
	t.Helper()
	return Injector{Dir: tools.Require(t, "SMI_REQUIRE_ISTIO", "ISTIO_ASSETS", "istio", "istio-injector", SPIRESampleFile)}
}

// SPIRESampleFile is Istio's samples/security/spire/istio-spire-config.yaml as build.sh copies it
// from Istio's module: the IstioOperator that adds the `spire` injection template.
const SPIRESampleFile = "istio-spire-config.yaml"

// Binary is the path of istio-injector.
func (i Injector) Binary() string { return filepath.Join(i.Dir, "istio-injector") }

// SPIRESample is the path of Istio's SPIRE sample configuration.
func (i Injector) SPIRESample() string { return filepath.Join(i.Dir, SPIRESampleFile) }

// KubeInject runs Istio's kube-inject (IntoResourceFile) over docs with the installer flags args
// and returns the resulting documents in order.
func (i Injector) KubeInject(docs [][]byte, args ...string) ([][]byte, error) {
	cmd := exec.Command(i.Binary(), append([]string{"kube-inject", "-f", "-"}, args...)...)
	cmd.Stdin = bytes.NewReader(Join(docs))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("istio-injector kube-inject %v: %w: %s", args, err, lastLines(stderr.String(), 10))
	}
	res, err := Split(out)
	if err != nil {
		return nil, err
	}
	if len(res) != len(docs) {
		return nil, fmt.Errorf("istio-injector kube-inject returned %d documents for %d", len(res), len(docs))
	}
	return res, nil
}

// Item is one workload of the corpus.
type Item struct {
	// Name is the file name without its extension.
	Name string
	// Doc is the workload's YAML.
	Doc []byte
}

// Corpus reads every workload in dir, in file-name order.
func Corpus(dir string) ([]Item, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var items []Item
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		items = append(items, Item{Name: strings.TrimSuffix(filepath.Base(f), ".yaml"), Doc: b})
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("no workloads in %s", dir)
	}
	return items, nil
}

// Join writes docs as one YAML stream.
func Join(docs [][]byte) []byte {
	var b bytes.Buffer
	for _, d := range docs {
		b.WriteString("---\n")
		b.Write(d)
		if len(d) > 0 && d[len(d)-1] != '\n' {
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

// Split reads a YAML stream into its non-empty documents.
func Split(stream []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	var docs [][]byte
	for {
		d, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			docs = append(docs, d)
		}
	}
}

// templatePath is where each workload kind keeps its pod template (a Pod is its own).
var templatePath = map[string][]string{
	"Pod":         nil,
	"Deployment":  {"spec", "template"},
	"StatefulSet": {"spec", "template"},
	"DaemonSet":   {"spec", "template"},
	"ReplicaSet":  {"spec", "template"},
	"Job":         {"spec", "template"},
	"CronJob":     {"spec", "jobTemplate", "spec", "template"},
}

// Workload is a decoded workload document.
type Workload struct {
	obj map[string]any
}

// Decode parses a workload document of a kind with a pod template.
func Decode(doc []byte) (*Workload, error) {
	var obj map[string]any
	if err := yaml.Unmarshal(doc, &obj); err != nil {
		return nil, err
	}
	kind, _ := obj["kind"].(string)
	if _, ok := templatePath[kind]; !ok {
		return nil, fmt.Errorf("kind %q has no pod template", kind)
	}
	return &Workload{obj: obj}, nil
}

// Kind is the workload's kind.
func (w *Workload) Kind() string { k, _ := w.obj["kind"].(string); return k }

// Name is the workload's name.
func (w *Workload) Name() string {
	md, _ := w.obj["metadata"].(map[string]any)
	n, _ := md["name"].(string)
	return n
}

func (w *Workload) template() map[string]any {
	m := w.obj
	for _, k := range templatePath[w.Kind()] {
		next, _ := m[k].(map[string]any)
		if next == nil {
			next = map[string]any{}
			m[k] = next
		}
		m = next
	}
	return m
}

// SetTemplateMeta sets an annotation (annotation true) or a label on the pod template.
func (w *Workload) SetTemplateMeta(annotation bool, key, value string) {
	setMeta(w.template(), annotation, key, value)
}

// SetJobTemplateAnnotation sets an annotation on a CronJob's job template, where Istio's
// kube-inject reads a CronJob's injection annotations (and writes its status); other kinds are
// left alone.
func (w *Workload) SetJobTemplateAnnotation(key, value string) {
	if w.Kind() != "CronJob" {
		return
	}
	spec, _ := w.obj["spec"].(map[string]any)
	jt, _ := spec["jobTemplate"].(map[string]any)
	if jt != nil {
		setMeta(jt, true, key, value)
	}
}

func setMeta(t map[string]any, annotation bool, key, value string) {
	md, _ := t["metadata"].(map[string]any)
	if md == nil {
		md = map[string]any{}
		t["metadata"] = md
	}
	field := "labels"
	if annotation {
		field = "annotations"
	}
	m, _ := md[field].(map[string]any)
	if m == nil {
		m = map[string]any{}
		md[field] = m
	}
	m[key] = value
}

// Template decodes the pod template (for a Pod: its metadata and spec).
func (w *Workload) Template() (*corev1.PodTemplateSpec, error) {
	b, err := yaml.Marshal(map[string]any{"metadata": w.template()["metadata"], "spec": w.template()["spec"]})
	if err != nil {
		return nil, err
	}
	var t corev1.PodTemplateSpec
	if err := yaml.UnmarshalStrict(b, &t); err != nil {
		return nil, fmt.Errorf("%s/%s pod template: %w", w.Kind(), w.Name(), err)
	}
	return &t, nil
}

// Pod is the pod the workload's controller would create in namespace: the template's metadata and
// spec, the owner Istio and the API server see, and the name or generateName the controller uses.
func (w *Workload) Pod(namespace string) (*corev1.Pod, error) {
	t, err := w.Template()
	if err != nil {
		return nil, err
	}
	pod := &corev1.Pod{ObjectMeta: t.ObjectMeta, Spec: t.Spec}
	pod.APIVersion, pod.Kind = "v1", "Pod"
	pod.Namespace = namespace
	switch w.Kind() {
	case "Pod":
		pod.Name = w.Name()
	case "StatefulSet":
		pod.Name = w.Name() + "-0"
		// The StatefulSet controller gives each pod a claim per volume claim template.
		spec, _ := w.obj["spec"].(map[string]any)
		claims, _ := spec["volumeClaimTemplates"].([]any)
		for _, c := range claims {
			md, _ := c.(map[string]any)["metadata"].(map[string]any)
			name, _ := md["name"].(string)
			pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name + "-" + pod.Name},
			}})
		}
	case "Deployment":
		// A Deployment's ReplicaSet names its pods <deployment>-<hash>-<random>; Istio derives the
		// workload name from that and the pod-template-hash label.
		pod.GenerateName = w.Name() + "-7d4b9c8f6d-"
		if pod.Labels == nil {
			pod.Labels = map[string]string{}
		}
		pod.Labels["pod-template-hash"] = "7d4b9c8f6d"
	default:
		pod.GenerateName = w.Name() + "-"
	}
	return pod, nil
}

// Marshal encodes the workload.
func (w *Workload) Marshal() ([]byte, error) { return yaml.Marshal(w.obj) }

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func stripComments(d []byte) []byte {
	var b bytes.Buffer
	for _, l := range bytes.Split(d, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			b.Write(l)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}
