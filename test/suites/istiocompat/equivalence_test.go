// Package istiocompat_test is the Istio-compatibility suite: spire-mesh-injector checked against
// Istio's own injector (istio-injector from the module test/istio, run through
// test/fixtures/istiocompat) on the workloads of testdata/corpus, which the envtest suite's
// Istio-order test reads too.
package istiocompat_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/pmezard/go-difflib/difflib"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/preview"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/istiocompat"
)

const (
	templatesAnnotation = "inject.istio.io/templates"
	proxyName           = "istio-proxy"
	// The SPIRE sample's template mounts the socket here, next to Istio's default mount of the
	// same volume at /var/run/secrets/workload-spiffe-uds (the same folder where /var/run links
	// to /run, as in Istio's proxy image).
	sampleMountPath = "/run/secrets/workload-spiffe-uds"
	socketFileEnv   = "WORKLOAD_IDENTITY_SOCKET_FILE"
)

// variant is a SPIRE deployment the comparison is made for.
type variant struct {
	name string
	// config is spire-mesh-injector's configuration.
	config string
	// spireSet are the installer settings a user of Istio's SPIRE template needs besides the
	// sample: with ZTWIM's socket file name, the mesh-wide proxyMetadata setting.
	spireSet []string
}

var variants = []variant{
	{
		// Upstream SPIRE as in Istio's sample: the socket file is Istio's default name.
		name:   "upstream-spire",
		config: "trustDomain: example.org\nclusterName: demo\nsocketFileName: socket\n",
	},
	{
		// ZTWIM: the agent's socket is spire-agent.sock, so Istio's template needs the mesh-wide
		// setting; spire-mesh-injector sets it per pod instead.
		name:     "ztwim",
		config:   "trustDomain: example.org\nclusterName: demo\n",
		spireSet: []string{"--set", "meshConfig.defaultConfig.proxyMetadata." + socketFileEnv + "=" + config.DefaultSocketFileName},
	},
}

// TestEquivalenceWithIstiosSPIRETemplate is the promise "the result is what Istio's own SPIRE
// injection template produces, without the per-pod annotation", checked with Istio's own code:
// every corpus workload goes (1) through Istio's default injection and then spire-mesh-injector,
// and (2) through Istio's injection with Istio's SPIRE sample template, requested per workload as
// the sample instructs. After the differences that are ours by design (listed in byDesign, each of
// which must actually occur), the pod templates must be identical.
func TestEquivalenceWithIstiosSPIRETemplate(t *testing.T) {
	ist := istiocompat.Require(t)
	items, err := istiocompat.Corpus("testdata/corpus")
	require.NoError(t, err)
	var docs [][]byte
	for _, it := range items {
		docs = append(docs, it.Doc)
	}
	for _, native := range []bool{false, true} {
		mode, nativeArgs := "classic", []string(nil)
		if native {
			mode, nativeArgs = "native", []string{"--native"}
		}
		for _, v := range variants {
			t.Run(mode+"/"+v.name, func(t *testing.T) {
				cfg, err := config.Parse([]byte(v.config))
				require.NoError(t, err)

				// (1) Istio's default templates (the mesh's trust domain as in the sample), then us.
				istioOnly, err := ist.KubeInject(docs, append([]string{"--set", "meshConfig.trustDomain=example.org"}, nativeArgs...)...)
				require.NoError(t, err)
				var out bytes.Buffer
				_, err = preview.Inject(bytes.NewReader(istiocompat.Join(istioOnly)), &out, mutators.NewChain(cfg), preview.Options{})
				require.NoError(t, err)
				ours, err := istiocompat.Split(out.Bytes())
				require.NoError(t, err)
				require.Len(t, ours, len(items))

				// (2) Istio's SPIRE sample: its IstioOperator adds the `spire` template; each workload
				// asks for it and carries the managed-identity label, as the sample's README says.
				spireDocs := make([][]byte, len(items))
				for i, it := range items {
					spireDocs[i] = requestSPIRETemplate(t, it.Doc)
				}
				args := append([]string{"--iop", ist.SPIRESample()}, v.spireSet...)
				withSPIRE, err := ist.KubeInject(spireDocs, append(args, nativeArgs...)...)
				require.NoError(t, err)
				if native {
					// Sidecars need the template's native variant (see
					// TestIstioSPIRESampleAsShippedBreaksNativeSidecars); gateways keep istio-proxy in
					// containers and need the template as shipped: in native mode a user of Istio's
					// template needs both, and must pick one per workload.
					variant, err := ist.KubeInject(spireDocs, append(args, "--native", "--spire-native-variant")...)
					require.NoError(t, err)
					for i, it := range items {
						if !isGateway(t, it.Doc) {
							withSPIRE[i] = variant[i]
						}
					}
				}

				for i, it := range items {
					t.Run(it.Name, func(t *testing.T) {
						compare(t, cfg, template(t, ours[i]), template(t, withSPIRE[i]), template(t, it.Doc))
					})
				}
			})
		}
	}
}

