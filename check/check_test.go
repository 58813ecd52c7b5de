package check

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/markdown"
)

const testNS = "shop"

func testConfig(t *testing.T, extra string) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte("trustDomain: example.org\nclusterName: c1\n" + extra))
	require.NoError(t, err)
	return c
}

// wiredPod is a pod as the webhook leaves it: the injected label and the status annotation.
func wiredPod(name string, mode annotations.Mode, owner *metav1.OwnerReference, audiences ...string) corev1.Pod {
	p := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNS,
			Labels:      map[string]string{annotations.InjectedLabel: string(mode), "app": name},
			Annotations: map[string]string{annotations.StatusAnnotation: annotations.Status{Mode: mode, Audiences: audiences}.Encode()}},
		Spec: corev1.PodSpec{ServiceAccountName: "default", NodeName: "node-1", Containers: []corev1.Container{{Name: "app"}},
			Volumes: []corev1.Volume{{Name: "spiffe-workload-api", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: config.DefaultCSIDriver, ReadOnly: ref(true)}}}}},
	}
	if owner != nil {
		p.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	if mode == annotations.ModeMesh {
		p.Spec.InitContainers = []corev1.Container{{Name: "istio-proxy", RestartPolicy: ref(corev1.ContainerRestartPolicyAlways),
			Env: []corev1.EnvVar{{Name: "WORKLOAD_IDENTITY_SOCKET_FILE", Value: "spire-agent.sock"}}}}
	}
	return p
}

func rsOwner(deployment, hash string) *metav1.OwnerReference {
	return &metav1.OwnerReference{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: deployment + "-" + hash, Controller: ref(true)}
}

// healthy is a cluster where every check passes: the reference each case below breaks once.
func healthy(t *testing.T) (Options, *Snapshot) {
	t.Helper()
	cfg := testConfig(t, "")
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS, Labels: map[string]string{
		annotations.InjectionLabel: annotations.InjectionEnabled, corev1.LabelMetadataName: testNS, IstioInjectionLabel: "enabled"}}}
	reg, err := registration.Build(cfg, testNS, nsObj)
	require.NoError(t, err)
	reg.Status.Stats = spirev1alpha1.ClusterSPIFFEIDStats{NamespacesSelected: 1, PodsSelected: 2, EntriesToSet: 2}
	mesh := wiredPod("reviews-7d9f-abcde", annotations.ModeMesh, rsOwner("reviews", "7d9f"), "orders")
	mesh.Labels["pod-template-hash"] = "7d9f"
	plain := wiredPod("ratings-0", annotations.ModeWorkload, &metav1.OwnerReference{Kind: "StatefulSet", Name: "ratings", Controller: ref(true)})
	svc := nsName("spire-mesh-injector", "spire-mesh-injector")
	meshCfg := &IstioMesh{Source: "ConfigMap istio-system/istio", TrustDomain: "example.org"}
	ra := RequestAuthentication{Namespace: testNS, Name: "orders", Rules: []JWTRule{{
		Issuer: "https://oidc-discovery.example.org", Audiences: []string{"orders"},
		JwksURI: "https://spire-spiffe-oidc-discovery-provider.zero-trust-workload-identity-manager.svc.cluster.local/keys",
	}}}
	s := &Snapshot{
		Webhook: &admissionregistrationv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: DefaultWebhookName},
			Webhooks: []admissionregistrationv1.MutatingWebhook{{
				Name: "pods.spire-mesh-injector.io",
				ClientConfig: admissionregistrationv1.WebhookClientConfig{
					Service:  &admissionregistrationv1.ServiceReference{Namespace: svc.Namespace, Name: svc.Name},
					CABundle: []byte("-----BEGIN CERTIFICATE-----"),
				},
				FailurePolicy: ref(admissionregistrationv1.Ignore),
				NamespaceSelector: &metav1.LabelSelector{
					MatchLabels:      map[string]string{annotations.InjectionLabel: annotations.InjectionEnabled},
					MatchExpressions: []metav1.LabelSelectorRequirement{{Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"kube-system", "spire-mesh-injector"}}},
				},
			}},
		},
		Services: map[types.NamespacedName]*ServiceData{svc: {
			Service: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: svc.Name, Namespace: svc.Namespace}},
			Slices: []discoveryv1.EndpointSlice{{Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ref(true)}},
				{Addresses: []string{"10.0.0.2"}},
			}}},
		}},
		SafetyNet: true,
		CSIDriver: &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: cfg.CSIDriver, Labels: map[string]string{CSIProfileLabel: "restricted"}},
			Spec: storagev1.CSIDriverSpec{VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecycleEphemeral}}},
		OpenShift: true,
		IstioMesh: meshCfg,
		SCM: &SCMConfig{Source: "ConfigMap zero-trust-workload-identity-manager/spire-controller-manager key config.yaml", ClassName: config.DefaultClassName, TrustDomain: "example.org",
			IgnoreNamespaces: ZTWIMIgnoreNamespaces},
		ZTWIM:         &ZTWIM{Name: "cluster", TrustDomain: "example.org", ClusterName: "c1"},
		Registrations: []spirev1alpha1.ClusterSPIFFEID{*reg},
		Namespaces: []NamespaceData{{
			Name: testNS, Namespace: nsObj,
			Pods:                   []corev1.Pod{mesh, plain},
			RequestAuthentications: []RequestAuthentication{ra},
		}},
		AllNamespaces: []corev1.Namespace{*nsObj,
			{ObjectMeta: metav1.ObjectMeta{Name: "payments"}},
			{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}},
			{ObjectMeta: metav1.ObjectMeta{Name: "zero-trust-workload-identity-manager"}}},
		ServiceAccounts: map[string][]string{testNS: {"default", "reviews"}, "payments": {"default"}, "istio-system": {"istiod"}},
		AuthorizationPolicies: []AuthorizationPolicy{{
			Namespace: testNS, Name: "reviews", Action: "ALLOW", Selector: map[string]string{"app": mesh.Name},
			Rules: []AuthzRule{
				{From: []AuthzSource{{Principals: []string{"example.org/ns/shop/sa/default"}}}},
				{From: []AuthzSource{{RequestPrincipals: []string{"https://oidc-discovery.example.org/*"}}},
					When: []AuthzCondition{{Key: "request.auth.claims[sub]", Values: []string{"spiffe://example.org/ns/shop/sa/reviews"}}}},
			},
		}},
		RequestAuthentications: []RequestAuthentication{ra},
		IstioRevisions: map[string]*IstioRevision{DefaultRevision: {
			Name: DefaultRevision, Used: []string{"namespace shop (label istio-injection=enabled)"}, Mesh: meshCfg,
			Injector:        &IstioInjector{Source: "ConfigMap istio-system/istio-sidecar-injector", Hub: "docker.io/istio", Tag: "1.26.2", ProxyImage: "proxyv2"},
			Istiod:          &Istiod{Source: "Deployment istio-system/istiod", Image: "docker.io/istio/pilot:1.26.2", JWKSMode: "false"},
			JWKSExtraRootCA: true,
		}},
		Agent: &AgentConfig{Source: "ConfigMap zero-trust-workload-identity-manager/spire-agent key agent.conf", Object: "ConfigMap/zero-trust-workload-identity-manager/spire-agent"},
	}
	return Options{Config: cfg, ConfigSource: "file config.yaml"}, s
}

func notFound(name string) error {
	return apierrors.NewNotFound(schema.GroupResource{Resource: "things"}, name)
}

