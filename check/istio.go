package check

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
)

// The Istio checks: modes the webhook cannot serve (ambient), which control plane (revision) a
// namespace uses, whether that control plane's proxy honours the socket file name, and how istiod
// has JWKS fetched.

// resolveTag maps a revision or revision tag to the revision.
func resolveTag(v string, tags map[string]string) (string, string) {
	if rev, ok := tags[v]; ok && rev != "" {
		return rev, fmt.Sprintf("tag %s of revision %s", v, rev)
	}
	return v, ""
}

// namespaceRevision is the revision whose injector Istio calls for a namespace's pods, by the
// labels its webhooks select on: istio-injection=enabled (the default revision, or the revision
// the "default" tag points at), else istio.io/rev. "" when the namespace does not ask for
// injection.
func namespaceRevision(nsLabels, tags map[string]string) (rev, via string) {
	v, label := "", ""
	switch {
	case nsLabels[IstioInjectionLabel] == "enabled":
		v, label = DefaultRevision, IstioInjectionLabel+"=enabled"
	case nsLabels[IstioRevLabel] != "":
		v, label = nsLabels[IstioRevLabel], IstioRevLabel+"="+nsLabels[IstioRevLabel]
	default:
		return "", ""
	}
	rev, tag := resolveTag(v, tags)
	if tag != "" {
		label += ", " + tag
	}
	return rev, "label " + label
}

// podRevision is the revision a pod names: Istio's injector writes istio.io/rev on every pod it
// injects, and a pod may ask for a revision with the same label.
func podRevision(podLabels, tags map[string]string) (rev, via string, ok bool) {
	v := podLabels[IstioRevLabel]
	if v == "" {
		return "", "", false
	}
	rev, tag := resolveTag(v, tags)
	via = "label " + IstioRevLabel + "=" + v
	if tag != "" {
		via += ", " + tag
	}
	return rev, via, true
}

// hasSidecar reports whether Istio injected a proxy into the pod.
func (e *evaluator) hasSidecar(p *corev1.Pod) bool {
	if _, ok := p.Annotations[IstioSidecarStatusAnnotation]; ok {
		return true
	}
	_, _, ok := mutators.FindContainer(p, e.cfg.Istio.ProxyContainerName)
	return ok
}

// podAmbient is Istio's ambient enrollment (istio-cni's enablement selector): the pod's label, or
// its namespace's unless the pod says none; a pod with a sidecar is never enrolled.
func (e *evaluator) podAmbient(p *corev1.Pod, nsAmbient bool) bool {
	if e.hasSidecar(p) {
		return false
	}
	mode := p.Labels[IstioDataplaneModeLabel]
	return mode == "ambient" || (nsAmbient && mode != "none")
}

