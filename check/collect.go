package check

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
)

// Kinds read without Go types: ZTWIM's API module is not served by the Go module proxy, and
// Istio's client module pins a controller-runtime this module cannot use alongside
// spire-controller-manager's API; both objects are read for a few fields only.
var (
	ztwimGVK                 = schema.GroupVersionKind{Group: "operator.openshift.io", Version: "v1alpha1", Kind: "ZeroTrustWorkloadIdentityManager"}
	requestAuthenticationGVK = schema.GroupVersionKind{Group: "security.istio.io", Version: "v1", Kind: "RequestAuthenticationList"}
	authorizationPolicyGVK   = schema.GroupVersionKind{Group: "security.istio.io", Version: "v1", Kind: "AuthorizationPolicyList"}
	destinationRuleGVK       = schema.GroupVersionKind{Group: "networking.istio.io", Version: "v1", Kind: "DestinationRuleList"}
	// sccGroupKind exists only on OpenShift; its presence is how OpenShift is recognised.
	sccGroupKind = schema.GroupKind{Group: "security.openshift.io", Kind: "SecurityContextConstraints"}
)

// Snapshot is everything the checks read from the cluster. Each optional read keeps its error next
// to its result, so that the checks can tell "not there" (NotFound), "not installed" (no such
// kind), "not allowed to look" (Forbidden) and "unreadable" apart.
type Snapshot struct {
	// OpenShift is true when the cluster serves OpenShift's security API.
	OpenShift bool

	Webhook    *admissionregistrationv1.MutatingWebhookConfiguration
	WebhookErr error
	// Services are the webhook's Services (clientConfig.service), with their EndpointSlices.
	Services map[types.NamespacedName]*ServiceData

	// SafetyNet is true when the validating-policy component's binding exists.
	SafetyNet    bool
	SafetyNetErr error

	CSIDriver    *storagev1.CSIDriver
	CSIDriverErr error

	IstioMesh    *IstioMesh
	IstioMeshErr error

	SCM    *SCMConfig
	SCMErr error

	ZTWIM    *ZTWIM
	ZTWIMErr error

	Registrations    []spirev1alpha1.ClusterSPIFFEID
	RegistrationsErr error

	Namespaces []NamespaceData

	// AllNamespaces are every namespace in the cluster, and ServiceAccounts the service accounts
	// of each (by namespace): the identities registrations can issue are rendered over them.
	AllNamespaces      []corev1.Namespace
	AllNamespacesErr   error
	ServiceAccounts    map[string][]string
	ServiceAccountsErr error

	// AuthorizationPolicies and RequestAuthentications are Istio's, in every namespace the policy
	// audit reads (the whole cluster, or the namespaces named with -n and Istio's root namespace).
	AuthorizationPolicies     []AuthorizationPolicy
	AuthorizationPoliciesErr  error
	RequestAuthentications    []RequestAuthentication
	RequestAuthenticationsErr error
	// DestinationRules are read for the one thing the JWKS check needs: whether Envoy originates
	// TLS to a jwksUri host.
	DestinationRules    []DestinationRule
	DestinationRulesErr error

	// IstioTags maps an Istio revision tag to its revision, from the istio-revision-tag-*
	// MutatingWebhookConfigurations.
	IstioTags    map[string]string
	IstioTagsErr error
	// IstioRevisions are the control planes that matter: the default one, and each revision the
	// checked namespaces and their pods name (after resolving tags). Keyed by revision name,
	// DefaultRevision for the unsuffixed objects.
	IstioRevisions map[string]*IstioRevision

	// Agent is the SPIRE agent's configuration (its sds names).
	Agent    *AgentConfig
	AgentErr error
}

// ServiceData is a Service and its EndpointSlices.
type ServiceData struct {
	Service   *corev1.Service
	Err       error
	Slices    []discoveryv1.EndpointSlice
	SlicesErr error
}

