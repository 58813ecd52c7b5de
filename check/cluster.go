package check

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// CSIProfileLabel is the label OpenShift's CSI inline volume admission reads from a CSIDriver to
// decide which pod security level may use its ephemeral volumes; without it the driver counts as
// privileged.
const CSIProfileLabel = "security.openshift.io/csi-ephemeral-volume-profile"

// istioDefaultTrustDomain is what Istio uses when meshConfig.trustDomain is unset.
const istioDefaultTrustDomain = "cluster.local"

// rbacFix is the fix of every "not allowed to read" finding.
const rbacFix = "grant the read-only role of kustomize/check (docs/check.md#permissions) to whoever runs the check"

type evaluator struct {
	o   Options
	cfg *config.Config
	s   *Snapshot
	// Built on first use and shared by the checks that read them.
	u           *idUniverse
	resolutions map[string]resolution
}

func (e *evaluator) finding(st Status, id ID, ns, object, what, why, fix string) Finding {
	return Finding{Status: st, Check: id, Namespace: ns, Object: object, What: what, Why: why, Fix: fix}
}

// unreadable is the finding for an optional read that failed for another reason than absence:
// the check cannot vouch for what it did not see.
func (e *evaluator) unreadable(id ID, ns, object string, err error) Finding {
	fix := "re-run the check; if it persists, read the object with kubectl to see why"
	if apierrors.IsForbidden(err) {
		fix = rbacFix
	}
	return e.finding(Warn, id, ns, object, "could not read "+object, err.Error(), fix)
}

func (e *evaluator) config() []Finding {
	c := e.cfg
	summary := fmt.Sprintf("trustDomain %s, className %q, socketFileName %s, csiDriver %s", c.TrustDomain, c.Registration.ClassName, c.SocketFileName, c.CSIDriver)
	if e.o.ConfigFromDefaults {
		return []Finding{e.finding(Warn, CheckConfig, "", "", "compared against the built-in default configuration ("+summary+")",
			"the webhook's own configuration was not read: "+e.o.ConfigSource,
			"pass --config with the file the webhook runs with, or let the check read the webhook's Deployment and ConfigMap ("+rbacFix+")")}
	}
	return []Finding{e.finding(OK, CheckConfig, "", "", "configuration from "+e.o.ConfigSource, summary, "")}
}

func (e *evaluator) webhookObject() string { return "MutatingWebhookConfiguration/" + e.o.WebhookName }

// optedInProbe is a namespace as a user opts it in: only the label, and the name label the API
// server adds to every namespace.
var optedInProbe = labels.Set{annotations.InjectionLabel: annotations.InjectionEnabled, corev1.LabelMetadataName: "any-namespace"}