func livePod(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// ambientWhy is why ambient mode and SPIRE do not mix today.
const ambientWhy = "in ambient mode ztunnel, not a sidecar, carries the pod's mesh traffic, and ztunnel takes its certificates only from istiod's CA: the pod's mesh identity is Istio's, not SPIRE's, whatever the webhook mounts (SPIRE support in ztunnel is not merged: istio/ztunnel#1676)"

func (e *evaluator) istioMode(nd *NamespaceData) []Finding {
	ns := nd.Name
	nsLabels := nd.Namespace.Labels
	nsAmbient := nsLabels[IstioDataplaneModeLabel] == "ambient"
	var ambient, sidecars []string
	live, unlabelled := 0, 0
	used := map[string][]string{}
	if rev, via := namespaceRevision(nsLabels, e.s.IstioTags); rev != "" {
		used[rev] = append(used[rev], "namespace "+via)
	}
	for i := range nd.Pods {
		p := &nd.Pods[i]
		if !livePod(p) {
			continue
		}
		live++
		if e.podAmbient(p, nsAmbient) {
			ambient = append(ambient, p.Name)
		}
		if e.hasSidecar(p) {
			sidecars = append(sidecars, p.Name)
			// Istio's injector labels every pod it injects with its revision; a sidecar without
			// the label came from elsewhere (istioctl kube-inject, a manifest): no revision to read.
			if rev, via, ok := podRevision(p.Labels, e.s.IstioTags); ok && !slices.Contains(used[rev], "pods: "+via) {
				used[rev] = append(used[rev], "pods: "+via)
			} else if !ok {
				unlabelled++
			}
		}
	}
	fix := fmt.Sprintf("use sidecar injection for this namespace: remove %s=ambient from the namespace (and pods), label it %s=enabled or %s=<revision>, and restart its workloads", IstioDataplaneModeLabel, IstioInjectionLabel, IstioRevLabel)
	switch {
	case len(ambient) > 0:
		what := fmt.Sprintf("%d pod(s) in Istio's ambient mode: %s", len(ambient), strings.Join(ambient, ", "))
		if nsAmbient {
			what = fmt.Sprintf("namespace %s is in Istio's ambient mode (label %s=ambient): %s", ns, IstioDataplaneModeLabel, what)
		}
		return []Finding{e.finding(Fail, CheckIstioMode, ns, "Namespace/"+ns, what, ambientWhy, fix)}
	case nsAmbient && live == 0:
		return []Finding{e.finding(Fail, CheckIstioMode, ns, "Namespace/"+ns, fmt.Sprintf("namespace %s is in Istio's ambient mode (label %s=ambient): its pods without a sidecar will be", ns, IstioDataplaneModeLabel), ambientWhy, fix)}
	case nsAmbient:
		return []Finding{e.finding(Warn, CheckIstioMode, ns, "Namespace/"+ns, fmt.Sprintf("namespace %s is labelled %s=ambient, but no running pod is captured (%d with a sidecar, %d labelled %s=none)", ns, IstioDataplaneModeLabel, len(sidecars), live-len(sidecars), IstioDataplaneModeLabel),
			"Istio keeps a pod with a sidecar in sidecar mode; a pod created without one (and not labelled none) would be captured by ztunnel, whose identity comes from istiod's CA, not SPIRE", fix)}
	}
	var out []Finding
	var parts []string
	for _, rev := range slices.Sorted(maps.Keys(used)) {
		r := e.s.IstioRevisions[rev]
		desc := fmt.Sprintf("revision %s (%s)", rev, strings.Join(used[rev], "; "))
		if r == nil {
			parts = append(parts, desc)
			continue
		}
		if r.Mesh != nil {
			desc += ", mesh config " + r.Mesh.Source
		}
		parts = append(parts, desc)
		if apierrors.IsNotFound(r.InjectorErr) && apierrors.IsNotFound(r.MeshErr) {
			istioNS := e.o.IstioMeshConfig.Namespace
			out = append(out, e.finding(Warn, CheckIstioMode, ns, "Namespace/"+ns,
				fmt.Sprintf("namespace %s uses Istio %s, but neither ConfigMap %s nor %s exists in %s", ns, desc, revisionName("istio", rev), revisionName("istio-sidecar-injector", rev), istioNS),
				"no control plane of that revision is installed there: Istio injects no proxy, so the webhook wires the pods as plain workloads, and the check cannot read that revision's trust domain, socket file or version",
				"install that revision, or label the namespace for an installed one (kubectl get mutatingwebhookconfigurations -l istio.io/rev --show-labels)"))
		}
	}
	if len(out) > 0 {
		return out
	}
	if unlabelled > 0 {
		parts = append(parts, fmt.Sprintf("%d pod(s) with a sidecar but no %s label (not injected by an Istio webhook of this cluster)", unlabelled, IstioRevLabel))
	}
	what := "sidecar mode: " + strings.Join(parts, "; ")
	if len(parts) == 0 {
		what = "no Istio injection asked for (no " + IstioInjectionLabel + " or " + IstioRevLabel + " label, no pod with a sidecar), no ambient mode"
	}
	return []Finding{e.finding(OK, CheckIstioMode, ns, "", what, "", "")}
}

// istioVersion is major.minor.patch read from the start of an image tag or version label.
type istioVersion struct{ major, minor, patch int }

var versionRE = regexp.MustCompile(`^v?(\d+)\.(\d+)\.(\d+)`)

func parseIstioVersion(s string) (istioVersion, bool) {
	m := versionRE.FindStringSubmatch(s)
	if m == nil {
		return istioVersion{}, false
	}
	a, _ := strconv.Atoi(m[1])
	b, _ := strconv.Atoi(m[2])
	c, _ := strconv.Atoi(m[3])
	return istioVersion{a, b, c}, true
}

func (v istioVersion) String() string { return fmt.Sprintf("%d.%d.%d", v.major, v.minor, v.patch) }

// honoursSocketFile reports whether pilot-agent writes WORKLOAD_IDENTITY_SOCKET_FILE into Envoy's
// bootstrap: the variable exists since 1.23.0, and the bootstrap follows it since istio#55047,
// released in 1.23.6, 1.24.4 and 1.25.0 (OSSM 3.0.1; OSSM 3.0.0 is Istio 1.24.3).
func (v istioVersion) honoursSocketFile() bool {
	switch {
	case v.major != 1:
		return v.major > 1
	case v.minor >= 25:
		return true
	case v.minor == 24:
		return v.patch >= 4
	case v.minor == 23:
		return v.patch >= 6
	}
	return false
}

// imageTag is the tag of an image reference ("" for a digest or no tag).
func imageTag(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		return ""
	}
	return ref[i+1:]
}