// TestIstioSPIRESampleAsShippedBreaksNativeSidecars records why the comparison uses the
// native-sidecar variant of Istio's SPIRE template: the sample's template patches istio-proxy
// under `containers`, and with native sidecars (Istio's default since 1.27) Istio's kube-inject
// then leaves a second, image-less istio-proxy container beside the native one — a pod the API
// server refuses. spire-mesh-injector finds istio-proxy wherever Istio put it.
func TestIstioSPIRESampleAsShippedBreaksNativeSidecars(t *testing.T) {
	ist := istiocompat.Require(t)
	items, err := istiocompat.Corpus("testdata/corpus")
	require.NoError(t, err)
	doc := requestSPIRETemplate(t, items[1].Doc) // the Deployment
	res, err := ist.KubeInject([][]byte{doc}, "--iop", ist.SPIRESample(), "--native")
	require.NoError(t, err)
	tmpl := template(t, res[0])
	require.NotNil(t, container(tmpl.Spec.InitContainers, proxyName), "native istio-proxy")
	stray := container(tmpl.Spec.Containers, proxyName)
	require.NotNil(t, stray, "Istio's sample template no longer leaves a stray istio-proxy container in native mode: "+
		"the native variant may be unnecessary now")
	require.Empty(t, stray.Image)
}

// isGateway says whether a workload asks for Istio's gateway template.
func isGateway(t *testing.T, doc []byte) bool {
	t.Helper()
	return strings.HasPrefix(template(t, doc).Annotations[templatesAnnotation], "gateway")
}

// requestSPIRETemplate adds what Istio's SPIRE sample asks of each workload: the template
// annotation (sidecar,spire, or gateway,spire for a gateway) and the managed-identity label.
func requestSPIRETemplate(t *testing.T, doc []byte) []byte {
	t.Helper()
	w, err := istiocompat.Decode(doc)
	require.NoError(t, err)
	tmpl, err := w.Template()
	require.NoError(t, err)
	base := tmpl.Annotations[templatesAnnotation]
	if base == "" {
		base = "sidecar"
	}
	w.SetTemplateMeta(true, templatesAnnotation, base+",spire")
	// istioctl kube-inject reads a CronJob's annotations from its job template (the webhook reads
	// them from the pod), so a CronJob needs it there too.
	w.SetJobTemplateAnnotation(templatesAnnotation, base+",spire")
	w.SetTemplateMeta(false, annotations.ManagedIdentityLabel, "true")
	b, err := w.Marshal()
	require.NoError(t, err)
	return b
}

// difference is one way our result differs from Istio's SPIRE template on purpose. apply
// removes it from the two pod templates and reports whether it was there.
type difference struct {
	why string
	// when limits the difference to some configurations; nil means always.
	when func(cfg *config.Config) bool
	// apply may check, with t, that what it takes out differs only as it says.
	apply func(t *testing.T, ours, istio *corev1.PodTemplateSpec, cfg *config.Config) bool
}