func forbidden(name string) error {
	return apierrors.NewForbidden(schema.GroupResource{Resource: "things"}, name, errors.New("RBAC"))
}

func findings(r *Report, id ID) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Check == id {
			out = append(out, f)
		}
	}
	return out
}

func TestHealthyClusterIsAllOK(t *testing.T) {
	o, s := healthy(t)
	r := Evaluate(o, s)
	seen := map[ID]bool{}
	for _, f := range r.Findings {
		assert.Equal(t, OK, f.Status, "%+v", f)
		seen[f.Check] = true
		assert.Equal(t, Runbook(f.Check), f.Runbook)
	}
	for _, id := range IDs {
		assert.True(t, seen[id], "the healthy cluster reports nothing for %s", id)
	}
	assert.Equal(t, OK, r.Worst())
}

func TestFindings(t *testing.T) {
	tests := []struct {
		name string
		seed func(o *Options, s *Snapshot)
		id   ID
		want Status
		// contains is a fragment of the what, why or fix of a finding of that status.
		contains string
	}{
		{"config from defaults", func(o *Options, s *Snapshot) {
			o.ConfigFromDefaults, o.ConfigSource = true, "reading Deployment spire-mesh-injector/spire-mesh-injector: forbidden"
		}, CheckConfig, Warn, "forbidden"},

		{"webhook configuration missing", func(o *Options, s *Snapshot) { s.Webhook, s.WebhookErr = nil, notFound("spire-mesh-injector") },
			CheckWebhookConfiguration, Fail, "not found"},
		{"webhook configuration unreadable", func(o *Options, s *Snapshot) { s.Webhook, s.WebhookErr = nil, forbidden("spire-mesh-injector") },
			CheckWebhookConfiguration, Warn, "kustomize/check"},
		{"no caBundle", func(o *Options, s *Snapshot) { s.Webhook.Webhooks[0].ClientConfig.CABundle = nil },
			CheckWebhookConfiguration, Fail, "has no caBundle"},
		{"namespaceSelector ignores the opt-in label", func(o *Options, s *Snapshot) {
			s.Webhook.Webhooks[0].NamespaceSelector.MatchLabels = map[string]string{"injection": "on"}
		}, CheckWebhookConfiguration, Fail, "does not select namespaces labelled spire-injection=enabled"},

		{"webhook Service missing", func(o *Options, s *Snapshot) {
			s.Services[nsName("spire-mesh-injector", "spire-mesh-injector")] = &ServiceData{Err: notFound("spire-mesh-injector")}
		}, CheckWebhookEndpoints, Fail, "Service/spire-mesh-injector/spire-mesh-injector not found"},
		{"no ready endpoints", func(o *Options, s *Snapshot) {
			d := s.Services[nsName("spire-mesh-injector", "spire-mesh-injector")]
			for i := range d.Slices[0].Endpoints {
				d.Slices[0].Endpoints[i].Conditions.Ready = ref(false)
			}
		}, CheckWebhookEndpoints, Fail, "has no ready endpoints"},
		{"no EndpointSlices", func(o *Options, s *Snapshot) {
			s.Services[nsName("spire-mesh-injector", "spire-mesh-injector")].Slices = nil
		}, CheckWebhookEndpoints, Fail, "has no ready endpoints"},
		{"webhook at a URL", func(o *Options, s *Snapshot) {
			s.Webhook.Webhooks[0].ClientConfig.Service = nil
			s.Webhook.Webhooks[0].ClientConfig.URL = ref("https://127.0.0.1:9443/mutate-pods")
		}, CheckWebhookEndpoints, OK, "called at URL https://127.0.0.1:9443/mutate-pods"},

		{"fail open without the safety net", func(o *Options, s *Snapshot) { s.SafetyNet, s.SafetyNetErr = false, notFound("b") },
			CheckWebhookFailurePolicy, Warn, "without the safety net"},
		{"fail closed needs no safety net", func(o *Options, s *Snapshot) {
			s.SafetyNet, s.SafetyNetErr = false, notFound("b")
			s.Webhook.Webhooks[0].FailurePolicy = ref(admissionregistrationv1.Fail)
		}, CheckWebhookFailurePolicy, OK, "fails closed"},
		{"unset failurePolicy is Fail", func(o *Options, s *Snapshot) {
			s.SafetyNet, s.SafetyNetErr = false, notFound("b")
			s.Webhook.Webhooks[0].FailurePolicy = nil
		}, CheckWebhookFailurePolicy, OK, "fails closed"},

		{"CSI driver missing", func(o *Options, s *Snapshot) { s.CSIDriver, s.CSIDriverErr = nil, notFound("csi.spiffe.io") },
			CheckCSIDriver, Fail, "CSIDriver/csi.spiffe.io not found"},
		{"CSI driver without ephemeral volumes", func(o *Options, s *Snapshot) {
			s.CSIDriver.Spec.VolumeLifecycleModes = []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}
		}, CheckCSIDriver, Fail, "does not allow Ephemeral"},
		{"CSI driver without OpenShift profile label", func(o *Options, s *Snapshot) { s.CSIDriver.Labels = nil },
			CheckCSIDriver, Warn, "no security.openshift.io/csi-ephemeral-volume-profile label"},
		{"CSI driver with a privileged profile", func(o *Options, s *Snapshot) { s.CSIDriver.Labels[CSIProfileLabel] = "privileged" },
			CheckCSIDriver, Warn, "=privileged"},
		{"profile label does not matter off OpenShift", func(o *Options, s *Snapshot) { s.CSIDriver.Labels, s.OpenShift = nil, false },
			CheckCSIDriver, OK, "Ephemeral volumes allowed"},

		{"Istio's trust domain differs", func(o *Options, s *Snapshot) { s.IstioMesh.TrustDomain = "cluster.local" },
			CheckTrustDomain, Fail, "Istio (ConfigMap istio-system/istio): cluster.local"},
		{"Istio's unset trust domain is cluster.local", func(o *Options, s *Snapshot) { s.IstioMesh.TrustDomain = "" },
			CheckTrustDomain, Fail, "Istio (ConfigMap istio-system/istio): cluster.local"},
		{"ZTWIM's trust domain differs", func(o *Options, s *Snapshot) { s.ZTWIM.TrustDomain = "apps.example.com" },
			CheckTrustDomain, Fail, "ZTWIM (ZeroTrustWorkloadIdentityManager/cluster): apps.example.com"},
		{"SCM's trust domain differs", func(o *Options, s *Snapshot) { s.SCM.TrustDomain = "other.example" },
			CheckTrustDomain, Fail, "other.example"},
		{"only our trust domain known", func(o *Options, s *Snapshot) {
			s.IstioMesh, s.IstioMeshErr = nil, notFound("istio")
			s.ZTWIM, s.ZTWIMErr = nil, fmt.Errorf("%w: no kind", errNotInstalled)
			s.SCM, s.SCMErr = nil, notFound("scm")
		}, CheckTrustDomain, OK, "ZTWIM not installed"},
		{"Istio's mesh config unreadable", func(o *Options, s *Snapshot) { s.IstioMesh, s.IstioMeshErr = nil, forbidden("istio") },
			CheckTrustDomain, Warn, "could not read ConfigMap/istio-system/istio"},

		{"ZTWIM with another socket file", func(o *Options, s *Snapshot) { o.Config = testConfig(t, "socketFileName: socket\n") },
			CheckSocketFile, Fail, "ZTWIM's agent publishes spire-agent.sock"},
		{"mesh-wide socket file differs", func(o *Options, s *Snapshot) { s.IstioMesh.SocketFile = "agent.sock" },
			CheckSocketFile, Warn, "look for socket file agent.sock"},
		{"wired proxy told another socket file", func(o *Options, s *Snapshot) {
			s.Namespaces[0].Pods[0].Spec.InitContainers[0].Env[0].Value = "socket"
		}, CheckSocketFile, Fail, "kubectl -n shop rollout restart deployment/reviews"},
		{"wired proxy without the env var looks for Istio's default", func(o *Options, s *Snapshot) {
			s.Namespaces[0].Pods[0].Spec.InitContainers[0].Env = nil
		}, CheckSocketFile, Fail, "looks for socket file socket"},

		{"SCM reconciles another class", func(o *Options, s *Snapshot) { s.SCM.ClassName = "spire-mesh" },
			CheckClassName, Fail, `registration.className: "spire-mesh"`},
		{"SCM without className watches every class", func(o *Options, s *Snapshot) { s.SCM.ClassName = "" },
			CheckClassName, OK, "is reconciled"},
		{"class-less registrations with watchClassless", func(o *Options, s *Snapshot) {
			o.Config = testConfig(t, "registration:\n  className: \"\"\n")
			s.SCM.ClassName, s.SCM.WatchClassless = "spire", true
		}, CheckClassName, OK, "class-less objects"},
		{"SCM config invisible, ZTWIM present", func(o *Options, s *Snapshot) {
			s.SCM, s.SCMErr = nil, notFound("scm")
			o.Config = testConfig(t, "registration:\n  className: spire\n")
		}, CheckClassName, Fail, "zero-trust-workload-identity-manager-spire"},
		{"SCM config invisible, no ZTWIM", func(o *Options, s *Snapshot) {
			s.SCM, s.SCMErr = nil, notFound("zero-trust-workload-identity-manager/spire-controller-manager")
			s.ZTWIM, s.ZTWIMErr = nil, fmt.Errorf("%w: no kind", errNotInstalled)
		}, CheckClassName, Warn, "--scm-config"},

		{"namespace not opted in", func(o *Options, s *Snapshot) {
			delete(s.Namespaces[0].Namespace.Labels, annotations.InjectionLabel)
			s.Namespaces[0].Requested = true
		}, CheckNamespaceSelector, Fail, "kubectl label namespace shop spire-injection=enabled"},
		{"opted-in namespace excluded by the selector", func(o *Options, s *Snapshot) {
			sel := &s.Webhook.Webhooks[0].NamespaceSelector.MatchExpressions[0]
			sel.Values = append(sel.Values, testNS)
		}, CheckNamespaceSelector, Fail, "does not select namespace shop"},
		{"namespace does not exist", func(o *Options, s *Snapshot) { s.Namespaces[0].Namespace = nil },
			CheckNamespaceSelector, Fail, "namespace shop not found"},

		{"registration missing with wired pods", func(o *Options, s *Snapshot) { s.Registrations = nil },
			CheckRegistration, Fail, "2 wired pod(s) wait for it"},
		{"registration missing without wired pods", func(o *Options, s *Snapshot) { s.Registrations, s.Namespaces[0].Pods = nil, nil },
			CheckRegistration, OK, "no wired pod"},
		{"registration rejected by SCM's parser", func(o *Options, s *Snapshot) {
			s.Registrations[0].Spec.SPIFFEIDTemplate = "spiffe://{{ .Nope"
		}, CheckRegistration, Fail, "rejected by spire-controller-manager's parser"},
		{"registration drifted", func(o *Options, s *Snapshot) { s.Registrations[0].Spec.JWTTTL = metav1.Duration{} },
			CheckRegistration, Warn, "differs from what the configuration gives in jwtTtl"},
		{"registration not ours", func(o *Options, s *Snapshot) { s.Registrations[0].Labels = nil },
			CheckRegistration, Warn, "not labelled app.kubernetes.io/managed-by=spire-mesh-injector"},
		{"ClusterSPIFFEID CRD missing", func(o *Options, s *Snapshot) {
			s.Registrations, s.RegistrationsErr = nil, fmt.Errorf("%w: no kind", errNotInstalled)
		}, CheckRegistration, Fail, "CRD (spire.spiffe.io/v1alpha1) is not installed"},
		{"bad federation annotation", func(o *Options, s *Snapshot) {
			s.Namespaces[0].Namespace.Annotations = map[string]string{annotations.FederatesWithAnnotation: "spiffe://x"}
		}, CheckRegistration, Fail, annotations.FederatesWithAnnotation},

		{"registration of an ignored class", func(o *Options, s *Snapshot) { s.Registrations[0].Spec.ClassName = "spire" },
			CheckRegistrationClass, Fail, `has className "spire"`},

		{"no status while pods are wired", func(o *Options, s *Snapshot) { s.Registrations[0].Status = spirev1alpha1.ClusterSPIFFEIDStatus{} },
			CheckRegistrationStatus, Fail, "no status from spire-controller-manager"},
		{"entry failures", func(o *Options, s *Snapshot) { s.Registrations[0].Status.Stats.EntryFailures = 2 },
			CheckRegistrationStatus, Fail, "entryFailures 2"},
		{"render failures", func(o *Options, s *Snapshot) { s.Registrations[0].Status.Stats.PodEntryRenderFailures = 1 },
			CheckRegistrationStatus, Fail, "podEntryRenderFailures 1"},
		{"namespace ignored by SCM", func(o *Options, s *Snapshot) { s.Registrations[0].Status.Stats.NamespacesIgnored = 1 },
			CheckRegistrationStatus, Fail, "ignoreNamespaces"},
		{"fewer pods selected than wired", func(o *Options, s *Snapshot) { s.Registrations[0].Status.Stats.PodsSelected = 1 },
			CheckRegistrationStatus, Warn, "selected 1 of 2 wired pods"},
		{"masked entries", func(o *Options, s *Snapshot) { s.Registrations[0].Status.Stats.EntriesMasked = 1 },
			CheckRegistrationStatus, Warn, "entriesMasked 1"},

		{"a competing registration", func(o *Options, s *Snapshot) {
			s.Registrations = append(s.Registrations, other("legacy", false, config.DefaultClassName))
		},
			CheckOverlap, Fail, "ClusterSPIFFEID legacy"},
		{"a fallback registration yields", func(o *Options, s *Snapshot) {
			s.Registrations = append(s.Registrations, other("ztwim-default", true, config.DefaultClassName))
		},
			CheckOverlap, OK, "no other"},
		{"another class does not compete", func(o *Options, s *Snapshot) {
			s.Registrations = append(s.Registrations, other("legacy", false, "other-class"))
		},
			CheckOverlap, OK, "no other"},
		{"the same identity does not compete", func(o *Options, s *Snapshot) {
			same := other("same", false, config.DefaultClassName)
			same.Spec.SPIFFEIDTemplate = config.DefaultSPIFFEIDTemplate
			s.Registrations = append(s.Registrations, same)
		}, CheckOverlap, OK, "no other"},

		{"pod created before opt-in", func(o *Options, s *Snapshot) {
			p := wiredPod("details-5c8-xyz", annotations.ModeWorkload, rsOwner("details", "5c8"))
			p.Labels["pod-template-hash"] = "5c8"
			delete(p.Annotations, annotations.StatusAnnotation)
			s.Namespaces[0].Pods = append(s.Namespaces[0].Pods, p)
		}, CheckPodsNotWired, Fail, "kubectl -n shop rollout restart deployment/details"},
		{"bare pod not wired", func(o *Options, s *Snapshot) {
			p := wiredPod("debug", annotations.ModeWorkload, nil)
			delete(p.Annotations, annotations.StatusAnnotation)
			s.Namespaces[0].Pods = append(s.Namespaces[0].Pods, p)
		}, CheckPodsNotWired, Fail, "delete pod debug and create it again"},
		{"DeploymentConfig pod not wired", func(o *Options, s *Snapshot) {
			p := wiredPod("legacy-1-abc", annotations.ModeWorkload, &metav1.OwnerReference{Kind: "ReplicationController", Name: "legacy-1", Controller: ref(true)})
			p.Labels["deploymentconfig"] = "legacy"
			delete(p.Annotations, annotations.StatusAnnotation)
			s.Namespaces[0].Pods = append(s.Namespaces[0].Pods, p)
		}, CheckPodsNotWired, Fail, "oc -n shop rollout latest dc/legacy"},
		{"Windows pod skipped", func(o *Options, s *Snapshot) {
			p := wiredPod("win", annotations.ModeWorkload, nil)
			p.Annotations[annotations.StatusAnnotation] = annotations.Status{Skipped: annotations.SkipWindows}.Encode()
			s.Namespaces[0].Pods = append(s.Namespaces[0].Pods, p)
		}, CheckPodsNotWired, Warn, "skipped by the webhook (windows-pod)"},
		{"forged status", func(o *Options, s *Snapshot) {
			p := wiredPod("odd", annotations.ModeWorkload, nil)
			p.Annotations[annotations.StatusAnnotation] = "{"
			s.Namespaces[0].Pods = append(s.Namespaces[0].Pods, p)
		}, CheckPodsNotWired, Warn, "unreadable"},
		{"opted-out and finished pods are fine", func(o *Options, s *Snapshot) {
			out := wiredPod("out", annotations.ModeWorkload, nil)
			out.Labels[annotations.InjectionLabel] = annotations.InjectionDisabled
			delete(out.Annotations, annotations.StatusAnnotation)
			done := wiredPod("done", annotations.ModeWorkload, nil)
			delete(done.Annotations, annotations.StatusAnnotation)
			done.Status.Phase = corev1.PodSucceeded
			s.Namespaces[0].Pods = append(s.Namespaces[0].Pods, out, done)
		}, CheckPodsNotWired, OK, "all 2 running pod(s) wired (1 opted out"},

		{"audience no RequestAuthentication accepts", func(o *Options, s *Snapshot) {
			s.Namespaces[0].RequestAuthentications[0].Rules[0].Audiences = []string{"payments"}
		}, CheckJWTAudience, Warn, `audience "orders"`},
		{"RequestAuthentication accepting any audience", func(o *Options, s *Snapshot) {
			s.Namespaces[0].RequestAuthentications[0].Rules[0].Audiences = nil
		}, CheckJWTAudience, OK, "accepts any audience"},
		{"Istio's CRDs not installed", func(o *Options, s *Snapshot) {
			s.Namespaces[0].RequestAuthentications, s.Namespaces[0].RequestAuthErr = nil, fmt.Errorf("%w: no kind", errNotInstalled)
		}, CheckJWTAudience, OK, "CRD is not installed"},
		{"no RequestAuthentication here", func(o *Options, s *Snapshot) { s.Namespaces[0].RequestAuthentications = nil },
			CheckJWTAudience, OK, "for services elsewhere"},

		// The policy audit: values resolved against the identities the registrations can issue.
		{"principal with a typo in the service account", func(o *Options, s *Snapshot) {
			allowFrom(s, AuthzSource{Principals: []string{"example.org/ns/shop/sa/reveiws"}})
		}, CheckPolicyPrincipals, Fail, `service account reveiws does not exist in namespace shop (did you mean "example.org/ns/shop/sa/reviews"?)`},
		{"principal in another trust domain", func(o *Options, s *Snapshot) {
			allowFrom(s, AuthzSource{Principals: []string{"apps.example.com/ns/shop/sa/default"}})
		}, CheckPolicyPrincipals, Fail, "trust domain apps.example.com is not SPIRE's (example.org)"},
		{"principal written with spiffe://", func(o *Options, s *Snapshot) {
			allowFrom(s, AuthzSource{Principals: []string{"spiffe://example.org/ns/shop/sa/default"}})
		}, CheckPolicyPrincipals, Fail, "written without spiffe://"},
		{"principal of a namespace that does not exist", func(o *Options, s *Snapshot) {
			allowFrom(s, AuthzSource{Namespaces: []string{"shpo"}})
		}, CheckPolicyPrincipals, Fail, "namespace shpo does not exist"},
		{"principal of a namespace nobody registers", func(o *Options, s *Snapshot) {
			allowFrom(s, AuthzSource{Principals: []string{"example.org/ns/payments/sa/default"}})
		}, CheckPolicyPrincipals, Fail, "namespace payments's workloads an identity: it is not opted in"},
		{"ZTWIM's fallback issues identities in namespaces not opted in", func(o *Options, s *Snapshot) {
			s.Registrations = append(s.Registrations, ztwimFallback())
			allowFrom(s, AuthzSource{Principals: []string{"example.org/ns/payments/sa/default"}})
		}, CheckPolicyPrincipals, OK, "matches identities the registrations can issue"},
		{"cluster.local in a principal stands for the mesh's trust domain", func(o *Options, s *Snapshot) {
			allowFrom(s, AuthzSource{Principals: []string{"cluster.local/ns/shop/sa/default", "*/ns/shop/sa/reviews", "example.org/ns/shop/*"}})
		}, CheckPolicyPrincipals, OK, "matches identities the registrations can issue"},
		{"principal in a namespace spire-controller-manager ignores", func(o *Options, s *Snapshot) {
			s.AllNamespaces = append(s.AllNamespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-openshift-demo",
				Labels: map[string]string{annotations.InjectionLabel: annotations.InjectionEnabled}}})
			s.ServiceAccounts["team-openshift-demo"] = []string{"default"}
			allowFrom(s, AuthzSource{Principals: []string{"example.org/ns/team-openshift-demo/sa/default"}})
		}, CheckPolicyPrincipals, Fail, `spire-controller-manager ignores namespace team-openshift-demo (ignoreNamespaces "openshift-*")`},
		{"requestPrincipal spelling out a SPIFFE ID", func(o *Options, s *Snapshot) {
			allowFrom(s, AuthzSource{RequestPrincipals: []string{"https://oidc-discovery.example.org/spiffe://example.org/ns/shop/sa/default"}})
		}, CheckPolicyPrincipals, Fail, `issuer "https://oidc-discovery.example.org/spiffe://example.org/ns/shop/sa", subject "default"`},
		{"requestPrincipal of an issuer nothing accepts", func(o *Options, s *Snapshot) {
			allowFrom(s, AuthzSource{RequestPrincipals: []string{"https://oidc.example.org/*"}})
		}, CheckPolicyPrincipals, Fail, `issuer "https://oidc.example.org": no RequestAuthentication accepts it`},
		{"claims[sub] naming a service account that does not exist", func(o *Options, s *Snapshot) {
			s.AuthorizationPolicies[0].Rules[1].When[0].Values = []string{"spiffe://example.org/ns/shop/sa/frontend"}
		}, CheckPolicyPrincipals, Fail, "service account frontend does not exist in namespace shop"},
		{"DENY rule that never applies", func(o *Options, s *Snapshot) {
			s.AuthorizationPolicies = append(s.AuthorizationPolicies, AuthorizationPolicy{Namespace: testNS, Name: "deny-legacy", Action: "DENY",
				Rules: []AuthzRule{{From: []AuthzSource{{Principals: []string{"example.org/ns/legacy/sa/default"}}}}}})
		}, CheckPolicyPrincipals, Warn, "[the rule never applies]"},
		{"notPrincipals that exclude nobody", func(o *Options, s *Snapshot) {
			s.AuthorizationPolicies[0].Rules[0].From[0].NotPrincipals = []string{"example.org/ns/shop/sa/gone"}
		}, CheckPolicyPrincipals, Warn, "[excludes nobody]"},
		{"registration whose IDs cannot be enumerated", func(o *Options, s *Snapshot) {
			perPod := other("per-pod", false, config.DefaultClassName)
			perPod.Spec.NamespaceSelector.MatchLabels[corev1.LabelMetadataName] = "payments"
			s.Registrations = append(s.Registrations, perPod)
			allowFrom(s, AuthzSource{Principals: []string{"example.org/legacy/web-0"}})
		}, CheckPolicyPrincipals, Warn, "[cannot be confirmed]"},
		{"AuthorizationPolicy CRD not installed", func(o *Options, s *Snapshot) {
			s.AuthorizationPolicies, s.AuthorizationPoliciesErr = nil, fmt.Errorf("%w: no kind", errNotInstalled)
		}, CheckPolicyPrincipals, OK, "CRD is not installed"},
		{"service accounts unreadable", func(o *Options, s *Snapshot) {
			s.ServiceAccounts, s.ServiceAccountsErr = nil, forbidden("serviceaccounts")
		}, CheckPolicyPrincipals, Warn, "could not read service accounts"},

		{"deny-all with nothing admitting the workload", func(o *Options, s *Snapshot) {
			s.AuthorizationPolicies = []AuthorizationPolicy{{Namespace: testNS, Name: "deny-all", Action: "ALLOW"}}
		}, CheckPolicyAdmission, Warn, "shop/deny-all (no rules: denies everything)"},
		{"mesh-wide deny-all in the root namespace", func(o *Options, s *Snapshot) {
			s.AuthorizationPolicies = []AuthorizationPolicy{{Namespace: "istio-system", Name: "deny-all", Action: "ALLOW"}}
		}, CheckPolicyAdmission, Warn, "istio-system/deny-all"},
		{"an ALLOW policy for gateways does not select sidecars", func(o *Options, s *Snapshot) {
			s.AuthorizationPolicies = []AuthorizationPolicy{{Namespace: testNS, Name: "gw", Action: "ALLOW", TargetRefs: true}}
		}, CheckPolicyAdmission, OK, "0 selected by ALLOW policies and admitted by at least one rule, 1 allowed by default"},

		{"namespace spire-controller-manager's regular expression ignores", func(o *Options, s *Snapshot) {
			s.SCM.IgnoreNamespaces = []string{"kube-system", "hop"}
		}, CheckSCMIgnore, Fail, `ignoreNamespaces entry "hop"`},
		{"ZTWIM's openshift-* ignores more than openshift- namespaces", func(o *Options, s *Snapshot) {
			s.SCM, s.SCMErr = nil, notFound("scm")
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-openshift-demo", Labels: map[string]string{annotations.InjectionLabel: annotations.InjectionEnabled}}}
			s.Namespaces = append(s.Namespaces, NamespaceData{Name: ns.Name, Namespace: ns})
		}, CheckSCMIgnore, Fail, `"openshift-*" matches "team-openshift-demo"`},
		{"spire-controller-manager's defaults when its file does not say", func(o *Options, s *Snapshot) {
			s.SCM.IgnoreNamespaces, s.SCM.IgnoreNamespacesDefaulted = SCMDefaultIgnoreNamespaces, true
		}, CheckSCMIgnore, OK, "not set there: spire-controller-manager's defaults"},
		{"an entry that is not a regular expression", func(o *Options, s *Snapshot) {
			s.SCM.IgnoreNamespaces = []string{"kube-(system"}
		}, CheckSCMIgnore, Warn, "not regular expressions: kube-(system"},

		{"namespace in ambient mode", func(o *Options, s *Snapshot) {
			s.Namespaces[0].Namespace.Labels[IstioDataplaneModeLabel] = "ambient"
		}, CheckIstioMode, Fail, "1 pod(s) in Istio's ambient mode: ratings-0"},
		{"pod in ambient mode", func(o *Options, s *Snapshot) {
			s.Namespaces[0].Pods[1].Labels[IstioDataplaneModeLabel] = "ambient"
		}, CheckIstioMode, Fail, "ztunnel takes its certificates only from istiod's CA"},
		{"ambient namespace whose pods all opt out or have a sidecar", func(o *Options, s *Snapshot) {
			s.Namespaces[0].Namespace.Labels[IstioDataplaneModeLabel] = "ambient"
			s.Namespaces[0].Pods[1].Labels[IstioDataplaneModeLabel] = "none"
		}, CheckIstioMode, Warn, "no running pod is captured"},
		{"a sidecar from no revision of this cluster", func(o *Options, s *Snapshot) {
			delete(s.Namespaces[0].Namespace.Labels, IstioInjectionLabel)
			s.IstioRevisions = nil
		}, CheckIstioMode, OK, "1 pod(s) with a sidecar but no istio.io/rev label"},
		{"pods of a revision that is not installed", func(o *Options, s *Snapshot) {
			delete(s.Namespaces[0].Namespace.Labels, IstioInjectionLabel)
			s.IstioRevisions = nil
			s.Namespaces[0].Pods[0].Labels[IstioRevLabel] = "stable"
			// As the collector leaves a revision it looked for and did not find.
			s.IstioRevisions = map[string]*IstioRevision{"stable": {Name: "stable", Used: []string{"pods in shop"},
				MeshErr: notFound("istio-stable"), InjectorErr: notFound("istio-sidecar-injector-stable"), IstiodErr: notFound("istiod-stable")}}
		}, CheckIstioMode, Warn, "revision stable (pods: label istio.io/rev=stable), but neither ConfigMap istio-stable"},
		{"namespace on a revision tag", func(o *Options, s *Snapshot) {
			useRevision(s, "canary", "1.27.1")
		}, CheckIstioMode, OK, "revision canary (namespace label istio.io/rev=prod, tag prod of revision canary)"},
		{"namespace on a revision that is not installed", func(o *Options, s *Snapshot) {
			useRevision(s, "canary", "")
		}, CheckIstioMode, Warn, "neither ConfigMap istio-canary nor istio-sidecar-injector-canary exists in istio-system"},
		{"a revision's trust domain differs", func(o *Options, s *Snapshot) {
			useRevision(s, "canary", "1.27.1")
			s.IstioRevisions["canary"].Mesh.TrustDomain = "cluster.local"
		}, CheckTrustDomain, Fail, "Istio revision canary (ConfigMap istio-system/istio-canary): cluster.local"},
		{"a revision's mesh-wide socket file differs", func(o *Options, s *Snapshot) {
			useRevision(s, "canary", "1.27.1")
			s.IstioRevisions["canary"].Mesh.SocketFile = "socket"
		}, CheckSocketFile, Warn, "Istio revision canary's mesh config tells every proxy to look for socket file socket"},

		{"proxy older than the socket file fix", func(o *Options, s *Snapshot) {
			s.IstioRevisions[DefaultRevision].Injector.Tag = "1.24.3"
		}, CheckProxyVersion, Fail, "runs proxy 1.24.3, older than 1.23.6 / 1.24.4 / 1.25.0"},
		{"proxy with the back-ported fix", func(o *Options, s *Snapshot) {
			s.IstioRevisions[DefaultRevision].Injector.Tag = "1.23.6-distroless"
		}, CheckProxyVersion, OK, "runs proxy 1.23.6, which honours"},
		{"proxy image by digest, version from istiod's label", func(o *Options, s *Snapshot) {
			r := s.IstioRevisions[DefaultRevision]
			r.Injector = &IstioInjector{Source: "ConfigMap istio-system/istio-sidecar-injector", ProxyImage: "registry.redhat.io/openshift-service-mesh/istio-proxyv2-rhel9@sha256:0123"}
			r.Istiod = &Istiod{Source: "Deployment istio-system/istiod", Image: "registry.redhat.io/openshift-service-mesh/istio-pilot-rhel9@sha256:4567", Version: "1.24.3"}
		}, CheckProxyVersion, Fail, "label app.kubernetes.io/version=1.24.3"},
		{"proxy version unknown", func(o *Options, s *Snapshot) {
			r := s.IstioRevisions[DefaultRevision]
			r.Injector = &IstioInjector{Source: "ConfigMap istio-system/istio-sidecar-injector", ProxyImage: "registry.redhat.io/openshift-service-mesh/istio-proxyv2-rhel9@sha256:0123"}
			r.Istiod = &Istiod{Source: "Deployment istio-system/istiod"}
		}, CheckProxyVersion, Warn, "cannot tell the version"},
		{"an old proxy with Istio's own socket file name", func(o *Options, s *Snapshot) {
			o.Config = testConfig(t, "socketFileName: socket\n")
			s.ZTWIM, s.ZTWIMErr = nil, fmt.Errorf("%w: no kind", errNotInstalled)
			s.IstioRevisions[DefaultRevision].Injector.Tag = "1.22.0"
		}, CheckProxyVersion, OK, "socketFileName is Istio's default"},

		{"federation under SPIRE's default SDS names", func(o *Options, s *Snapshot) { federate(t, o, s) },
			CheckAgentSDS, Fail, "SPIRE answers ROOTCA with the local trust domain's bundle alone"},
		{"federation with Istio's SDS names", func(o *Options, s *Snapshot) {
			federate(t, o, s)
			s.Agent.BundleName, s.Agent.AllBundlesName = ref("null"), ref("ROOTCA")
		}, CheckAgentSDS, OK, "serves all bundles as ROOTCA"},
		{"federation with the agent's configuration not found", func(o *Options, s *Snapshot) {
			federate(t, o, s)
			s.Agent, s.AgentErr = nil, notFound("spire-agent")
		}, CheckAgentSDS, Warn, "--agent-config"},
		{"an SVID name Envoy does not ask for", func(o *Options, s *Snapshot) { s.Agent.SVIDName = ref("svid") },
			CheckAgentSDS, Fail, `default_svid_name "svid"; Envoy asks for "default"`},

		{"Envoy fetches an in-cluster https jwksUri", func(o *Options, s *Snapshot) {
			s.IstioRevisions[DefaultRevision].Istiod.JWKSMode = "true"
		}, CheckJWKSFetch, Fail, "nothing originates TLS"},
		{"Envoy fetches over a DestinationRule's TLS", func(o *Options, s *Snapshot) {
			s.IstioRevisions[DefaultRevision].Istiod.JWKSMode = "envoy"
			s.DestinationRules = []DestinationRule{{Namespace: "zero-trust-workload-identity-manager", Name: "oidc", Host: "spire-spiffe-oidc-discovery-provider", TLSMode: "SIMPLE"}}
		}, CheckJWKSFetch, Warn, "over the TLS DestinationRule zero-trust-workload-identity-manager/oidc originates"},
		{"istiod fetches an in-cluster https jwksUri without the extra CA", func(o *Options, s *Snapshot) {
			s.IstioRevisions[DefaultRevision].JWKSExtraRootCA = false
		}, CheckJWKSFetch, Warn, "with the system's roots only (no ConfigMap pilot-jwks-extra-cacerts)"},
		{"hybrid mode fetches an external host through istiod", func(o *Options, s *Snapshot) {
			s.IstioRevisions[DefaultRevision].Istiod.JWKSMode = "hybrid"
			s.Namespaces[0].RequestAuthentications[0].Rules[0].JwksURI = "https://oidc-discovery.example.org/keys"
		}, CheckJWKSFetch, OK, "istiod fetches it (https, external, system roots)"},
		{"envoy mode with an external host", func(o *Options, s *Snapshot) {
			s.IstioRevisions[DefaultRevision].Istiod.JWKSMode = "envoy"
			s.Namespaces[0].RequestAuthentications[0].Rules[0].JwksURI = "https://oidc-discovery.example.org/keys"
		}, CheckJWKSFetch, Warn, "unless a ServiceEntry registers it"},
		{"istiod not found", func(o *Options, s *Snapshot) {
			s.IstioRevisions[DefaultRevision].Istiod, s.IstioRevisions[DefaultRevision].IstiodErr = nil, notFound("istiod")
		}, CheckJWKSFetch, Warn, "cannot tell who fetches JWKS"},

		{"a Deployment still asking for Istio's spire template", func(o *Options, s *Snapshot) {
			s.Namespaces[0].Pods[0].Annotations[IstioTemplatesAnnotation] = "sidecar, spire"
		}, CheckIstioSPIRETemplate, Warn, `kubectl -n shop patch deployment/reviews --type=json -p '[{"op":"remove","path":"/spec/template/metadata/annotations/inject.istio.io~1templates"}]'`},
		{"a gateway keeps its gateway template", func(o *Options, s *Snapshot) {
			s.Namespaces[0].Pods[1].Annotations[IstioTemplatesAnnotation] = "gateway,spire"
		}, CheckIstioSPIRETemplate, Warn, `kubectl -n shop patch statefulset/ratings --type=json -p '[{"op":"replace","path":"/spec/template/metadata/annotations/inject.istio.io~1templates","value":"gateway"}]'`},
		{"spire-like template names are not spire", func(o *Options, s *Snapshot) {
			s.Namespaces[0].Pods[0].Annotations[IstioTemplatesAnnotation] = "sidecar,spire-extra"
		}, CheckIstioSPIRETemplate, OK, "no pod asks"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, s := healthy(t)
			tt.seed(&o, s)
			r := Evaluate(o, s)
			var got []string
			found := false
			for _, f := range findings(r, tt.id) {
				got = append(got, fmt.Sprintf("%s: %s | %s | %s", f.Status, f.What, f.Why, f.Fix))
				if f.Status == tt.want && strings.Contains(f.What+" "+f.Why+" "+f.Fix, tt.contains) {
					found = true
				}
			}
			assert.True(t, found, "no %s %s finding mentioning %q; got:\n%s", tt.want, tt.id, tt.contains, strings.Join(got, "\n"))
			if tt.want == OK {
				return
			}
			// Breaking one thing must not make unrelated checks fail, except where the same cause
			// is seen from two sides.
			related := map[ID][]ID{
				CheckWebhookConfiguration: {CheckNamespaceSelector},
				// A namespace not opted in issues no identity: policies naming it resolve to nothing.
				CheckNamespaceSelector: {CheckPolicyPrincipals, CheckPolicyAdmission},
				CheckRegistration:      {CheckRegistrationClass, CheckRegistrationStatus},
				CheckClassName:         {CheckRegistrationClass, CheckRegistration},
				CheckRegistrationClass: {CheckClassName, CheckRegistration},
				CheckPodsNotWired:      {CheckRegistrationStatus},
				CheckSocketFile:        {},
				CheckPolicyPrincipals:  {CheckPolicyAdmission},
				CheckPolicyAdmission:   {CheckPolicyPrincipals},
				CheckSCMIgnore:         {CheckPolicyPrincipals, CheckPolicyAdmission},
				CheckIstioMode:         {CheckProxyVersion, CheckJWKSFetch},
			}
			for _, f := range r.Findings {
				if f.Check != tt.id && f.Status != OK {
					assert.Contains(t, related[tt.id], f.Check, "unrelated finding: %+v", f)
				}
			}
		})
	}
}