// proxyVersionOf reads the proxy's version from the injector's values (the proxy image, or the
// global tag), else from istiod's image or its version label.
func proxyVersionOf(r *IstioRevision) (istioVersion, string, bool) {
	var cands [][2]string
	if inj := r.Injector; inj != nil {
		if strings.Contains(inj.ProxyImage, "/") {
			cands = append(cands, [2]string{imageTag(inj.ProxyImage), "values.global.proxy.image " + inj.ProxyImage + " in " + inj.Source})
		}
		cands = append(cands, [2]string{inj.Tag, "values.global.tag " + inj.Tag + " in " + inj.Source})
	}
	if d := r.Istiod; d != nil {
		cands = append(cands, [2]string{imageTag(d.Image), "istiod's image " + d.Image + " (" + d.Source + ")"},
			[2]string{d.Version, "label app.kubernetes.io/version=" + d.Version + " on " + d.Source})
	}
	for _, c := range cands {
		if v, ok := parseIstioVersion(c[0]); ok {
			return v, c[1], true
		}
	}
	return istioVersion{}, "", false
}

func (e *evaluator) revisionsSorted() []*IstioRevision {
	var out []*IstioRevision
	for _, name := range slices.Sorted(maps.Keys(e.s.IstioRevisions)) {
		if name == DefaultRevision {
			out = append([]*IstioRevision{e.s.IstioRevisions[name]}, out...)
			continue
		}
		out = append(out, e.s.IstioRevisions[name])
	}
	return out
}