// byDesign lists every difference between spire-mesh-injector's result and Istio's SPIRE template
// that is intended. Anything else that differs fails the comparison.
var byDesign = []difference{
	{
		why: "we record what we did in our status annotation and injected label",
		apply: func(_ *testing.T, ours, _ *corev1.PodTemplateSpec, _ *config.Config) bool {
			_, a := ours.Annotations[annotations.StatusAnnotation]
			_, l := ours.Labels[annotations.InjectedLabel]
			delete(ours.Annotations, annotations.StatusAnnotation)
			delete(ours.Labels, annotations.InjectedLabel)
			return a && l
		},
	},
	{
		why: "no per-pod `,spire` in inject.istio.io/templates: that annotation is what we make unnecessary",
		apply: func(_ *testing.T, ours, istio *corev1.PodTemplateSpec, _ *config.Config) bool {
			want, ok := ours.Annotations[templatesAnnotation]
			base := want
			if !ok {
				base = "sidecar"
			}
			if istio.Annotations[templatesAnnotation] != base+",spire" {
				return false
			}
			if ok {
				istio.Annotations[templatesAnnotation] = want
			} else {
				delete(istio.Annotations, templatesAnnotation)
			}
			return true
		},
	},
	{
		why: "one read-only mount of the socket volume at Istio's own path, where the sample keeps " +
			"Istio's read-write mount and adds a second, read-only one at " + sampleMountPath,
		apply: func(_ *testing.T, _, istio *corev1.PodTemplateSpec, cfg *config.Config) bool {
			p := proxy(istio)
			if p == nil {
				return false
			}
			var kept []corev1.VolumeMount
			found := false
			for _, m := range p.VolumeMounts {
				if m.Name == mutators.IstioSocketVolume && m.MountPath == sampleMountPath && m.ReadOnly {
					found = true
					continue
				}
				if m.Name == mutators.IstioSocketVolume && m.MountPath == cfg.Istio.SocketMountPath {
					m.ReadOnly = true
				}
				kept = append(kept, m)
			}
			p.VolumeMounts = kept
			return found
		},
	},
	{
		why: "the socket file name is set on each proxy (env " + socketFileEnv + ", appended) rather than " +
			"mesh-wide in proxyMetadata, which Istio also copies into PROXY_CONFIG (whose other fields must " +
			"be equal) and into istio-init, which never reads the socket",
		when: func(cfg *config.Config) bool { return cfg.SocketFileName != config.IstioDefaultSocketFileName },
		apply: func(t *testing.T, ours, istio *corev1.PodTemplateSpec, cfg *config.Config) bool {
			o, p := proxy(ours), proxy(istio)
			if o == nil || p == nil {
				return false
			}
			var moved *corev1.EnvVar
			var env []corev1.EnvVar
			for i := range p.Env {
				switch {
				case p.Env[i].Name == socketFileEnv:
					moved = &p.Env[i]
				case p.Env[i].Name == "PROXY_CONFIG" && strings.Contains(p.Env[i].Value, `"`+socketFileEnv+`":"`+cfg.SocketFileName+`"`):
					// Only the mesh-wide socket file setting may differ: every other field of
					// Istio's PROXY_CONFIG must be in ours. Once that holds, ours stands in for it.
					e := p.Env[i]
					requireSameProxyConfig(t, envValue(o, "PROXY_CONFIG"), e.Value, cfg.SocketFileName)
					e.Value = envValue(o, "PROXY_CONFIG")
					env = append(env, e)
				default:
					env = append(env, p.Env[i])
				}
			}
			if moved == nil || moved.Value != cfg.SocketFileName {
				return false
			}
			p.Env = append(env, *moved)
			for _, cs := range [][]corev1.Container{istio.Spec.InitContainers, istio.Spec.Containers} {
				for i := range cs {
					if cs[i].Name != proxyName {
						cs[i].Env = withoutEnv(cs[i].Env, socketFileEnv)
					}
				}
			}
			return true
		},
	},
}

// requireSameProxyConfig compares two PROXY_CONFIG values (Istio's ProxyConfig as JSON) field by
// field: ours, and istio's, which holds the mesh-wide proxyMetadata setting of the socket file name
// (socketFile) that ours sets on the proxy instead. Apart from that one key, they must be equal.
func requireSameProxyConfig(t *testing.T, ours, istio, socketFile string) {
	t.Helper()
	var o, i map[string]any
	require.NoError(t, json.Unmarshal([]byte(ours), &o), "our PROXY_CONFIG is JSON: %s", ours)
	require.NoError(t, json.Unmarshal([]byte(istio), &i), "Istio's PROXY_CONFIG is JSON: %s", istio)
	meta, _ := i["proxyMetadata"].(map[string]any)
	require.Equal(t, socketFile, meta[socketFileEnv], "Istio's PROXY_CONFIG has the mesh-wide socket file setting")
	delete(meta, socketFileEnv)
	if om, _ := o["proxyMetadata"].(map[string]any); om != nil {
		require.NotContains(t, om, socketFileEnv, "ours sets the socket file on the proxy, not in PROXY_CONFIG")
	}
	for _, m := range []map[string]any{o, i} {
		if pm, ok := m["proxyMetadata"].(map[string]any); ok && len(pm) == 0 {
			delete(m, "proxyMetadata")
		}
	}
	require.Equal(t, i, o, "PROXY_CONFIG differs beyond the socket file setting (Istio's SPIRE template vs ours)")
}