// IstioMesh is what the checks read from Istio's mesh configuration.
type IstioMesh struct {
	// Source names the ConfigMap.
	Source string
	// TrustDomain as configured; empty means Istio's default, cluster.local.
	TrustDomain string
	// SocketFile is defaultConfig.proxyMetadata.WORKLOAD_IDENTITY_SOCKET_FILE; empty means unset.
	SocketFile string
	// TrustDomainAliases are meshConfig.trustDomainAliases: Istio treats principals in these
	// trust domains (and in cluster.local) as the mesh's own.
	TrustDomainAliases []string
}

// SCMConfig is what the checks read from spire-controller-manager's configuration.
type SCMConfig struct {
	// Source names the ConfigMap and key.
	Source         string
	ClassName      string
	WatchClassless bool
	TrustDomain    string
	ClusterName    string
	// IgnoreNamespaces are spire-controller-manager's ignoreNamespaces: unanchored regular
	// expressions. When the file does not set them, its built-in list applies
	// (IgnoreNamespacesDefaulted).
	IgnoreNamespaces          []string
	IgnoreNamespacesDefaulted bool
}

// SCMDefaultIgnoreNamespaces is what spire-controller-manager ignores when its configuration file
// does not say (cmd/main.go: the file is decoded over these defaults).
var SCMDefaultIgnoreNamespaces = []string{"kube-system", "kube-public", "spire-system"}

// ZTWIMIgnoreNamespaces is what ZTWIM writes into its spire-controller-manager's configuration.
// "openshift-*" is a regular expression, not a glob: it matches every name containing "openshift".
var ZTWIMIgnoreNamespaces = []string{"kube-system", "kube-public", "local-path-storage", "openshift-*"}

// ZTWIM is what the checks read from the ZeroTrustWorkloadIdentityManager object.
type ZTWIM struct {
	Name        string
	TrustDomain string
	ClusterName string
}

// NamespaceData is one namespace under check.
type NamespaceData struct {
	Name string
	// Namespace is nil when it does not exist (asked for with -n).
	Namespace *corev1.Namespace
	// Requested is true when the namespace was named on the command line rather than found by
	// its opt-in label.
	Requested bool
	Pods      []corev1.Pod
	PodsErr   error
	// RequestAuthentications in the namespace and in Istio's root namespace (mesh-wide).
	RequestAuthentications []RequestAuthentication
	RequestAuthErr         error
}

// RequestAuthentication is the part of an Istio RequestAuthentication the checks need.
type RequestAuthentication struct {
	Namespace, Name string
	Rules           []JWTRule
}

// JWTRule is one jwtRule of a RequestAuthentication.
type JWTRule struct {
	Issuer string
	// Audiences accepted; empty accepts any audience (Envoy then does not check aud).
	Audiences []string
	// JwksURI is where the keys are fetched; empty with InlineJWKS false means the issuer's
	// OpenID discovery document says where.
	JwksURI    string
	InlineJWKS bool
}

// errNotInstalled marks a kind the cluster does not serve.
var errNotInstalled = errors.New("not installed")