func (e *evaluator) webhookConfiguration() []Finding {
	obj := e.webhookObject()
	switch err := e.s.WebhookErr; {
	case apierrors.IsNotFound(err):
		return []Finding{e.finding(Fail, CheckWebhookConfiguration, "", obj, obj+" not found",
			"the API server never calls spire-mesh-injector: no pod is wired", "install the webhook: kubectl apply -k kustomize/overlays/cert-manager (oc apply -k kustomize/overlays/openshift)")}
	case err != nil:
		return []Finding{e.unreadable(CheckWebhookConfiguration, "", obj, err)}
	}
	if len(e.s.Webhook.Webhooks) == 0 {
		return []Finding{e.finding(Fail, CheckWebhookConfiguration, "", obj, obj+" has no webhooks", "the API server calls nothing", "re-apply the kustomize overlay")}
	}
	var out []Finding
	for _, w := range e.s.Webhook.Webhooks {
		if w.ClientConfig.Service != nil && len(w.ClientConfig.CABundle) == 0 {
			out = append(out, e.finding(Fail, CheckWebhookConfiguration, "", obj, fmt.Sprintf("webhook %s has no caBundle", w.Name),
				"the API server cannot verify the webhook's serving certificate, so every call fails: with failurePolicy Ignore pods start unwired",
				"the CA bundle is injected by cert-manager's cainjector (annotation cert-manager.io/inject-ca-from) or OpenShift's service CA operator (service.beta.openshift.io/inject-cabundle): check the annotation and that the injector runs"))
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(w.NamespaceSelector)
		if err != nil {
			out = append(out, e.finding(Fail, CheckWebhookConfiguration, "", obj, fmt.Sprintf("webhook %s has an invalid namespaceSelector", w.Name), err.Error(), "re-apply the kustomize overlay"))
			continue
		}
		if !sel.Matches(optedInProbe) {
			out = append(out, e.finding(Fail, CheckWebhookConfiguration, "", obj, fmt.Sprintf("webhook %s's namespaceSelector (%s) does not select namespaces labelled %s=%s", w.Name, sel, annotations.InjectionLabel, annotations.InjectionEnabled),
				"opting a namespace in has no effect: the API server does not call the webhook for its pods",
				"restore namespaceSelector from kustomize/base (matchLabels spire-injection: enabled)"))
			continue
		}
		ca := "called at a URL with the system's roots"
		if len(w.ClientConfig.CABundle) > 0 {
			ca = fmt.Sprintf("caBundle set (%d bytes)", len(w.ClientConfig.CABundle))
		}
		out = append(out, e.finding(OK, CheckWebhookConfiguration, "", obj, fmt.Sprintf("webhook %s: %s, namespaceSelector selects %s=%s", w.Name, ca, annotations.InjectionLabel, annotations.InjectionEnabled), "", ""))
	}
	return out
}

func (e *evaluator) webhookEndpoints() []Finding {
	if e.s.Webhook == nil {
		return nil
	}
	var out []Finding
	for _, w := range e.s.Webhook.Webhooks {
		ref := w.ClientConfig.Service
		if ref == nil {
			url := ""
			if w.ClientConfig.URL != nil {
				url = *w.ClientConfig.URL
			}
			out = append(out, e.finding(OK, CheckWebhookEndpoints, "", e.webhookObject(), fmt.Sprintf("webhook %s is called at URL %s", w.Name, url),
				"not a Service: whether it answers is not visible through the API", ""))
			continue
		}
		obj := "Service/" + ref.Namespace + "/" + ref.Name
		d := e.s.Services[nsName(ref.Namespace, ref.Name)]
		switch {
		case d == nil:
			continue
		case apierrors.IsNotFound(d.Err):
			out = append(out, e.finding(Fail, CheckWebhookEndpoints, "", obj, obj+" not found", fmt.Sprintf("webhook %s points at it: the API server cannot call the webhook", w.Name),
				"re-apply the kustomize overlay (it ships the Service)"))
			continue
		case d.Err != nil:
			out = append(out, e.unreadable(CheckWebhookEndpoints, "", obj, d.Err))
			continue
		case d.SlicesErr != nil:
			out = append(out, e.unreadable(CheckWebhookEndpoints, "", "EndpointSlices of "+obj, d.SlicesErr))
			continue
		}
		ready := 0
		for _, sl := range d.Slices {
			for _, ep := range sl.Endpoints {
				// The EndpointSlice API: an unset ready condition means ready.
				if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
					ready += len(ep.Addresses)
				}
			}
		}
		if ready == 0 {
			out = append(out, e.finding(Fail, CheckWebhookEndpoints, "", obj, obj+" has no ready endpoints",
				"the API server cannot reach the webhook: with failurePolicy Ignore pods start unwired, with Fail pod creation in opted-in namespaces stops",
				fmt.Sprintf("kubectl -n %s get pods,endpointslices -l app.kubernetes.io/name=spire-mesh-injector; kubectl -n %s logs deploy/spire-mesh-injector", ref.Namespace, ref.Namespace)))
			continue
		}
		out = append(out, e.finding(OK, CheckWebhookEndpoints, "", obj, fmt.Sprintf("%s has %d ready endpoint address(es)", obj, ready), "", ""))
	}
	return out
}

