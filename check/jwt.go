package check

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
)

// The JWT-SVID check of one namespace: requested audiences against what the mesh accepts.

func (e *evaluator) jwtAudience(nd *NamespaceData, ps podSet) []Finding {
	ns := nd.Name
	requested := map[string][]string{}
	for _, p := range ps.wired {
		for _, a := range ps.statuses[p].Audiences {
			requested[a] = append(requested[a], p.Name)
		}
	}
	if len(requested) == 0 {
		return nil
	}
	auds := slices.Sorted(maps.Keys(requested))
	where := ns
	if ns != e.o.IstioRootNamespace {
		where += " or " + e.o.IstioRootNamespace
	}
	switch err := nd.RequestAuthErr; {
	case errors.Is(err, errNotInstalled):
		return []Finding{e.finding(OK, CheckJWTAudience, ns, "", fmt.Sprintf("pods request JWT-SVIDs for %s; Istio's RequestAuthentication CRD is not installed", strings.Join(auds, ", ")),
			"nothing in the mesh validates JWTs here: not compared", "")}
	case err != nil:
		return []Finding{e.unreadable(CheckJWTAudience, ns, "RequestAuthentications in "+where, err)}
	}
	if len(nd.RequestAuthentications) == 0 {
		return []Finding{e.finding(OK, CheckJWTAudience, ns, "", fmt.Sprintf("pods request JWT-SVIDs for %s; no RequestAuthentication in %s", strings.Join(auds, ", "), where),
			"the tokens are for services elsewhere: not compared", "")}
	}
	accepted := map[string]bool{}
	var names []string
	for _, ra := range nd.RequestAuthentications {
		names = append(names, ra.Namespace+"/"+ra.Name)
		for _, rule := range ra.Rules {
			if len(rule.Audiences) == 0 {
				return []Finding{e.finding(OK, CheckJWTAudience, ns, "RequestAuthentication/"+ra.Namespace+"/"+ra.Name,
					fmt.Sprintf("pods request JWT-SVIDs for %s; RequestAuthentication %s/%s accepts any audience", strings.Join(auds, ", "), ra.Namespace, ra.Name), "", "")}
			}
			for _, a := range rule.Audiences {
				accepted[a] = true
			}
		}
	}
	var out []Finding
	for _, a := range auds {
		if accepted[a] {
			continue
		}
		out = append(out, e.finding(Warn, CheckJWTAudience, ns, "",
			fmt.Sprintf("pod(s) %s request JWT-SVIDs for audience %q, which no RequestAuthentication in %s accepts (%s accept %s)", strings.Join(requested[a], ", "), a, where, strings.Join(names, ", "), strings.Join(slices.Sorted(maps.Keys(accepted)), ", ")),
			"a token for this audience sent to a service here is refused (401 Audiences in Jwt are not allowed); fine if the audience is a service in another namespace or outside the mesh",
			fmt.Sprintf("add %q to the audiences of the RequestAuthentication of the service the tokens are for, or correct the pods' %s annotation", a, annotations.AudienceAnnotation)))
	}
	if len(out) > 0 {
		return out
	}
	return []Finding{e.finding(OK, CheckJWTAudience, ns, "", fmt.Sprintf("every requested audience (%s) is accepted by a RequestAuthentication in %s", strings.Join(auds, ", "), where), "", "")}
}
