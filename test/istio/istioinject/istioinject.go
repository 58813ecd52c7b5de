// Package istioinject runs Istio's own sidecar injection — istio.io/istio's pkg/kube/inject, with
// the injection templates, values and mesh config that Istio's own installer renders from its own
// charts — so that spire-mesh-injector's tests and benchmarks compare against Istio's real code
// rather than against what we believe Istio does.
//
// It lives in its own Go module because Istio pins a newer controller-runtime than the
// spire-controller-manager API the main module imports.
package istioinject

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	meshconfig "istio.io/api/mesh/v1alpha1"
	"istio.io/istio/operator/pkg/render"
	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/config/mesh/meshwatcher"
	"istio.io/istio/pkg/kube/inject"
	"istio.io/istio/pkg/kube/multicluster"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// Options choose what Istio's installer renders and how the injector behaves.
type Options struct {
	// Files are IstioOperator files layered over the default profile, as `istioctl install -f`
	// takes them: Istio's SPIRE sample (samples/security/spire/istio-spire-config.yaml) adds the
	// `spire` template this way.
	Files []string
	// Set are `--set` overrides, e.g. a mesh-wide proxyMetadata setting.
	Set []string
	// Native makes istio-proxy a native sidecar (an init container with restartPolicy Always), as
	// Istio does by default on Kubernetes 1.33+; a pod's sidecar.istio.io/nativeSidecar annotation
	// still wins, as in Istio.
	Native bool
	// SPIRENativeVariant rewrites the `spire` template so it patches istio-proxy under
	// initContainers instead of containers: the form Istio's SPIRE documentation gives for native
	// sidecars. The template is otherwise Istio's own, read from the rendered configuration.
	SPIRENativeVariant bool
}

// Injector is Istio's injection webhook and kube-inject, configured from Istio's own charts.
type Injector struct {
	config    *inject.Config
	values    string
	mesh      *meshconfig.MeshConfig
	webhook   *inject.Webhook
	mux       *http.ServeMux
	templates inject.Templates
	valuesCfg inject.ValuesConfig
}

// New renders Istio's installation (default profile plus o.Files and o.Set) with Istio's own
// renderer and embedded charts, takes the istio-sidecar-injector and istio ConfigMaps from it, and
// builds Istio's injection webhook on them.
func New(o Options) (*Injector, error) {
	// The native-sidecar mode is a process-wide feature flag in Istio; this is the only place it
	// is set, once per process, before the webhook reads it.
	if o.Native {
		features.EnableNativeSidecars = features.NativeSidecarModeEnabled
	} else {
		features.EnableNativeSidecars = features.NativeSidecarModeDisabled
	}
	set := append([]string{"profile=default"}, o.Set...)
	sets, _, err := render.GenerateManifest(o.Files, set, false, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("rendering Istio's installation: %w", err)
	}
	var rawConfig, values, meshData string
	for _, s := range sets {
		for _, m := range s.Manifests {
			if m.GetKind() != "ConfigMap" {
				continue
			}
			data, _ := m.Object["data"].(map[string]any)
			switch m.GetName() {
			case "istio-sidecar-injector":
				rawConfig, _ = data["config"].(string)
				values, _ = data["values"].(string)
			case "istio":
				meshData, _ = data["mesh"].(string)
			}
		}
	}
	if rawConfig == "" || values == "" || meshData == "" {
		return nil, errors.New("Istio's rendered installation has no istio-sidecar-injector or istio ConfigMap")
	}
	cfg, err := inject.UnmarshalConfig([]byte(rawConfig))
	if err != nil {
		return nil, err
	}
	if o.SPIRENativeVariant {
		if err := nativeVariant(&cfg); err != nil {
			return nil, err
		}
	}
	mc, err := mesh.ApplyMeshConfig(meshData, mesh.DefaultMeshConfig())
	if err != nil {
		return nil, fmt.Errorf("Istio's mesh config: %w", err)
	}
	vc, err := inject.NewValuesConfig(values)
	if err != nil {
		return nil, err
	}
	tmpls, err := inject.ParseTemplates(cfg.RawTemplates)
	if err != nil {
		return nil, err
	}

	store := model.NewFakeStore()
	env := &model.Environment{Watcher: meshwatcher.NewTestWatcher(mc), ConfigStore: store}
	env.SetPushContext(&model.PushContext{ProxyConfigs: model.GetProxyConfigs(store, mc)})
	mux := http.NewServeMux()
	wh, err := inject.NewWebhook(inject.WebhookParameters{
		Watcher:      &staticWatcher{config: &cfg, values: values},
		Env:          env,
		Mux:          mux,
		MultiCluster: multicluster.NewFakeController(),
	})
	if err != nil {
		return nil, err
	}
	return &Injector{config: &cfg, values: values, mesh: mc, webhook: wh, mux: mux, templates: tmpls, valuesCfg: vc}, nil
}