func (e *evaluator) webhookFailurePolicy() []Finding {
	if e.s.Webhook == nil {
		return nil
	}
	var out []Finding
	for _, w := range e.s.Webhook.Webhooks {
		// The admissionregistration/v1 default.
		fp := admissionregistrationv1.Fail
		if w.FailurePolicy != nil {
			fp = *w.FailurePolicy
		}
		obj := e.webhookObject()
		binding := "ValidatingAdmissionPolicyBinding/" + e.o.SafetyNetBinding
		switch {
		case fp == admissionregistrationv1.Fail:
			out = append(out, e.finding(OK, CheckWebhookFailurePolicy, "", obj, fmt.Sprintf("webhook %s fails closed (failurePolicy Fail)", w.Name),
				"while it is unreachable, pod creation in opted-in namespaces is refused rather than unwired", ""))
		case e.s.SafetyNet:
			out = append(out, e.finding(OK, CheckWebhookFailurePolicy, "", obj, fmt.Sprintf("webhook %s fails open (failurePolicy Ignore) with the safety net %s", w.Name, binding),
				"unwired pods in opted-in namespaces are refused by the API server itself", ""))
		case e.s.SafetyNetErr != nil && !apierrors.IsNotFound(e.s.SafetyNetErr):
			out = append(out, e.unreadable(CheckWebhookFailurePolicy, "", binding, e.s.SafetyNetErr))
		default:
			out = append(out, e.finding(Warn, CheckWebhookFailurePolicy, "", obj, fmt.Sprintf("webhook %s fails open (failurePolicy Ignore) without the safety net (%s not found)", w.Name, binding),
				"while the webhook is unreachable, pods in opted-in namespaces start without the SPIFFE CSI volume: silently on Istio's own CA, or without identity",
				"deploy with an overlay that includes kustomize/components/validating-policy (both shipped overlays do), or set failurePolicy: Fail"))
		}
	}
	return out
}

func (e *evaluator) csiDriver() []Finding {
	name := e.cfg.CSIDriver
	obj := "CSIDriver/" + name
	switch err := e.s.CSIDriverErr; {
	case apierrors.IsNotFound(err):
		return []Finding{e.finding(Fail, CheckCSIDriver, "", obj, obj+" not found",
			"wired pods mount a CSI volume of driver "+name+": the kubelet cannot publish it and they stay ContainerCreating",
			"install the SPIFFE CSI driver (ZTWIM: the SpiffeCSIDriver object), or set csiDriver to the installed driver's name")}
	case err != nil:
		return []Finding{e.unreadable(CheckCSIDriver, "", obj, err)}
	}
	d := e.s.CSIDriver
	if !slices.Contains(d.Spec.VolumeLifecycleModes, storagev1.VolumeLifecycleEphemeral) {
		return []Finding{e.finding(Fail, CheckCSIDriver, "", obj, fmt.Sprintf("%s does not allow Ephemeral volumes (volumeLifecycleModes %v)", obj, d.Spec.VolumeLifecycleModes),
			"wired pods use an inline (ephemeral) CSI volume: the kubelet refuses it",
			"reinstall the SPIFFE CSI driver; its CSIDriver object lists volumeLifecycleModes: [Ephemeral]")}
	}
	if e.s.OpenShift {
		switch profile, ok := d.Labels[CSIProfileLabel]; {
		case !ok:
			return []Finding{e.finding(Warn, CheckCSIDriver, "", obj, fmt.Sprintf("%s has no %s label", obj, CSIProfileLabel),
				"OpenShift then treats its inline volumes as privileged: pods in namespaces that enforce the restricted or baseline pod security level are refused or warned about",
				fmt.Sprintf("kubectl label csidriver %s %s=restricted (ZTWIM sets it on the driver it deploys)", name, CSIProfileLabel))}
		case profile != "restricted":
			return []Finding{e.finding(Warn, CheckCSIDriver, "", obj, fmt.Sprintf("%s has %s=%s", obj, CSIProfileLabel, profile),
				"pods in namespaces that enforce a stricter pod security level than "+profile+" cannot use its volumes",
				fmt.Sprintf("kubectl label --overwrite csidriver %s %s=restricted", name, CSIProfileLabel))}
		}
		return []Finding{e.finding(OK, CheckCSIDriver, "", obj, fmt.Sprintf("%s present, Ephemeral volumes, %s=restricted", obj, CSIProfileLabel), "", "")}
	}
	return []Finding{e.finding(OK, CheckCSIDriver, "", obj, obj+" present, Ephemeral volumes allowed", "", "")}
}

