// Package check is `spire-mesh-injector check`: it reads the live cluster (never writes) and tells
// an operator, before users do, why a namespace's workloads would have no SPIRE identity. The
// failures it looks for are the silent ones — pods created before the namespace opted in, a
// ClusterSPIFFEID that spire-controller-manager ignores, trust domains that disagree, a missing CSI
// driver, a competing registration, a socket file name istio-proxy does not look for, a webhook
// the API server cannot call — each of which ends as proxies stuck NotReady or workloads silently on
// Istio's own CA.
//
// Collect gathers what the checks need into a Snapshot with a few read-only calls; Evaluate turns
// a Snapshot into Findings with pure functions, so that each finding is table-tested without a
// cluster and the envtest suite only has to prove the reads.
package check

import (
	"context"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// Status is the outcome of one finding.
type Status string

const (
	// OK: nothing to do.
	OK Status = "OK"
	// Warn: works today, but something is off or could not be confirmed.
	Warn Status = "WARN"
	// Fail: workloads get, or will get, no SPIRE identity until it is fixed.
	Fail Status = "FAIL"
)

// rank orders statuses so that the worst one wins.
func (s Status) rank() int {
	switch s {
	case Fail:
		return 2
	case Warn:
		return 1
	}
	return 0
}

// ID names a check. IDs are stable: automation reads them from `-o json`, and docs/check.md has one
// section per ID.
type ID string

// The checks, in the order the report lists them.
const (
	CheckConfig               ID = "config"
	CheckWebhookConfiguration ID = "webhook-configuration"
	CheckWebhookEndpoints     ID = "webhook-endpoints"
	CheckWebhookFailurePolicy ID = "webhook-failure-policy"
	CheckCSIDriver            ID = "csi-driver"
	CheckTrustDomain          ID = "trust-domain"
	CheckSocketFile           ID = "socket-file"
	CheckClassName            ID = "class-name"
	CheckProxyVersion         ID = "proxy-version"
	CheckAgentSDS             ID = "spire-agent-sds"
	CheckPolicyPrincipals     ID = "policy-principals"
	CheckNamespaceSelector    ID = "namespace-selector"
	CheckSCMIgnore            ID = "scm-ignore"
	CheckRegistration         ID = "registration"
	CheckRegistrationClass    ID = "registration-class"
	CheckRegistrationStatus   ID = "registration-status"
	CheckOverlap              ID = "overlap"
	CheckPodsNotWired         ID = "pods-not-wired"
	CheckJWTAudience          ID = "jwt-audience"
	CheckIstioMode            ID = "istio-mode"
	CheckJWKSFetch            ID = "jwks-fetch"
	CheckPolicyAdmission      ID = "policy-admission"
	CheckIstioSPIRETemplate   ID = "istio-spire-template"
)

// The checks of `check pod`, which explains one pod.
const (
	CheckPodWiring   ID = "pod-wiring"
	CheckPodIdentity ID = "pod-identity"
	CheckPodEntries  ID = "pod-entries"
	CheckPodPolicies ID = "pod-policies"
)

// IDs lists every check of the cluster report, in report order.
var IDs = []ID{
	CheckConfig, CheckWebhookConfiguration, CheckWebhookEndpoints, CheckWebhookFailurePolicy,
	CheckCSIDriver, CheckTrustDomain, CheckSocketFile, CheckClassName,
	CheckProxyVersion, CheckAgentSDS, CheckPolicyPrincipals,
	CheckNamespaceSelector, CheckSCMIgnore, CheckRegistration, CheckRegistrationClass, CheckRegistrationStatus,
	CheckOverlap, CheckPodsNotWired, CheckJWTAudience,
	CheckIstioMode, CheckJWKSFetch, CheckPolicyAdmission, CheckIstioSPIRETemplate,
}

// PodIDs lists every check of `check pod`, in report order (it also reports config and, for a
// pod in ambient mode, istio-mode).
var PodIDs = []ID{CheckPodWiring, CheckPodIdentity, CheckPodEntries, CheckPodPolicies}

// RunbookBase is where the runbooks are published; each finding links to one of its sections.
const RunbookBase = "https://github.com/spire-mesh-injector/spire-mesh-injector/blob/main/docs/runbooks.md"

// runbooks maps each check to the anchor of its entry in docs/runbooks.md (a test keeps them in
// step with the headings there).
var runbooks = map[ID]string{
	CheckConfig:               "configuration-not-found",
	CheckWebhookConfiguration: "webhook-down-or-slow",
	CheckWebhookEndpoints:     "webhook-down-or-slow",
	CheckWebhookFailurePolicy: "failing-open-without-the-safety-net",
	CheckCSIDriver:            "csi-driver-missing",
	CheckTrustDomain:          "trust-domain-mismatch",
	CheckSocketFile:           "socket-name-mismatch",
	CheckClassName:            "classname-mismatch",
	CheckNamespaceSelector:    "namespace-not-selected-by-the-webhook",
	CheckRegistration:         "registrations-failing",
	CheckRegistrationClass:    "classname-mismatch",
	CheckRegistrationStatus:   "registration-status-shows-failures",
	CheckOverlap:              "overlapping-registrations",
	CheckPodsNotWired:         "pods-not-wired",
	CheckJWTAudience:          "jwt-audience-not-accepted",
	CheckProxyVersion:         "istio-too-old-for-the-socket-file",
	CheckAgentSDS:             "spire-agent-sds-names-and-federation",
	CheckPolicyPrincipals:     "policy-principal-no-workload-holds",
	CheckSCMIgnore:            "namespace-ignored-by-spire-controller-manager",
	CheckIstioMode:            "istio-mode-without-spire-identity",
	CheckJWKSFetch:            "jwks-fetch-failures",
	CheckPolicyAdmission:      "workloads-no-policy-admits",
	CheckIstioSPIRETemplate:   "istios-spire-template-still-in-use",
	CheckPodWiring:            "pods-not-wired",
	CheckPodIdentity:          "pod-without-an-identity",
	CheckPodEntries:           "registration-status-shows-failures",
	CheckPodPolicies:          "workloads-no-policy-admits",
}

// Runbook is the URL of the runbook entry for check id.
func Runbook(id ID) string { return RunbookBase + "#" + runbooks[id] }

// Finding is one line of the report.
type Finding struct {
	Status Status `json:"status"`
	Check  ID     `json:"check"`
	// Namespace is empty for findings about the cluster as a whole.
	Namespace string `json:"namespace,omitempty"`
	// Object is what the finding is about, as Kind/name.
	Object string `json:"object,omitempty"`
	// What happened, Why it matters (or what was compared), and how to Fix it.
	What    string `json:"what"`
	Why     string `json:"why,omitempty"`
	Fix     string `json:"fix,omitempty"`
	Runbook string `json:"runbook"`
}

// Report is the whole result.
type Report struct {
	// Config says which configuration the cluster was compared against.
	Config   string    `json:"config"`
	Findings []Finding `json:"findings"`
}

// Worst is the worst status in the report (OK for an empty one).
func (r *Report) Worst() Status {
	worst := OK
	for _, f := range r.Findings {
		if f.Status.rank() > worst.rank() {
			worst = f.Status
		}
	}
	return worst
}

// Count returns how many findings have status s.
func (r *Report) Count(s Status) int {
	n := 0
	for _, f := range r.Findings {
		if f.Status == s {
			n++
		}
	}
	return n
}

// Options says where to look. The zero value of each field means the documented default, which
// fits the kustomize deployment, ZTWIM and OpenShift Service Mesh.
type Options struct {
	// Config is the webhook's configuration, the reference every finding compares against.
	Config *config.Config
	// ConfigSource says where Config came from, for the report; ConfigFromDefaults marks the
	// built-in defaults, used when the webhook's own configuration could not be read.
	ConfigSource       string
	ConfigFromDefaults bool
	// Namespaces restricts the report to these namespaces (opted in or not); empty means every
	// opted-in namespace. Istio's policies are then read in these namespaces and Istio's root
	// namespace only, unless AllPolicies.
	Namespaces  []string
	AllPolicies bool
	// WebhookName is the MutatingWebhookConfiguration (default spire-mesh-injector).
	WebhookName string
	// SafetyNetBinding is the ValidatingAdmissionPolicyBinding of the validating-policy component
	// (default spire-mesh-injector-require-spiffe-csi).
	SafetyNetBinding string
	// IstioMeshConfig is Istio's mesh ConfigMap (default istio-system/istio).
	IstioMeshConfig types.NamespacedName
	// IstioRootNamespace holds mesh-wide RequestAuthentications (default istio-system).
	IstioRootNamespace string
	// SCMConfigMaps are where spire-controller-manager's configuration may be, tried in order
	// (default: spire-controller-manager in ZTWIM's namespace, then in spire-server and spire-system).
	SCMConfigMaps []types.NamespacedName
	// AgentConfigMaps are where the SPIRE agent's configuration may be, tried in order (default:
	// spire-agent in ZTWIM's namespace, then in spire-system and spire-server).
	AgentConfigMaps []types.NamespacedName
	// ZTWIMName is the ZeroTrustWorkloadIdentityManager object (default cluster, the only name
	// ZTWIM accepts).
	ZTWIMName string
	// OpenShift overrides detecting OpenShift (by its security API) when set.
	OpenShift *bool
}

// Defaults of Options.
const (
	DefaultWebhookName        = "spire-mesh-injector"
	DefaultSafetyNetBinding   = "spire-mesh-injector-require-spiffe-csi"
	DefaultIstioRootNamespace = "istio-system"
	DefaultZTWIMName          = "cluster"
)

// DefaultIstioMeshConfig is the ConfigMap istiod (and the Sail operator's default revision) reads
// its mesh configuration from.
var DefaultIstioMeshConfig = types.NamespacedName{Namespace: "istio-system", Name: "istio"}

// DefaultSCMConfigMaps are where ZTWIM and the upstream SPIRE Helm chart keep
// spire-controller-manager's configuration.
var DefaultSCMConfigMaps = []types.NamespacedName{
	{Namespace: "zero-trust-workload-identity-manager", Name: "spire-controller-manager"},
	{Namespace: "spire-server", Name: "spire-controller-manager"},
	{Namespace: "spire-system", Name: "spire-controller-manager"},
}

func (o Options) withDefaults() Options {
	if o.Config == nil {
		o.Config = config.Default()
		o.ConfigSource, o.ConfigFromDefaults = "built-in defaults", true
	}
	if o.WebhookName == "" {
		o.WebhookName = DefaultWebhookName
	}
	if o.SafetyNetBinding == "" {
		o.SafetyNetBinding = DefaultSafetyNetBinding
	}
	if o.IstioMeshConfig.Name == "" {
		o.IstioMeshConfig = DefaultIstioMeshConfig
	}
	if o.IstioRootNamespace == "" {
		o.IstioRootNamespace = DefaultIstioRootNamespace
	}
	if len(o.SCMConfigMaps) == 0 {
		o.SCMConfigMaps = slices.Clone(DefaultSCMConfigMaps)
	}
	if len(o.AgentConfigMaps) == 0 {
		o.AgentConfigMaps = slices.Clone(DefaultAgentConfigMaps)
	}
	if o.ZTWIMName == "" {
		o.ZTWIMName = DefaultZTWIMName
	}
	return o
}

// Run collects a snapshot through c (read-only) and evaluates it. An error means the report could
// not be made at all (the cluster is unreachable, or namespaces cannot be listed); anything less
// becomes a finding.
func Run(ctx context.Context, c client.Client, o Options) (*Report, error) {
	o = o.withDefaults()
	snap, err := Collect(ctx, c, o)
	if err != nil {
		return nil, err
	}
	return Evaluate(o, snap), nil
}

// newEvaluator evaluates snapshot s against o. The default Istio revision always reads the mesh
// configuration of Options.IstioMeshConfig (Snapshot.IstioMesh); a snapshot built by hand without
// revisions gets that one, its injector and istiod not found.
func newEvaluator(o Options, s *Snapshot) *evaluator {
	if s.IstioRevisions[DefaultRevision] == nil {
		c := *s
		c.IstioRevisions = map[string]*IstioRevision{}
		for k, v := range s.IstioRevisions {
			c.IstioRevisions[k] = v
		}
		absent := apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, "istio-sidecar-injector")
		c.IstioRevisions[DefaultRevision] = &IstioRevision{Name: DefaultRevision, Mesh: s.IstioMesh, MeshErr: s.IstioMeshErr,
			InjectorErr: absent, IstiodErr: apierrors.NewNotFound(schema.GroupResource{Group: "apps", Resource: "deployments"}, "istiod")}
		s = &c
	}
	return &evaluator{o: o, cfg: o.Config, s: s}
}

