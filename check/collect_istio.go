package check

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// What the checks read of Istio beyond its mesh configuration: revisions and their tags, the
// injector's values (the proxy's version), istiod's Deployment (how JWKS are fetched), and the
// security and traffic objects the policy audit and the JWKS check read.

// DefaultRevision names Istio's default control plane: its objects carry no revision suffix
// (istio, istio-sidecar-injector, istiod).
const DefaultRevision = "default"

// Istio's labels the checks read.
const (
	// IstioRevLabel selects a revision (or a revision tag) on a namespace or a pod; Istio's
	// injector also writes it on the pods it injects.
	IstioRevLabel = "istio.io/rev"
	// IstioTagLabel names the tag an istio-revision-tag-* MutatingWebhookConfiguration serves.
	IstioTagLabel = "istio.io/tag"
	// IstioInjectionLabel is the classic namespace opt-in (value "enabled": the default revision).
	IstioInjectionLabel = "istio-injection"
	// IstioDataplaneModeLabel puts a namespace or pod into ambient mode (value "ambient"); a pod
	// opts out with "none".
	IstioDataplaneModeLabel = "istio.io/dataplane-mode"
	// IstioSidecarStatusAnnotation is written by Istio's injector on every pod it injects.
	IstioSidecarStatusAnnotation = "sidecar.istio.io/status"
	// IstioTemplatesAnnotation selects Istio's injection templates (comma-separated).
	IstioTemplatesAnnotation = "inject.istio.io/templates"
	// IstioJWKSModeEnv is istiod's switch for who fetches JWKS.
	IstioJWKSModeEnv = "PILOT_JWT_ENABLE_REMOTE_JWKS"
)

// IstioRevision is one Istio control plane: its mesh configuration, its injector's values, its
// istiod Deployment and its extra JWKS root CAs, each with the error of its read.
type IstioRevision struct {
	Name string
	// Used says which namespaces or pods select this revision (empty: read because it is the
	// default control plane).
	Used []string

	Mesh    *IstioMesh
	MeshErr error

	Injector    *IstioInjector
	InjectorErr error

	Istiod    *Istiod
	IstiodErr error

	// JWKSExtraRootCA is true when istiod's pilot-jwks-extra-cacerts ConfigMap (Istio's
	// jwksResolverExtraRootCA) holds a CA.
	JWKSExtraRootCA    bool
	JWKSExtraRootCAErr error
}

// IstioInjector is what the checks read from the injector ConfigMap's values.
type IstioInjector struct {
	Source string
	// Hub, Tag and ProxyImage are values.global.hub, values.global.tag and
	// values.global.proxy.image: the proxy image is ProxyImage when it names a registry, else
	// Hub/ProxyImage:Tag.
	Hub, Tag, ProxyImage string
}

// Istiod is what the checks read from istiod's Deployment.
type Istiod struct {
	Source string
	// Image of its discovery container.
	Image string
	// Version is its app.kubernetes.io/version label (the chart's appVersion).
	Version string
	// JWKSMode is PILOT_JWT_ENABLE_REMOTE_JWKS ("" when unset); JWKSModeFrom names where it is
	// read from when it is not a literal.
	JWKSMode, JWKSModeFrom string
}

// AuthorizationPolicy is the part of an Istio AuthorizationPolicy the policy checks read.
type AuthorizationPolicy struct {
	Namespace, Name string
	// Action is ALLOW (the default), DENY, AUDIT or CUSTOM.
	Action string
	// Selector is spec.selector.matchLabels; nil selects every workload in its scope.
	Selector map[string]string
	// TargetRefs is true when the policy is attached to gateways, waypoints or services rather
	// than selecting sidecars.
	TargetRefs bool
	// Rules as written; an ALLOW policy without rules denies everything it selects.
	Rules []AuthzRule
}

// AuthzRule is one rule: its sources are alternatives, its conditions all apply.
type AuthzRule struct {
	From []AuthzSource
	When []AuthzCondition
}

// AuthzSource is one rules[].from[].source. Its fields all apply; the values of one field are
// alternatives.
type AuthzSource struct {
	Principals, NotPrincipals               []string
	Namespaces, NotNamespaces               []string
	ServiceAccounts, NotServiceAccounts     []string
	RequestPrincipals, NotRequestPrincipals []string
}

// AuthzCondition is one rules[].when.
type AuthzCondition struct {
	Key               string
	Values, NotValues []string
}

// DestinationRule is the TLS a DestinationRule gives its host: the default mode and per port.
type DestinationRule struct {
	Namespace, Name, Host string
	TLSMode               string
	PortTLSModes          map[int64]string
}