func (e *evaluator) trustDomain() []Finding {
	type source struct{ name, value string }
	sources := []source{{"spire-mesh-injector", e.cfg.TrustDomain}}
	var notes []string
	var unreadable []Finding
	if m := e.s.IstioMesh; m != nil {
		td := m.TrustDomain
		if td == "" {
			td = istioDefaultTrustDomain
		}
		sources = append(sources, source{"Istio (" + m.Source + ")", td})
	} else if err := e.s.IstioMeshErr; apierrors.IsNotFound(err) {
		notes = append(notes, "Istio's mesh config "+e.o.IstioMeshConfig.String()+" not found")
	} else if err != nil {
		unreadable = append(unreadable, e.unreadable(CheckTrustDomain, "", "ConfigMap/"+e.o.IstioMeshConfig.String(), err))
	}
	// Each other revision in use reads its own mesh configuration.
	for _, r := range e.revisionsSorted() {
		if r.Name == DefaultRevision {
			continue
		}
		if m := r.Mesh; m != nil {
			td := m.TrustDomain
			if td == "" {
				td = istioDefaultTrustDomain
			}
			sources = append(sources, source{"Istio revision " + r.Name + " (" + m.Source + ")", td})
		} else if r.MeshErr != nil && !apierrors.IsNotFound(r.MeshErr) {
			unreadable = append(unreadable, e.unreadable(CheckTrustDomain, "", "ConfigMap/"+e.o.IstioMeshConfig.Namespace+"/"+revisionName("istio", r.Name), r.MeshErr))
		}
	}
	if z := e.s.ZTWIM; z != nil {
		sources = append(sources, source{"ZTWIM (ZeroTrustWorkloadIdentityManager/" + z.Name + ")", z.TrustDomain})
	} else if err := e.s.ZTWIMErr; errors.Is(err, errNotInstalled) || apierrors.IsNotFound(err) {
		notes = append(notes, "ZTWIM not installed")
	} else if err != nil {
		unreadable = append(unreadable, e.unreadable(CheckTrustDomain, "", "ZeroTrustWorkloadIdentityManager/"+e.o.ZTWIMName, err))
	}
	if m := e.s.SCM; m != nil && m.TrustDomain != "" {
		sources = append(sources, source{"spire-controller-manager (" + m.Source + ")", m.TrustDomain})
	} else if m == nil {
		notes = append(notes, "spire-controller-manager's configuration not visible")
	}
	var parts []string
	differ := false
	for _, s := range sources {
		parts = append(parts, s.name+": "+s.value)
		differ = differ || s.value != sources[0].value
	}
	why := "compared " + strings.Join(parts, ", ")
	if len(notes) > 0 {
		why += "; " + strings.Join(notes, ", ")
	}
	if differ {
		return append(unreadable, e.finding(Fail, CheckTrustDomain, "", "", "trust domains differ: "+strings.Join(parts, ", "),
			"SVIDs are issued in SPIRE's trust domain while Istio's peer validation and authorization policies expect its own: mTLS and policies fail",
			"set spire-mesh-injector's trustDomain and Istio's meshConfig.trustDomain to SPIRE's (ZTWIM's is immutable), roll out, restart workloads"))
	}
	return append(unreadable, e.finding(OK, CheckTrustDomain, "", "", "trust domain "+e.cfg.TrustDomain+" agrees", why, ""))
}

