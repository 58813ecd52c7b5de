package check

import (
	"fmt"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
)

// federation lists the trust domains the webhook's registrations for the checked namespaces
// federate with, and where each comes from: the configuration, a namespace's annotation, or the
// namespace's registration.
func (e *evaluator) federation() (tds []string, from []string) {
	add := func(td, where string) {
		if !slices.Contains(tds, td) {
			tds = append(tds, td)
		}
		if !slices.Contains(from, where) {
			from = append(from, where)
		}
	}
	for _, td := range e.cfg.Registration.FederatesWith {
		add(td, "registration.federatesWith")
	}
	checked := map[string]bool{}
	for _, nd := range e.s.Namespaces {
		if nd.Namespace == nil {
			continue
		}
		checked[identity.Name(nd.Name)] = true
		if v, ok := nd.Namespace.Annotations[annotations.FederatesWithAnnotation]; ok && identity.OptedIn(nd.Namespace.Labels) {
			parsed, _ := annotations.ParseFederatesWith(v)
			for _, td := range parsed {
				add(td, "namespace "+nd.Name)
			}
		}
	}
	for _, r := range e.s.Registrations {
		if identity.IsManaged(r.Labels) && checked[r.Name] {
			for _, td := range r.Spec.FederatesWith {
				add(td, "ClusterSPIFFEID "+r.Name)
			}
		}
	}
	slices.Sort(tds)
	return tds, from
}

// agentSDS checks the names the SPIRE agent's SDS server answers against what Envoy asks for
// (default and ROOTCA). Under SPIRE's defaults ROOTCA is the local trust domain's bundle alone
// (default_bundle_name wins over default_all_bundles_name, pkg/agent/endpoints/sdsv3): meshed
// pods then refuse every federated peer, whatever federatesWith says.
func (e *evaluator) agentSDS() []Finding {
	tds, from := e.federation()
	a := e.s.Agent
	if a == nil {
		if len(tds) == 0 {
			return []Finding{e.finding(OK, CheckAgentSDS, "", "", "no registration federates with another trust domain: SPIRE's default SDS names serve Envoy", "the agent's configuration was not read ("+describeErr(e.s.AgentErr)+")", "")}
		}
		if e.s.AgentErr != nil && !apierrors.IsNotFound(e.s.AgentErr) {
			return []Finding{e.unreadable(CheckAgentSDS, "", "the SPIRE agent's configuration", e.s.AgentErr)}
		}
		return []Finding{e.finding(Warn, CheckAgentSDS, "", "", fmt.Sprintf("registrations federate with %s (%s), and the SPIRE agent's configuration was not found", strings.Join(tds, ", "), strings.Join(from, ", ")),
			"meshed pods trust a federated peer only when the agent serves all bundles as ROOTCA ("+describeErr(e.s.AgentErr)+")",
			"point the check at it: --agent-config NAMESPACE/CONFIGMAP (key "+AgentConfigKey+")")}
	}
	obj := a.Object
	names := fmt.Sprintf("default_svid_name %q, default_bundle_name %q, default_all_bundles_name %q (%s)", a.svidName(), a.bundleName(), a.allBundlesName(), a.Source)
	if a.svidName() != spireDefaultSVIDName {
		return []Finding{e.finding(Fail, CheckAgentSDS, "", obj, fmt.Sprintf("the SPIRE agent's SDS answers default_svid_name %q; Envoy asks for %q", a.svidName(), spireDefaultSVIDName),
			"SPIRE refuses a request naming a resource it does not serve: istio-proxy gets no certificate and stays NotReady",
			"remove agent.sds.default_svid_name from the agent's configuration (or set it to \"default\")")}
	}
	if len(tds) == 0 {
		return []Finding{e.finding(OK, CheckAgentSDS, "", obj, "no registration federates with another trust domain: Envoy's default and ROOTCA are served", names, "")}
	}
	bundle, all := a.bundleName(), a.allBundlesName()
	if bundle == "ROOTCA" || all != "ROOTCA" {
		why := "Envoy validates peers with the ROOTCA secret: "
		if bundle == "ROOTCA" {
			why += "SPIRE answers ROOTCA with the local trust domain's bundle alone (default_bundle_name wins), so meshed pods refuse every peer of " + strings.Join(tds, ", ") + " although the entries federate with them"
		} else {
			why += fmt.Sprintf("ROOTCA is neither the bundle name nor the all-bundles name (%q): SPIRE refuses the request and istio-proxy gets no validation context", all)
		}
		return []Finding{e.finding(Fail, CheckAgentSDS, "", obj, fmt.Sprintf("registrations federate with %s (%s), but the SPIRE agent's SDS serves %s", strings.Join(tds, ", "), strings.Join(from, ", "), names), why,
			"set the agent's sds { default_bundle_name = \"null\", default_all_bundles_name = \"ROOTCA\" } (ZTWIM: a release that writes it, or the SPIRE agent's configuration patched), restart the agents; and run istiod with PILOT_SKIP_VALIDATE_TRUST_DOMAIN=true so that inbound peers of the partner domain pass Istio's own check")}
	}
	return []Finding{e.finding(OK, CheckAgentSDS, "", obj, fmt.Sprintf("registrations federate with %s; the SPIRE agent serves all bundles as ROOTCA", strings.Join(tds, ", ")), names, "")}
}