func collectIstio(ctx context.Context, c client.Client, o Options, s *Snapshot) {
	istioNS := o.IstioMeshConfig.Namespace
	s.IstioMesh, s.IstioMeshErr = collectIstioMesh(ctx, c, o.IstioMeshConfig)

	var mwcs admissionregistrationv1.MutatingWebhookConfigurationList
	if s.IstioTagsErr = c.List(ctx, &mwcs, client.HasLabels{IstioTagLabel}); s.IstioTagsErr == nil {
		s.IstioTags = map[string]string{}
		for _, m := range mwcs.Items {
			if rev := m.Labels[IstioRevLabel]; rev != "" {
				s.IstioTags[m.Labels[IstioTagLabel]] = rev
			}
		}
	}

	s.IstioRevisions = map[string]*IstioRevision{DefaultRevision: {Name: DefaultRevision}}
	for _, nd := range s.Namespaces {
		if nd.Namespace == nil {
			continue
		}
		if rev, via := namespaceRevision(nd.Namespace.Labels, s.IstioTags); rev != "" {
			s.revision(rev).Used = append(s.revision(rev).Used, "namespace "+nd.Name+" ("+via+")")
		}
		for i := range nd.Pods {
			p := &nd.Pods[i]
			if rev, via, ok := podRevision(p.Labels, s.IstioTags); ok {
				r := s.revision(rev)
				if len(r.Used) == 0 || r.Used[len(r.Used)-1] != "pods in "+nd.Name+" ("+via+")" {
					r.Used = append(r.Used, "pods in "+nd.Name+" ("+via+")")
				}
			}
		}
	}
	for _, r := range s.IstioRevisions {
		if r.Name == DefaultRevision {
			r.Mesh, r.MeshErr = s.IstioMesh, s.IstioMeshErr
		} else {
			r.Mesh, r.MeshErr = collectIstioMesh(ctx, c, nsName(istioNS, revisionName("istio", r.Name)))
		}
		r.Injector, r.InjectorErr = collectInjector(ctx, c, nsName(istioNS, revisionName("istio-sidecar-injector", r.Name)))
		r.Istiod, r.IstiodErr = collectIstiod(ctx, c, nsName(istioNS, revisionName("istiod", r.Name)))
		cm := &corev1.ConfigMap{}
		if err := c.Get(ctx, nsName(istioNS, revisionName("pilot-jwks-extra-cacerts", r.Name)), cm); err == nil {
			r.JWKSExtraRootCA = cm.Data["extra.pem"] != ""
		} else if !apierrors.IsNotFound(err) {
			r.JWKSExtraRootCAErr = err
		}
	}

	items, err := listIstio(ctx, c, destinationRuleGVK, nil)
	s.DestinationRulesErr = err
	for _, item := range items {
		s.DestinationRules = append(s.DestinationRules, parseDestinationRule(item.Object))
	}
}

// revision returns the snapshot's entry for revision name, creating it.
func (s *Snapshot) revision(name string) *IstioRevision {
	if r, ok := s.IstioRevisions[name]; ok {
		return r
	}
	r := &IstioRevision{Name: name}
	s.IstioRevisions[name] = r
	return r
}

// revisionName is the name Istio's charts give object base of revision rev.
func revisionName(base, rev string) string {
	if rev == "" || rev == DefaultRevision {
		return base
	}
	return base + "-" + rev
}

func collectInjector(ctx context.Context, c client.Client, key types.NamespacedName) (*IstioInjector, error) {
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, key, cm); err != nil {
		return nil, err
	}
	src := "ConfigMap " + key.String()
	raw, ok := cm.Data["values"]
	if !ok {
		return nil, fmt.Errorf("%s has no key \"values\"", src)
	}
	var values struct {
		Global struct {
			Hub   string `json:"hub"`
			Tag   any    `json:"tag"`
			Proxy struct {
				Image string `json:"image"`
			} `json:"proxy"`
		} `json:"global"`
	}
	if err := json.Unmarshal([]byte(raw), &values); err != nil {
		return nil, fmt.Errorf("%s key values is not valid JSON: %v", src, err)
	}
	tag := ""
	if values.Global.Tag != nil {
		// Istio's values carry the tag as a string, but a hand-written one may be a number.
		tag = fmt.Sprint(values.Global.Tag)
	}
	return &IstioInjector{Source: src, Hub: values.Global.Hub, Tag: tag, ProxyImage: values.Global.Proxy.Image}, nil
}