// Evaluate turns a snapshot into the report: the cluster's findings first, then each namespace's,
// namespaces in name order.
func Evaluate(o Options, s *Snapshot) *Report {
	o = o.withDefaults()
	e := newEvaluator(o, s)
	r := &Report{Config: o.ConfigSource}
	r.Findings = append(r.Findings, e.config()...)
	r.Findings = append(r.Findings, e.webhookConfiguration()...)
	r.Findings = append(r.Findings, e.webhookEndpoints()...)
	r.Findings = append(r.Findings, e.webhookFailurePolicy()...)
	r.Findings = append(r.Findings, e.csiDriver()...)
	r.Findings = append(r.Findings, e.trustDomain()...)
	r.Findings = append(r.Findings, e.socketFile()...)
	r.Findings = append(r.Findings, e.className()...)
	r.Findings = append(r.Findings, e.proxyVersion()...)
	r.Findings = append(r.Findings, e.agentSDS()...)
	r.Findings = append(r.Findings, e.policyPrincipals()...)
	nss := slices.Clone(s.Namespaces)
	slices.SortFunc(nss, func(a, b NamespaceData) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	for i := range nss {
		r.Findings = append(r.Findings, e.namespace(&nss[i])...)
	}
	for i := range r.Findings {
		r.Findings[i].Runbook = Runbook(r.Findings[i].Check)
	}
	return r
}