func (e *evaluator) socketFile() []Finding {
	want := e.cfg.SocketFileName
	if e.s.ZTWIM != nil && want != config.DefaultSocketFileName {
		return []Finding{e.finding(Fail, CheckSocketFile, "", "", fmt.Sprintf("socketFileName is %s, but ZTWIM's agent publishes %s", want, config.DefaultSocketFileName),
			"istio-proxy and plain workloads look for a socket that is not there: proxies fall back to Istio's CA or stay NotReady",
			"set socketFileName: "+config.DefaultSocketFileName+" (the default) and restart the wired workloads")}
	}
	var out []Finding
	for _, r := range e.revisionsSorted() {
		m := r.Mesh
		if m == nil || m.SocketFile == "" || m.SocketFile == want {
			continue
		}
		which := "Istio's mesh config"
		if r.Name != DefaultRevision {
			which = "Istio revision " + r.Name + "'s mesh config"
		}
		out = append(out, e.finding(Warn, CheckSocketFile, "", "ConfigMap/"+strings.TrimPrefix(m.Source, "ConfigMap "),
			fmt.Sprintf("%s tells every proxy to look for socket file %s; the webhook tells the proxies it wires %s", which, m.SocketFile, want),
			"proxies the webhook does not wire (namespaces not opted in) look for "+m.SocketFile+": pilot-agent errors when a configured socket file does not exist",
			"remove WORKLOAD_IDENTITY_SOCKET_FILE from meshConfig.defaultConfig.proxyMetadata, or set it to "+want))
	}
	if len(out) > 0 {
		return out
	}
	return []Finding{e.finding(OK, CheckSocketFile, "", "", "istio-proxy in wired pods is told socket file "+want,
		fmt.Sprintf("WORKLOAD_IDENTITY_SOCKET_FILE=%s on istio-proxy (Istio's default is %s)", want, config.IstioDefaultSocketFileName), "")}
}

// classRule is which classNames spire-controller-manager reconciles, as far as the check knows.
type classRule struct {
	// known is false when neither spire-controller-manager's configuration nor ZTWIM is visible:
	// the configured className is then the only reference.
	known          bool
	class          string
	watchClassless bool
	source         string
}

func (e *evaluator) classRule() classRule {
	switch {
	case e.s.SCM != nil:
		return classRule{known: true, class: e.s.SCM.ClassName, watchClassless: e.s.SCM.WatchClassless, source: e.s.SCM.Source}
	case e.s.ZTWIM != nil:
		// ZTWIM's spire-controller-manager reconciles only its own class.
		return classRule{known: true, class: config.DefaultClassName, source: "ZTWIM (its spire-controller-manager reconciles only this class)"}
	}
	return classRule{class: e.cfg.Registration.ClassName, source: "as configured; spire-controller-manager's own configuration is not visible"}
}

// accepts mirrors spire-controller-manager: an empty className in its configuration watches every
// class; otherwise its own class, plus class-less objects with watchClassless.
func (r classRule) accepts(class string) bool {
	if r.known && r.class == "" {
		return true
	}
	return class == r.class || (class == "" && r.watchClassless)
}

func (r classRule) String() string {
	s := fmt.Sprintf("className %q", r.class)
	if r.watchClassless {
		s += " and class-less objects"
	}
	return s + " (" + r.source + ")"
}

func (e *evaluator) className() []Finding {
	ours := e.cfg.Registration.ClassName
	rule := e.classRule()
	if !rule.known {
		if err := e.s.SCMErr; err != nil && !apierrors.IsNotFound(err) {
			return []Finding{e.unreadable(CheckClassName, "", "spire-controller-manager's configuration", err)}
		}
		return []Finding{e.finding(Warn, CheckClassName, "", "", fmt.Sprintf("cannot confirm that spire-controller-manager reconciles className %q", ours),
			"its configuration was not found ("+describeErr(e.s.SCMErr)+") and ZTWIM is not installed",
			"point the check at it: --scm-config NAMESPACE/CONFIGMAP")}
	}
	if !rule.accepts(ours) {
		return []Finding{e.finding(Fail, CheckClassName, "", "", fmt.Sprintf("spire-controller-manager reconciles %s; registration.className is %q", rule, ours),
			"it ignores every ClusterSPIFFEID the webhook writes, without a word: no entries, no status, no identity",
			fmt.Sprintf("set registration.className: %q and restart the webhook; its reconciler updates every registration", rule.class))}
	}
	return []Finding{e.finding(OK, CheckClassName, "", "", fmt.Sprintf("className %q is reconciled", ours), "spire-controller-manager reconciles "+rule.String(), "")}
}

func describeErr(err error) string {
	var status apierrors.APIStatus
	if errors.As(err, &status) && apierrors.IsNotFound(err) {
		return "looked for " + status.Status().Details.Name
	}
	if err == nil {
		return "no error"
	}
	return err.Error()
}