// Collect reads the snapshot. Only listing the opted-in namespaces is fatal; every other read
// records its error for the checks to report.
func Collect(ctx context.Context, c client.Client, o Options) (*Snapshot, error) {
	o = o.withDefaults()
	s := &Snapshot{Services: map[types.NamespacedName]*ServiceData{}}
	if o.OpenShift != nil {
		s.OpenShift = *o.OpenShift
	} else {
		_, err := c.RESTMapper().RESTMapping(sccGroupKind)
		s.OpenShift = err == nil
	}

	if err := collectNamespaces(ctx, c, o, s); err != nil {
		return nil, err
	}

	s.Webhook = &admissionregistrationv1.MutatingWebhookConfiguration{}
	if s.WebhookErr = c.Get(ctx, types.NamespacedName{Name: o.WebhookName}, s.Webhook); s.WebhookErr != nil {
		s.Webhook = nil
	} else {
		for _, w := range s.Webhook.Webhooks {
			if w.ClientConfig.Service == nil {
				continue
			}
			key := types.NamespacedName{Namespace: w.ClientConfig.Service.Namespace, Name: w.ClientConfig.Service.Name}
			if _, ok := s.Services[key]; !ok {
				s.Services[key] = collectService(ctx, c, key)
			}
		}
	}

	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
	s.SafetyNetErr = c.Get(ctx, types.NamespacedName{Name: o.SafetyNetBinding}, binding)
	s.SafetyNet = s.SafetyNetErr == nil

	s.CSIDriver = &storagev1.CSIDriver{}
	if s.CSIDriverErr = c.Get(ctx, types.NamespacedName{Name: o.Config.CSIDriver}, s.CSIDriver); s.CSIDriverErr != nil {
		s.CSIDriver = nil
	}

	s.SCM, s.SCMErr = collectSCM(ctx, c, o.SCMConfigMaps)
	s.ZTWIM, s.ZTWIMErr = collectZTWIM(ctx, c, o.ZTWIMName)

	var list spirev1alpha1.ClusterSPIFFEIDList
	if err := c.List(ctx, &list); err != nil {
		s.RegistrationsErr = notInstalled(err)
	} else {
		s.Registrations = list.Items
	}

	var all corev1.NamespaceList
	if s.AllNamespacesErr = c.List(ctx, &all); s.AllNamespacesErr == nil {
		s.AllNamespaces = all.Items
	}
	var sas corev1.ServiceAccountList
	if s.ServiceAccountsErr = c.List(ctx, &sas); s.ServiceAccountsErr == nil {
		s.ServiceAccounts = map[string][]string{}
		for _, sa := range sas.Items {
			s.ServiceAccounts[sa.Namespace] = append(s.ServiceAccounts[sa.Namespace], sa.Name)
		}
	}

	collectIstio(ctx, c, o, s)
	s.Agent, s.AgentErr = collectAgent(ctx, c, o.AgentConfigMaps)
	return s, nil
}

func collectNamespaces(ctx context.Context, c client.Client, o Options, s *Snapshot) error {
	if len(o.Namespaces) == 0 {
		var list corev1.NamespaceList
		if err := c.List(ctx, &list, client.MatchingLabels{annotations.InjectionLabel: annotations.InjectionEnabled}); err != nil {
			return fmt.Errorf("listing opted-in namespaces: %w", err)
		}
		for i := range list.Items {
			s.Namespaces = append(s.Namespaces, NamespaceData{Name: list.Items[i].Name, Namespace: &list.Items[i]})
		}
	} else {
		for _, name := range o.Namespaces {
			ns := &corev1.Namespace{}
			err := c.Get(ctx, types.NamespacedName{Name: name}, ns)
			switch {
			case apierrors.IsNotFound(err):
				ns = nil
			case err != nil:
				return fmt.Errorf("reading namespace %s: %w", name, err)
			}
			s.Namespaces = append(s.Namespaces, NamespaceData{Name: name, Namespace: ns, Requested: true})
		}
	}
	for i := range s.Namespaces {
		nd := &s.Namespaces[i]
		if nd.Namespace == nil {
			continue
		}
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(nd.Name)); err != nil {
			nd.PodsErr = err
		} else {
			nd.Pods = pods.Items
		}
	}
	// Istio's policies: every namespace's, or, when namespaces were named, theirs and the root
	// namespace's (mesh-wide policies live there).
	var scope []string
	if len(o.Namespaces) > 0 && !o.AllPolicies {
		scope = append(slices.Clone(o.Namespaces), o.IstioRootNamespace)
		slices.Sort(scope)
		scope = slices.Compact(scope)
	}
	s.RequestAuthentications, s.RequestAuthenticationsErr = listRequestAuthentications(ctx, c, scope)
	s.AuthorizationPolicies, s.AuthorizationPoliciesErr = listAuthorizationPolicies(ctx, c, scope)
	for i := range s.Namespaces {
		nd := &s.Namespaces[i]
		if nd.Namespace == nil {
			continue
		}
		nd.RequestAuthErr = s.RequestAuthenticationsErr
		for _, ra := range s.RequestAuthentications {
			if ra.Namespace == nd.Name || ra.Namespace == o.IstioRootNamespace {
				nd.RequestAuthentications = append(nd.RequestAuthentications, ra)
			}
		}
	}
	return nil
}