func TestExplainPod(t *testing.T) {
	const meshPod = "reviews-7d9f-abcde"
	unwired := func(s *Snapshot, name string) *corev1.Pod {
		p := wiredPod(name, annotations.ModeWorkload, nil)
		delete(p.Annotations, annotations.StatusAnnotation)
		delete(p.Labels, annotations.InjectedLabel)
		s.Namespaces[0].Pods = append(s.Namespaces[0].Pods, p)
		return &s.Namespaces[0].Pods[len(s.Namespaces[0].Pods)-1]
	}
	type want struct {
		id       ID
		status   Status
		contains string
	}
	tests := []struct {
		name string
		pod  string
		seed func(o *Options, s *Snapshot)
		want []want
	}{
		{"a wired pod", meshPod, func(o *Options, s *Snapshot) {}, []want{
			{CheckPodWiring, OK, "wired in mesh mode"},
			{CheckPodIdentity, OK, "gets spiffe://example.org/ns/shop/sa/default from ClusterSPIFFEID spire-mesh-injector-shop (spire-mesh-injector's)"},
			{CheckPodEntries, OK, "no entry failures"},
			{CheckPodPolicies, OK, "as a client, admitted by ALLOW policies: shop/reviews"},
		}},
		{"the fallback yields to ours", meshPod, func(o *Options, s *Snapshot) { s.Registrations = append(s.Registrations, ztwimFallback()) }, []want{
			{CheckPodIdentity, OK, "(spire-mesh-injector's)"},
		}},
		{"an unwired pod gets ZTWIM's fallback", "legacy", func(o *Options, s *Snapshot) {
			s.Registrations = append(s.Registrations, ztwimFallback())
			unwired(s, "legacy")
		}, []want{
			{CheckPodWiring, Fail, "not wired (no spire-mesh-injector.io/status annotation)"},
			{CheckPodIdentity, OK, "from ClusterSPIFFEID zero-trust-workload-identity-manager-spire-default (ZTWIM's fallback)"},
		}},
		{"a pod created before the namespace's registration", "old", func(o *Options, s *Snapshot) {
			s.Registrations[0].CreationTimestamp = metav1.Unix(2000, 0)
			unwired(s, "old").CreationTimestamp = metav1.Unix(1000, 0)
		}, []want{
			{CheckPodWiring, Fail, "before the namespace's registration"},
			{CheckPodIdentity, Fail, "no registration gives pod old a SPIFFE ID"},
		}},
		{"an opted-out pod without the CSI volume", "out", func(o *Options, s *Snapshot) {
			s.Registrations = append(s.Registrations, ztwimFallback())
			p := unwired(s, "out")
			p.Labels[annotations.InjectionLabel] = annotations.InjectionDisabled
			p.Spec.Volumes = nil
		}, []want{
			{CheckPodWiring, OK, "opted out"},
			{CheckPodIdentity, Fail, "mounts no volume of the SPIFFE CSI driver csi.spiffe.io"},
		}},
		{"our entry masked by an older registration", meshPod, func(o *Options, s *Snapshot) {
			s.Registrations[0].CreationTimestamp = metav1.Unix(2000, 0)
			legacy := other("legacy", false, config.DefaultClassName)
			legacy.Spec.SPIFFEIDTemplate = config.DefaultSPIFFEIDTemplate
			legacy.CreationTimestamp = metav1.Unix(1000, 0)
			s.Registrations = append(s.Registrations, legacy)
		}, []want{
			{CheckPodIdentity, OK, "gets spiffe://example.org/ns/shop/sa/default from ClusterSPIFFEID legacy (another registration)"},
			{CheckPodEntries, Warn, "is masked by ClusterSPIFFEID legacy"},
		}},
		{"two registrations, two identities", meshPod, func(o *Options, s *Snapshot) {
			s.Registrations = append(s.Registrations, other("legacy", false, config.DefaultClassName))
		}, []want{
			{CheckPodIdentity, Fail, "gets 2 SPIFFE IDs"},
		}},
		{"our registration's entries fail", meshPod, func(o *Options, s *Snapshot) { s.Registrations[0].Status.Stats.EntryFailures = 3 }, []want{
			{CheckPodEntries, Fail, "reports entryFailures 3"},
		}},
		{"our registration cannot render: the fallback applies", meshPod, func(o *Options, s *Snapshot) {
			s.Registrations[0].Spec.SPIFFEIDTemplate = "spiffe://other.org/ns/{{ .PodMeta.Namespace }}"
			s.Registrations = append(s.Registrations, ztwimFallback())
		}, []want{
			{CheckPodIdentity, OK, "(ZTWIM's fallback)"},
			{CheckPodEntries, Fail, "cannot render an entry for the pod"},
		}},
		{"a DENY policy names it", meshPod, func(o *Options, s *Snapshot) {
			s.AuthorizationPolicies = append(s.AuthorizationPolicies, AuthorizationPolicy{Namespace: "payments", Name: "deny-shop", Action: "DENY",
				Rules: []AuthzRule{{From: []AuthzSource{{Namespaces: []string{"shop"}}}}}})
		}, []want{
			{CheckPodPolicies, OK, "denied by DENY policies: payments/deny-shop"},
		}},
		{"no rule admits it", meshPod, func(o *Options, s *Snapshot) {
			s.AuthorizationPolicies[0].Rules = nil
		}, []want{
			{CheckPodPolicies, Warn, "none of their rules can match a request"},
		}},
		{"a pod in ambient mode", "ratings-0", func(o *Options, s *Snapshot) {
			s.Namespaces[0].Namespace.Labels[IstioDataplaneModeLabel] = "ambient"
		}, []want{
			{CheckIstioMode, Fail, "is in Istio's ambient mode"},
		}},
		{"a namespace spire-controller-manager ignores", meshPod, func(o *Options, s *Snapshot) { s.SCM.IgnoreNamespaces = []string{"sho"} }, []want{
			{CheckPodIdentity, Fail, `ignoreNamespaces entry "sho"`},
		}},
		{"no such pod", "nope", func(o *Options, s *Snapshot) {}, []want{
			{CheckPodWiring, Fail, "pod nope not found in namespace shop"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, s := healthy(t)
			tt.seed(&o, s)
			r := ExplainPod(o, s, tt.pod)
			var got []string
			for _, f := range r.Findings {
				got = append(got, fmt.Sprintf("%s %s: %s | %s | %s", f.Status, f.Check, f.What, f.Why, f.Fix))
				assert.Equal(t, Runbook(f.Check), f.Runbook)
			}
			for _, w := range tt.want {
				found := false
				for _, f := range findings(r, w.id) {
					found = found || (f.Status == w.status && strings.Contains(f.What+" "+f.Why+" "+f.Fix, w.contains))
				}
				assert.True(t, found, "no %s %s finding mentioning %q; got:\n%s", w.status, w.id, w.contains, strings.Join(got, "\n"))
			}
			if tt.name == "a wired pod" {
				assert.Equal(t, OK, r.Worst(), strings.Join(got, "\n"))
				for _, id := range PodIDs {
					assert.NotEmpty(t, findings(r, id), "nothing reported for %s", id)
				}
			}
		})
	}
}

// allowFrom adds a rule with source src to the healthy ALLOW policy.
func allowFrom(s *Snapshot, src AuthzSource) {
	s.AuthorizationPolicies[0].Rules = append(s.AuthorizationPolicies[0].Rules, AuthzRule{From: []AuthzSource{src}})
}

// ztwimFallback is the fallback registration ZTWIM creates (every namespace but its own).
func ztwimFallback() spirev1alpha1.ClusterSPIFFEID {
	return spirev1alpha1.ClusterSPIFFEID{
		ObjectMeta: metav1.ObjectMeta{Name: ztwimFallbackName, CreationTimestamp: metav1.Unix(1000, 0)},
		Spec: spirev1alpha1.ClusterSPIFFEIDSpec{
			SPIFFEIDTemplate: config.DefaultSPIFFEIDTemplate, ClassName: config.DefaultClassName, Fallback: true, Hint: "default",
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"zero-trust-workload-identity-manager"}}}},
		},
	}
}