// nativeVariant moves the `spire` template's patch of istio-proxy from containers to
// initContainers, leaving everything else in Istio's template as it is.
func nativeVariant(cfg *inject.Config) error {
	raw, ok := cfg.RawTemplates["spire"]
	if !ok {
		return errors.New("the rendered configuration has no `spire` template: pass Istio's SPIRE sample with Files")
	}
	var t map[string]any
	if err := yaml.Unmarshal([]byte(raw), &t); err != nil {
		return fmt.Errorf("Istio's spire template: %w", err)
	}
	spec, _ := t["spec"].(map[string]any)
	if spec == nil || spec["containers"] == nil {
		return errors.New("Istio's spire template patches no containers")
	}
	spec["initContainers"], spec["containers"] = spec["containers"], nil
	delete(spec, "containers")
	b, err := yaml.Marshal(t)
	if err != nil {
		return err
	}
	cfg.RawTemplates["spire"] = string(b)
	return nil
}

// Handler is Istio's injection webhook handler, served at /inject as istiod serves it.
func (in *Injector) Handler() http.Handler { return in.mux }

// Mesh is the mesh configuration Istio's installer rendered (the istio ConfigMap's mesh), as istiod
// and the injector read it.
func (in *Injector) Mesh() *meshconfig.MeshConfig { return in.mesh }

// Template returns one of the rendered injection templates (for the record in test output).
func (in *Injector) Template(name string) string { return in.config.RawTemplates[name] }

// KubeInject is `istioctl kube-inject`: Istio's IntoResourceFile over a YAML stream of
// workloads (Pods, Deployments, StatefulSets, Jobs, CronJobs, ...). The template set each
// workload gets is chosen as in Istio, by its inject.istio.io/templates annotation.
func (in *Injector) KubeInject(r io.Reader, w io.Writer) error {
	return inject.IntoResourceFile(nil, in.templates, in.valuesCfg, "", in.mesh, r, w, func(string) {})
}

// Review sends one AdmissionReview body through Istio's webhook handler and returns the response
// body, exactly as the API server would receive it.
func (in *Injector) Review(body []byte) ([]byte, error) {
	req := httptest.NewRequest(http.MethodPost, "/inject", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	in.mux.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return nil, fmt.Errorf("Istio's webhook answered %d: %s", rec.Code, strings.TrimSpace(rec.Body.String()))
	}
	return rec.Body.Bytes(), nil
}

// ReviewFor builds the AdmissionReview the API server sends for creating pod in namespace.
func ReviewFor(pod *corev1.Pod, namespace string) ([]byte, error) {
	raw, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	return json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metaReview,
		Request: &admissionv1.AdmissionRequest{
			UID:       "7f0b2c1e-istio-bench",
			Kind:      podKind,
			Resource:  podResource,
			Namespace: namespace,
			Operation: admissionv1.Create,
			Object:    rawExtension(raw),
		},
	})
}

// staticWatcher hands Istio's webhook one fixed configuration: the injector here never reloads.
type staticWatcher struct {
	config *inject.Config
	values string
}

func (s *staticWatcher) SetHandler(func(*inject.Config, string) error) {}
func (s *staticWatcher) Run(<-chan struct{})                           {}
func (s *staticWatcher) Get() (*inject.Config, string, error)          { return s.config, s.values, nil }

var (
	metaReview  = metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}
	podKind     = metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}
	podResource = metav1.GroupVersionResource{Version: "v1", Resource: "pods"}
)

func rawExtension(raw []byte) runtime.RawExtension { return runtime.RawExtension{Raw: raw} }