func collectIstiod(ctx context.Context, c client.Client, key types.NamespacedName) (*Istiod, error) {
	d := &appsv1.Deployment{}
	if err := c.Get(ctx, key, d); err != nil {
		return nil, err
	}
	out := &Istiod{Source: "Deployment " + key.String(), Version: d.Labels["app.kubernetes.io/version"]}
	ctrs := d.Spec.Template.Spec.Containers
	i := slices.IndexFunc(ctrs, func(c corev1.Container) bool { return c.Name == "discovery" })
	if i < 0 && len(ctrs) > 0 {
		i = 0
	}
	if i >= 0 {
		out.Image = ctrs[i].Image
		for _, env := range ctrs[i].Env {
			if env.Name != IstioJWKSModeEnv {
				continue
			}
			out.JWKSMode = env.Value
			if env.ValueFrom != nil {
				out.JWKSModeFrom = describeValueFrom(env.ValueFrom)
			}
		}
	}
	return out, nil
}

func listAuthorizationPolicies(ctx context.Context, c client.Client, scope []string) ([]AuthorizationPolicy, error) {
	items, err := listIstio(ctx, c, authorizationPolicyGVK, scope)
	if err != nil {
		return nil, err
	}
	out := make([]AuthorizationPolicy, 0, len(items))
	for _, item := range items {
		out = append(out, parseAuthorizationPolicy(item.Object))
	}
	return out, nil
}

func parseAuthorizationPolicy(obj map[string]any) AuthorizationPolicy {
	u := unstructured.Unstructured{Object: obj}
	ap := AuthorizationPolicy{Namespace: u.GetNamespace(), Name: u.GetName(), Action: "ALLOW"}
	if a, _, _ := unstructured.NestedString(obj, "spec", "action"); a != "" {
		ap.Action = a
	}
	if sel, found, _ := unstructured.NestedStringMap(obj, "spec", "selector", "matchLabels"); found {
		ap.Selector = sel
	}
	_, ref, _ := unstructured.NestedMap(obj, "spec", "targetRef")
	refs, _, _ := unstructured.NestedSlice(obj, "spec", "targetRefs")
	ap.TargetRefs = ref || len(refs) > 0
	rules, _, _ := unstructured.NestedSlice(obj, "spec", "rules")
	for _, r := range rules {
		rule, _ := r.(map[string]any)
		var ar AuthzRule
		from, _, _ := unstructured.NestedSlice(rule, "from")
		for _, f := range from {
			fm, _ := f.(map[string]any)
			src, _, _ := unstructured.NestedMap(fm, "source")
			strs := func(k string) []string { v, _, _ := unstructured.NestedStringSlice(src, k); return v }
			ar.From = append(ar.From, AuthzSource{
				Principals: strs("principals"), NotPrincipals: strs("notPrincipals"),
				Namespaces: strs("namespaces"), NotNamespaces: strs("notNamespaces"),
				ServiceAccounts: strs("serviceAccounts"), NotServiceAccounts: strs("notServiceAccounts"),
				RequestPrincipals: strs("requestPrincipals"), NotRequestPrincipals: strs("notRequestPrincipals"),
			})
		}
		when, _, _ := unstructured.NestedSlice(rule, "when")
		for _, w := range when {
			wm, _ := w.(map[string]any)
			var cond AuthzCondition
			cond.Key, _, _ = unstructured.NestedString(wm, "key")
			cond.Values, _, _ = unstructured.NestedStringSlice(wm, "values")
			cond.NotValues, _, _ = unstructured.NestedStringSlice(wm, "notValues")
			ar.When = append(ar.When, cond)
		}
		ap.Rules = append(ap.Rules, ar)
	}
	return ap
}

func parseDestinationRule(obj map[string]any) DestinationRule {
	u := unstructured.Unstructured{Object: obj}
	dr := DestinationRule{Namespace: u.GetNamespace(), Name: u.GetName(), PortTLSModes: map[int64]string{}}
	dr.Host, _, _ = unstructured.NestedString(obj, "spec", "host")
	dr.TLSMode, _, _ = unstructured.NestedString(obj, "spec", "trafficPolicy", "tls", "mode")
	ports, _, _ := unstructured.NestedSlice(obj, "spec", "trafficPolicy", "portLevelSettings")
	for _, p := range ports {
		pm, _ := p.(map[string]any)
		n, _, _ := unstructured.NestedInt64(pm, "port", "number")
		if mode, _, _ := unstructured.NestedString(pm, "tls", "mode"); mode != "" {
			dr.PortTLSModes[n] = mode
		}
	}
	return dr
}