func (e *evaluator) proxyVersion() []Finding {
	socket := e.cfg.SocketFileName
	var out []Finding
	for _, r := range e.revisionsSorted() {
		obj := "ConfigMap/" + e.o.IstioMeshConfig.Namespace + "/" + revisionName("istio-sidecar-injector", r.Name)
		absent := apierrors.IsNotFound(r.InjectorErr) && (r.Istiod == nil && apierrors.IsNotFound(r.IstiodErr))
		if r.Name == DefaultRevision && len(r.Used) == 0 && absent {
			continue
		}
		v, src, ok := proxyVersionOf(r)
		switch {
		case !ok && r.InjectorErr != nil && !apierrors.IsNotFound(r.InjectorErr):
			out = append(out, e.unreadable(CheckProxyVersion, "", obj, r.InjectorErr))
		case !ok && absent:
			out = append(out, e.finding(Warn, CheckProxyVersion, "", obj, fmt.Sprintf("Istio revision %s is used (%s), but neither its injector ConfigMap nor Deployment %s exists in %s", r.Name, strings.Join(r.Used, "; "), revisionName("istiod", r.Name), e.o.IstioMeshConfig.Namespace),
				"the proxy's version cannot be read", "check the revision's name: kubectl get mutatingwebhookconfigurations -l istio.io/rev --show-labels"))
		case !ok:
			out = append(out, e.finding(Warn, CheckProxyVersion, "", obj, fmt.Sprintf("cannot tell the version of Istio revision %s's proxy (images by digest, no version label)", r.Name),
				fmt.Sprintf("with socketFileName %s, Istio 1.23.6, 1.24.4 or 1.25.0 and later (OSSM 3.0.1 and later) are needed", socket),
				"confirm the version: istioctl version, or oc get istio -o jsonpath='{.items[*].spec.version}'"))
		case socket == config.IstioDefaultSocketFileName:
			out = append(out, e.finding(OK, CheckProxyVersion, "", obj, fmt.Sprintf("Istio revision %s runs proxy %s; socketFileName is Istio's default (%s)", r.Name, v, socket), "from "+src, ""))
		case !v.honoursSocketFile():
			out = append(out, e.finding(Fail, CheckProxyVersion, "", obj, fmt.Sprintf("Istio revision %s runs proxy %s, older than 1.23.6 / 1.24.4 / 1.25.0, with socketFileName %s", r.Name, v, socket),
				fmt.Sprintf("before istio#55047 pilot-agent finds %s but writes Envoy's bootstrap for the default file name socket: Envoy dials a socket that does not exist, gets no certificates, and the proxies stay NotReady (read from %s)", socket, src),
				"upgrade Istio to 1.24.4 or later (or 1.23.6, or 1.25.0 and later): OpenShift Service Mesh 3.0.1 or later"))
		default:
			out = append(out, e.finding(OK, CheckProxyVersion, "", obj, fmt.Sprintf("Istio revision %s runs proxy %s, which honours socketFileName %s", r.Name, v, socket), "from "+src, ""))
		}
	}
	if len(out) == 0 {
		return []Finding{e.finding(OK, CheckProxyVersion, "", "", fmt.Sprintf("no Istio control plane found (ConfigMap %s/istio-sidecar-injector and Deployment istiod not found): no proxy to compare", e.o.IstioMeshConfig.Namespace), "", "")}
	}
	return out
}

// jwksMode is istiod's PILOT_JWT_ENABLE_REMOTE_JWKS as Istio reads it (pkg/jwt
// ConvertToJwksFetchMode): istiod/false (and anything unknown) istiod; hybrid/true Envoy for hosts
// in Istio's registry; envoy Envoy always.
func jwksMode(v string) string {
	switch v {
	case "hybrid", "true":
		return "hybrid"
	case "envoy":
		return "envoy"
	}
	return "istiod"
}

// clusterServiceHost reports whether host is a Service's in-cluster name as Istio's registry keys
// it: <service>.<namespace>.svc.<cluster domain>.
func (e *evaluator) clusterServiceHost(host string) bool {
	rest, ok := strings.CutSuffix(host, ".svc."+e.cfg.ClusterDomain)
	return ok && strings.Count(rest, ".") == 1
}

// tlsOrigination finds a DestinationRule that has Envoy originate TLS to host:port.
func (e *evaluator) tlsOrigination(host string, port int64) string {
	for _, dr := range e.s.DestinationRules {
		h := dr.Host
		switch strings.Count(h, ".") {
		case 0:
			h += "." + dr.Namespace + ".svc." + e.cfg.ClusterDomain
		case 1:
			h += ".svc." + e.cfg.ClusterDomain
		}
		if h != host && !(strings.HasPrefix(h, "*") && strings.HasSuffix(host, strings.TrimPrefix(h, "*"))) {
			continue
		}
		mode := dr.TLSMode
		if m, ok := dr.PortTLSModes[port]; ok {
			mode = m
		}
		if mode == "SIMPLE" || mode == "MUTUAL" {
			return dr.Namespace + "/" + dr.Name
		}
	}
	return ""
}