func collectService(ctx context.Context, c client.Client, key types.NamespacedName) *ServiceData {
	d := &ServiceData{Service: &corev1.Service{}}
	if d.Err = c.Get(ctx, key, d.Service); d.Err != nil {
		d.Service = nil
		return d
	}
	var slices discoveryv1.EndpointSliceList
	if d.SlicesErr = c.List(ctx, &slices, client.InNamespace(key.Namespace), client.MatchingLabels{discoveryv1.LabelServiceName: key.Name}); d.SlicesErr == nil {
		d.Slices = slices.Items
	}
	return d
}

func collectIstioMesh(ctx context.Context, c client.Client, key types.NamespacedName) (*IstioMesh, error) {
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, key, cm); err != nil {
		return nil, err
	}
	src := "ConfigMap " + key.String()
	raw, ok := cm.Data["mesh"]
	if !ok {
		return nil, fmt.Errorf("%s has no key \"mesh\"", src)
	}
	var mesh struct {
		TrustDomain        string   `json:"trustDomain"`
		TrustDomainAliases []string `json:"trustDomainAliases"`
		DefaultConfig      struct {
			ProxyMetadata map[string]string `json:"proxyMetadata"`
		} `json:"defaultConfig"`
	}
	// Not strict: the mesh config has many fields this check does not read.
	if err := yaml.Unmarshal([]byte(raw), &mesh); err != nil {
		return nil, fmt.Errorf("%s key mesh is not valid YAML: %v", src, err)
	}
	return &IstioMesh{Source: src, TrustDomain: mesh.TrustDomain, TrustDomainAliases: mesh.TrustDomainAliases,
		SocketFile: mesh.DefaultConfig.ProxyMetadata["WORKLOAD_IDENTITY_SOCKET_FILE"]}, nil
}