// useRevision moves the namespace to revision rev through the revision tag prod; an empty
// version leaves the revision not installed.
func useRevision(s *Snapshot, rev, version string) {
	ns := s.Namespaces[0].Namespace
	delete(ns.Labels, IstioInjectionLabel)
	ns.Labels[IstioRevLabel] = "prod"
	s.IstioTags = map[string]string{"prod": rev}
	r := &IstioRevision{Name: rev, Used: []string{"namespace shop"},
		MeshErr: notFound("istio-" + rev), InjectorErr: notFound("istio-sidecar-injector-" + rev), IstiodErr: notFound("istiod-" + rev)}
	if version != "" {
		r.Mesh = &IstioMesh{Source: "ConfigMap istio-system/istio-" + rev, TrustDomain: "example.org"}
		r.MeshErr, r.InjectorErr, r.IstiodErr = nil, nil, nil
		r.Injector = &IstioInjector{Source: "ConfigMap istio-system/istio-sidecar-injector-" + rev, Hub: "docker.io/istio", Tag: version, ProxyImage: "proxyv2"}
		r.Istiod = &Istiod{Source: "Deployment istio-system/istiod-" + rev, Image: "docker.io/istio/pilot:" + version}
		r.JWKSExtraRootCA = true
	}
	s.IstioRevisions[rev] = r
}