// namespaceRevisionOrDefault is the revision whose istiod configures the namespace's proxies.
func (e *evaluator) namespaceRevisionOrDefault(nd *NamespaceData) string {
	if rev, _ := namespaceRevision(nd.Namespace.Labels, e.s.IstioTags); rev != "" {
		return rev
	}
	for i := range nd.Pods {
		if rev, _, ok := podRevision(nd.Pods[i].Labels, e.s.IstioTags); ok {
			return rev
		}
	}
	return DefaultRevision
}

func (e *evaluator) jwksFetch(nd *NamespaceData) []Finding {
	ns := nd.Name
	switch err := nd.RequestAuthErr; {
	case errors.Is(err, errNotInstalled):
		return []Finding{e.finding(OK, CheckJWKSFetch, ns, "", "Istio's RequestAuthentication CRD is not installed: nothing fetches JWKS", "", "")}
	case err != nil:
		return []Finding{e.unreadable(CheckJWKSFetch, ns, "RequestAuthentications", err)}
	}
	type fetch struct {
		ra   string
		rule JWTRule
	}
	var fetches []fetch
	for _, ra := range nd.RequestAuthentications {
		for _, rule := range ra.Rules {
			if !rule.InlineJWKS {
				fetches = append(fetches, fetch{ra.Namespace + "/" + ra.Name, rule})
			}
		}
	}
	if len(fetches) == 0 {
		return []Finding{e.finding(OK, CheckJWKSFetch, ns, "", "no RequestAuthentication here or in "+e.o.IstioRootNamespace+" fetches JWKS", "", "")}
	}
	rev := e.namespaceRevisionOrDefault(nd)
	r := e.s.IstioRevisions[rev]
	istiodObj := "Deployment/" + e.o.IstioMeshConfig.Namespace + "/" + revisionName("istiod", rev)
	switch {
	case r == nil || (r.Istiod == nil && apierrors.IsNotFound(r.IstiodErr)):
		return []Finding{e.finding(Warn, CheckJWKSFetch, ns, istiodObj, fmt.Sprintf("cannot tell who fetches JWKS for %d jwtRule(s): %s not found", len(fetches), istiodObj),
			"istiod's "+IstioJWKSModeEnv+" decides whether istiod or Envoy fetches them", "point the check at Istio's namespace with --istio-config NAMESPACE/istio")}
	case r.Istiod == nil:
		return []Finding{e.unreadable(CheckJWKSFetch, ns, istiodObj, r.IstiodErr)}
	case r.Istiod.JWKSModeFrom != "":
		return []Finding{e.finding(Warn, CheckJWKSFetch, ns, istiodObj, fmt.Sprintf("%s on %s comes from %s: cannot tell who fetches JWKS", IstioJWKSModeEnv, istiodObj, r.Istiod.JWKSModeFrom), "", "set it as a literal in the Istio resource (values.pilot.env)")}
	}
	mode := jwksMode(r.Istiod.JWKSMode)
	modeDesc := fmt.Sprintf("%s=%q on %s", IstioJWKSModeEnv, r.Istiod.JWKSMode, istiodObj)
	caObj := revisionName("pilot-jwks-extra-cacerts", rev)
	istiodFix := fmt.Sprintf("let istiod fetch: %s \"false\" (or unset) in the Istio resource's values.pilot.env, and the CA that signs the provider's certificate (OpenShift: the service CA, not the provider's own certificate) in values.pilot.jwksResolverExtraRootCA", IstioJWKSModeEnv)
	var out []Finding
	var oks []string
	for _, f := range fetches {
		uri, what := f.rule.JwksURI, "jwksUri"
		if uri == "" {
			// Without jwksUri istiod reads the issuer's OpenID discovery document, whatever the mode.
			uri, what = strings.TrimSuffix(f.rule.Issuer, "/")+"/.well-known/openid-configuration", "issuer discovery"
		}
		subject := fmt.Sprintf("RequestAuthentication %s, issuer %s: %s %s", f.ra, f.rule.Issuer, what, uri)
		u, err := url.Parse(uri)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
			out = append(out, e.finding(Fail, CheckJWKSFetch, ns, "RequestAuthentication/"+f.ra, subject+": not an http or https URL",
				"Istio fetches keys only over http and https: every token is refused", "correct the jwksUri"))
			continue
		}
		port := int64(80)
		if u.Scheme == "https" {
			port = 443
		}
		if p := u.Port(); p != "" {
			port, _ = strconv.ParseInt(p, 10, 64)
		}
		inCluster := e.clusterServiceHost(u.Hostname())
		envoy := f.rule.JwksURI != "" && (mode == "envoy" || (mode == "hybrid" && inCluster))
		switch {
		case envoy && !inCluster:
			out = append(out, e.finding(Warn, CheckJWKSFetch, ns, "RequestAuthentication/"+f.ra, subject+": Envoy fetches it ("+modeDesc+"), and the host is not a Service's in-cluster name",
				"in envoy mode Istio points Envoy at a cluster for the host; unless a ServiceEntry registers it, there is none, the fetch fails and every token is refused", "add a ServiceEntry for the host, or "+istiodFix))
		case envoy && u.Scheme == "https":
			if dr := e.tlsOrigination(u.Hostname(), port); dr != "" {
				out = append(out, e.finding(Warn, CheckJWKSFetch, ns, "RequestAuthentication/"+f.ra, subject+": Envoy fetches it ("+modeDesc+") over the TLS DestinationRule "+dr+" originates",
					"this works only if istio-proxy trusts the provider's CA through that DestinationRule (caCertificates mounted in the proxy, or credentialName configmap://); the check cannot confirm it", istiodFix))
				continue
			}
			out = append(out, e.finding(Fail, CheckJWKSFetch, ns, "RequestAuthentication/"+f.ra, subject+": Envoy fetches it ("+modeDesc+") through the Service's outbound cluster, and nothing originates TLS",
				"Istio adds no TLS for a JWKS cluster and jwksResolverExtraRootCA is istiod's only: Envoy sends plain HTTP to the provider's TLS port (a provider without a sidecar), the fetch fails (Jwks remote fetch is failed) and every token is refused with 401", istiodFix))
		case envoy:
			oks = append(oks, subject+": Envoy fetches it over plain HTTP")
		case u.Scheme == "https" && inCluster && r.JWKSExtraRootCAErr != nil:
			out = append(out, e.unreadable(CheckJWKSFetch, ns, "ConfigMap/"+e.o.IstioMeshConfig.Namespace+"/"+caObj, r.JWKSExtraRootCAErr))
		case u.Scheme == "https" && inCluster && !r.JWKSExtraRootCA:
			out = append(out, e.finding(Warn, CheckJWKSFetch, ns, "RequestAuthentication/"+f.ra, subject+": istiod fetches it ("+modeDesc+") with the system's roots only (no ConfigMap "+caObj+")",
				"an in-cluster certificate (OpenShift's service CA signs the SPIRE OIDC provider's) is refused unless jwksResolverExtraRootCA holds its CA: istiod then gives Envoy a key nobody holds and every token is refused",
				"set values.pilot.jwksResolverExtraRootCA to the CA that signs the provider's certificate (OpenShift: the service CA bundle)"))
		case u.Scheme == "https" && inCluster:
			oks = append(oks, subject+": istiod fetches it, trusting jwksResolverExtraRootCA ("+caObj+")")
		default:
			oks = append(oks, subject+": istiod fetches it ("+u.Scheme+", "+map[bool]string{true: "in-cluster", false: "external, system roots"}[inCluster]+")")
		}
	}
	if len(out) > 0 {
		return out
	}
	return []Finding{e.finding(OK, CheckJWKSFetch, ns, "", strings.Join(oks, "; "), modeDesc, "")}
}