// firstConfigMap reads the ConfigMaps at keys in order and returns what parse makes of the first
// one it accepts. parse returns (nil, nil) to pass a ConfigMap over (its reason in skip) and an
// error to stop. The error, when none is accepted, is the most telling one: Forbidden or unreadable
// over a ConfigMap passed over over NotFound (naming every key tried).
func firstConfigMap[T any](ctx context.Context, c client.Client, keys []types.NamespacedName, parse func(key types.NamespacedName, cm *corev1.ConfigMap) (v *T, skip string, err error)) (*T, error) {
	var firstErr error
	var tried []string
	for _, key := range keys {
		tried = append(tried, key.String())
		cm := &corev1.ConfigMap{}
		err := c.Get(ctx, key, cm)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		v, skip, err := parse(key, cm)
		if err != nil {
			return nil, err
		}
		if v != nil {
			return v, nil
		}
		if firstErr == nil {
			firstErr = fmt.Errorf("ConfigMap %s %s", key, skip)
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, strings.Join(tried, ", "))
}

// collectSCM returns the first spire-controller-manager configuration found (firstConfigMap).
func collectSCM(ctx context.Context, c client.Client, keys []types.NamespacedName) (*SCMConfig, error) {
	return firstConfigMap(ctx, c, keys, func(key types.NamespacedName, cm *corev1.ConfigMap) (*SCMConfig, string, error) {
		dataKeys := make([]string, 0, len(cm.Data))
		for k := range cm.Data {
			dataKeys = append(dataKeys, k)
		}
		slices.Sort(dataKeys)
		for _, k := range dataKeys {
			var doc struct {
				Kind             string    `json:"kind"`
				ClassName        string    `json:"className"`
				WatchClassless   bool      `json:"watchClassless"`
				TrustDomain      string    `json:"trustDomain"`
				ClusterName      string    `json:"clusterName"`
				IgnoreNamespaces *[]string `json:"ignoreNamespaces"`
			}
			if yaml.Unmarshal([]byte(cm.Data[k]), &doc) != nil || doc.Kind != "ControllerManagerConfig" {
				continue
			}
			scm := &SCMConfig{Source: fmt.Sprintf("ConfigMap %s key %s", key, k), ClassName: doc.ClassName,
				WatchClassless: doc.WatchClassless, TrustDomain: doc.TrustDomain, ClusterName: doc.ClusterName}
			if doc.IgnoreNamespaces != nil {
				scm.IgnoreNamespaces = *doc.IgnoreNamespaces
			} else {
				scm.IgnoreNamespaces, scm.IgnoreNamespacesDefaulted = slices.Clone(SCMDefaultIgnoreNamespaces), true
			}
			return scm, "", nil
		}
		return nil, "holds no ControllerManagerConfig", nil
	})
}

func collectZTWIM(ctx context.Context, c client.Client, name string) (*ZTWIM, error) {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(ztwimGVK)
	if err := c.Get(ctx, types.NamespacedName{Name: name}, u); err != nil {
		return nil, notInstalled(err)
	}
	td, _, _ := unstructured.NestedString(u.Object, "spec", "trustDomain")
	cn, _, _ := unstructured.NestedString(u.Object, "spec", "clusterName")
	return &ZTWIM{Name: name, TrustDomain: td, ClusterName: cn}, nil
}

// listIstio lists one of Istio's kinds in each namespace of scope, or in every namespace when
// scope is empty.
func listIstio(ctx context.Context, c client.Client, gvk schema.GroupVersionKind, scope []string) ([]unstructured.Unstructured, error) {
	if len(scope) == 0 {
		scope = []string{""}
	}
	var out []unstructured.Unstructured
	for _, ns := range scope {
		list := &unstructured.UnstructuredList{}
		list.SetGroupVersionKind(gvk)
		var opts []client.ListOption
		if ns != "" {
			opts = append(opts, client.InNamespace(ns))
		}
		if err := c.List(ctx, list, opts...); err != nil {
			return nil, notInstalled(err)
		}
		out = append(out, list.Items...)
	}
	return out, nil
}

func listRequestAuthentications(ctx context.Context, c client.Client, scope []string) ([]RequestAuthentication, error) {
	items, err := listIstio(ctx, c, requestAuthenticationGVK, scope)
	if err != nil {
		return nil, err
	}
	out := make([]RequestAuthentication, 0, len(items))
	for _, item := range items {
		out = append(out, parseRequestAuthentication(item.Object))
	}
	return out, nil
}

func parseRequestAuthentication(obj map[string]any) RequestAuthentication {
	u := unstructured.Unstructured{Object: obj}
	ra := RequestAuthentication{Namespace: u.GetNamespace(), Name: u.GetName()}
	rules, _, _ := unstructured.NestedSlice(obj, "spec", "jwtRules")
	for _, r := range rules {
		rule, _ := r.(map[string]any)
		var jr JWTRule
		jr.Issuer, _, _ = unstructured.NestedString(rule, "issuer")
		jr.Audiences, _, _ = unstructured.NestedStringSlice(rule, "audiences")
		jr.JwksURI, _, _ = unstructured.NestedString(rule, "jwksUri")
		jwks, _, _ := unstructured.NestedString(rule, "jwks")
		jr.InlineJWKS = jwks != ""
		ra.Rules = append(ra.Rules, jr)
	}
	return ra
}

// notInstalled turns "no such kind" (the CRD is not installed) into errNotInstalled, so that the
// checks do not mistake an absent product for a fault.
func notInstalled(err error) error {
	if meta.IsNoMatchError(err) {
		return fmt.Errorf("%w: %v", errNotInstalled, err)
	}
	return err
}