// federate makes the namespace federate with partner.example (its annotation, and the
// registration the webhook built from it).
func federate(t *testing.T, o *Options, s *Snapshot) {
	t.Helper()
	ns := s.Namespaces[0].Namespace
	ns.Annotations = map[string]string{annotations.FederatesWithAnnotation: "partner.example"}
	reg, err := registration.Build(o.Config, testNS, ns)
	require.NoError(t, err)
	s.Registrations[0].Spec = reg.Spec
}

// other is a ClusterSPIFFEID not managed by the webhook that selects every pod of testNS.
func other(name string, fallback bool, class string) spirev1alpha1.ClusterSPIFFEID {
	return spirev1alpha1.ClusterSPIFFEID{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: spirev1alpha1.ClusterSPIFFEIDSpec{
			SPIFFEIDTemplate:  "spiffe://{{ .TrustDomain }}/legacy/{{ .PodMeta.Name }}",
			ClassName:         class,
			Fallback:          fallback,
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{corev1.LabelMetadataName: testNS}},
		},
	}
}

func TestOutput(t *testing.T) {
	o, s := healthy(t)
	s.CSIDriver, s.CSIDriverErr = nil, notFound("csi.spiffe.io")
	r := Evaluate(o, s)
	assert.Equal(t, Fail, r.Worst())
	assert.Equal(t, 1, r.Count(Fail))

	var table bytes.Buffer
	require.NoError(t, WriteTable(&table, r))
	lines := strings.Split(table.String(), "\n")
	assert.Regexp(t, `^STATUS\s+CHECK\s+NAMESPACE\s+WHAT\s+WHY\s+FIX$`, lines[0])
	assert.Len(t, regexp.MustCompile(`(?m)^FAIL\s+csi-driver\s+-\s+CSIDriver/csi.spiffe.io not found`).FindAllString(table.String(), -1), 1)
	assert.Contains(t, table.String(), fmt.Sprintf("%d OK, 0 WARN, 1 FAIL (configuration: file config.yaml)", len(r.Findings)-1))
	assert.Regexp(t, `(?m)^Runbooks:\n\s+csi-driver\s+`+regexp.QuoteMeta(RunbookBase+"#csi-driver-missing")+`\n$`, table.String(), "only checks that did not pass get a runbook line")
	for _, l := range lines[1 : len(r.Findings)+1] {
		assert.Regexp(t, `^(OK|WARN|FAIL) `, l, "one line per finding")
	}

	var js bytes.Buffer
	require.NoError(t, WriteJSON(&js, r))
	var back Report
	require.NoError(t, json.Unmarshal(js.Bytes(), &back))
	assert.Equal(t, *r, back)
}