// compare checks one workload: ours (Istio's default injection, then spire-mesh-injector) against
// istio (Istio's SPIRE template); input is the workload as written.
func compare(t *testing.T, cfg *config.Config, ours, istio, input *corev1.PodTemplateSpec) {
	t.Helper()
	if proxy(istio) == nil {
		// Istio injects no proxy here (a host-network pod), with either template: the SPIRE
		// template then does nothing, while we wire the workload to the Workload API as a plain
		// workload. That difference is the point of plain-workload mode; check both halves.
		st, err := annotations.ParseStatus(ours.Annotations[annotations.StatusAnnotation])
		require.NoError(t, err)
		require.Equal(t, annotations.ModeWorkload, st.Mode, "Istio injected nothing, so the pod is a plain workload")
		untouched := input.DeepCopy()
		if untouched.Annotations == nil {
			untouched.Annotations = map[string]string{}
		}
		if untouched.Labels == nil {
			untouched.Labels = map[string]string{}
		}
		untouched.Annotations[templatesAnnotation] = "sidecar,spire"
		untouched.Labels[annotations.ManagedIdentityLabel] = "true"
		equalYAML(t, untouched, istio, "Istio's SPIRE template changed a pod Istio does not inject")
		return
	}

	// The SPIFFE wiring, stated on its own for a readable failure before the whole-pod diff.
	for name, tmpl := range map[string]*corev1.PodTemplateSpec{"ours": ours, "Istio's SPIRE template": istio} {
		v := volume(tmpl, mutators.IstioSocketVolume)
		require.NotNil(t, v, "%s: no %s volume", name, mutators.IstioSocketVolume)
		require.NotNil(t, v.CSI, "%s: %s is not a CSI volume: %+v", name, mutators.IstioSocketVolume, v.VolumeSource)
		require.Equal(t, cfg.CSIDriver, v.CSI.Driver, name)
		require.NotNil(t, v.CSI.ReadOnly, name)
		require.True(t, *v.CSI.ReadOnly, name)
		require.Equal(t, "true", tmpl.Labels[annotations.ManagedIdentityLabel], "%s: managed-identity label", name)
		p := proxy(tmpl)
		require.NotNil(t, p, "%s: no istio-proxy", name)
		require.True(t, hasMount(p, mutators.IstioSocketVolume, cfg.Istio.SocketMountPath), "%s: istio-proxy does not mount the socket at %s", name, cfg.Istio.SocketMountPath)
	}

	ours, istio = ours.DeepCopy(), istio.DeepCopy()
	for _, d := range byDesign {
		if d.when != nil && !d.when(cfg) {
			continue
		}
		require.True(t, d.apply(t, ours, istio, cfg), "listed difference not found (update byDesign if Istio changed): %s", d.why)
	}
	equalYAML(t, istio, ours, "spire-mesh-injector's result differs from Istio's SPIRE template beyond the listed differences")
}

// equalYAML fails with a unified diff of the two templates as YAML.
func equalYAML(t *testing.T, want, got *corev1.PodTemplateSpec, msg string) {
	t.Helper()
	w, err := yaml.Marshal(want)
	require.NoError(t, err)
	g, err := yaml.Marshal(got)
	require.NoError(t, err)
	if bytes.Equal(w, g) {
		return
	}
	diff, _ := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(string(w)), B: difflib.SplitLines(string(g)),
		FromFile: "Istio's SPIRE template", ToFile: "Istio + spire-mesh-injector", Context: 3,
	})
	t.Fatalf("%s:\n%s", msg, diff)
}

func template(t *testing.T, doc []byte) *corev1.PodTemplateSpec {
	t.Helper()
	w, err := istiocompat.Decode(doc)
	require.NoError(t, err)
	tmpl, err := w.Template()
	require.NoError(t, err)
	return tmpl
}

func proxy(t *corev1.PodTemplateSpec) *corev1.Container {
	if c := container(t.Spec.InitContainers, proxyName); c != nil {
		return c
	}
	return container(t.Spec.Containers, proxyName)
}