// TestRunbooksExist keeps every finding's runbook link pointing at a heading of docs/runbooks.md,
// and docs/check.md describing every check.
func TestRunbooksExist(t *testing.T) {
	anchors, err := markdown.Anchors("../docs/runbooks.md")
	require.NoError(t, err)
	runbookMD, err := os.ReadFile("../docs/runbooks.md")
	require.NoError(t, err)
	checkMD, err := os.ReadFile("../docs/check.md")
	require.NoError(t, err)
	for _, id := range IDs {
		assert.True(t, anchors[runbooks[id]], "check %s links to docs/runbooks.md#%s, which has no such heading", id, runbooks[id])
		assert.Contains(t, string(checkMD), "`"+string(id)+"`", "docs/check.md does not describe check %s", id)
	}
	for _, id := range PodIDs {
		assert.True(t, anchors[runbooks[id]], "check %s links to docs/runbooks.md#%s, which has no such heading", id, runbooks[id])
		assert.Contains(t, string(checkMD), "`"+string(id)+"`", "docs/check.md does not describe check %s", id)
	}
	assert.Len(t, runbooks, len(IDs)+len(PodIDs))
	assert.Contains(t, string(runbookMD), "spire-mesh-injector check", "the runbooks reference the check command")
}

func ref[T any](v T) *T { return &v }

func TestParseAgentConfig(t *testing.T) {
	tests := []struct {
		name, raw          string
		bundle, allBundles string
		err                string
	}{
		{"ZTWIM without sds", `{"agent": {"socket_path": "/tmp/spire-agent/public/spire-agent.sock"}}`, "ROOTCA", "ALL", ""},
		{"Istio's names", `{"agent": {"sds": {"default_bundle_name": "null", "default_all_bundles_name": "ROOTCA"}}}`, "null", "ROOTCA", ""},
		{"HCL's JSON block list", `{"agent": [{"sds": [{"default_bundle_name": "", "default_all_bundles_name": "ROOTCA"}]}]}`, "", "ROOTCA", ""},
		{"HCL", "agent {\n  sds {\n  }\n}\n", "", "", "not JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := parseAgentConfig(tt.raw)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.bundle, a.bundleName())
			assert.Equal(t, tt.allBundles, a.allBundlesName())
			assert.Equal(t, "default", a.svidName())
		})
	}
}