func container(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

func volume(t *corev1.PodTemplateSpec, name string) *corev1.Volume {
	for i := range t.Spec.Volumes {
		if t.Spec.Volumes[i].Name == name {
			return &t.Spec.Volumes[i]
		}
	}
	return nil
}

func hasMount(c *corev1.Container, volume, path string) bool {
	for _, m := range c.VolumeMounts {
		if m.Name == volume && m.MountPath == path {
			return true
		}
	}
	return false
}

func withoutEnv(env []corev1.EnvVar, name string) []corev1.EnvVar {
	var out []corev1.EnvVar
	for _, e := range env {
		if e.Name != name {
			out = append(out, e)
		}
	}
	return out
}

func envValue(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return fmt.Sprintf("<no %s>", name)
}

// TestPodsCarryingIstiosSPIRETemplateComeOutAsWithout is the migration promise: a workload that
// still asks for Istio's SPIRE template (inject.istio.io/templates: sidecar,spire or gateway,spire),
// injected by Istio's own injector in every shape the template produces — classic, native as
// shipped (an image-less istio-proxy stub left in containers beside the native one), native with
// the template's initContainers variant, and gateways — comes out of spire-mesh-injector exactly as
// the same workload injected without the template. Only the author's annotation stays (we warn
// about it and never edit it).
func TestPodsCarryingIstiosSPIRETemplateComeOutAsWithout(t *testing.T) {
	ist := istiocompat.Require(t)
	items, err := istiocompat.Corpus("testdata/corpus")
	require.NoError(t, err)
	plain := make([][]byte, len(items))
	templated := make([][]byte, len(items))
	for i, it := range items {
		plain[i] = it.Doc
		templated[i] = requestSPIRETemplate(t, it.Doc)
	}
	// wire runs each document through `inject` on its own: a pod the webhook refuses is an error.
	wire := func(t *testing.T, cfg *config.Config, docs [][]byte) ([]*corev1.PodTemplateSpec, []error) {
		tmpls, errs := make([]*corev1.PodTemplateSpec, len(docs)), make([]error, len(docs))
		for i, doc := range docs {
			var out bytes.Buffer
			if _, errs[i] = preview.Inject(bytes.NewReader(doc), &out, mutators.NewChain(cfg), preview.Options{}); errs[i] == nil {
				tmpls[i] = template(t, out.Bytes())
			}
		}
		return tmpls, errs
	}
	shapes := []struct {
		name string
		args []string
	}{
		{"classic", nil},
		{"native as shipped", []string{"--native"}},
		{"native variant", []string{"--native", "--spire-native-variant"}},
	}
	for _, v := range variants {
		cfg, err := config.Parse([]byte(v.config))
		require.NoError(t, err)
		for _, shape := range shapes {
			t.Run(v.name+"/"+shape.name, func(t *testing.T) {
				// The same mesh for both: only the per-workload template differs.
				mesh := append([]string{"--set", "meshConfig.trustDomain=example.org"}, v.spireSet...)
				if slices.Contains(shape.args, "--native") {
					mesh = append(mesh, "--native")
				}
				without, err := ist.KubeInject(plain, mesh...)
				require.NoError(t, err)
				with, err := ist.KubeInject(templated, append(append([]string{"--iop", ist.SPIRESample()}, mesh...), shape.args...)...)
				require.NoError(t, err)
				if slices.Contains(shape.args, "--native") {
					stray := 0
					for i := range with {
						if c := container(template(t, with[i]).Spec.Containers, proxyName); c != nil && c.Image == "" {
							stray++
						}
					}
					if !slices.Contains(shape.args, "--spire-native-variant") {
						require.Positive(t, stray, "Istio's template as shipped leaves an image-less istio-proxy in native mode")
					}
				}
				want, wantErrs := wire(t, cfg, without)
				got, gotErrs := wire(t, cfg, with)
				for i, it := range items {
					t.Run(it.Name, func(t *testing.T) {
						require.NoError(t, wantErrs[i])
						if slices.Contains(shape.args, "--spire-native-variant") && isGateway(t, it.Doc) {
							// The template's initContainers variant turns a gateway into a pod that
							// cannot run (see the mutators' spireTemplate): refused, naming the annotation.
							require.ErrorContains(t, gotErrs[i], `remove "spire" from annotation inject.istio.io/templates`)
							return
						}
						require.NoError(t, gotErrs[i])
						g := got[i].DeepCopy()
						require.Contains(t, g.Annotations[templatesAnnotation], "spire", "the author's annotation is kept")
						if base := want[i].Annotations[templatesAnnotation]; base != "" {
							g.Annotations[templatesAnnotation] = base
						} else {
							delete(g.Annotations, templatesAnnotation)
						}
						equalYAML(t, want[i], g, "with Istio's SPIRE template, spire-mesh-injector's result differs from the same workload without it")
					})
				}
			})
		}
	}
}
