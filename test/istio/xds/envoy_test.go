package xds

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacpb "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	jwtauthn "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherpb "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/simulation"
	"istio.io/istio/pilot/test/xdstest"
	"istio.io/istio/pkg/util/protomarshal"
)

// This file reads the configuration Istio generates the way Envoy acts on it. Which listener,
// filter chain, virtual host and route a request reaches is decided by Istio's own traffic
// simulation; what Envoy's filters then do with the request is evaluated here, for the parts of
// Envoy's semantics the reference configurations use. Anything else fails the test rather than
// being guessed.

// Filter names, as Envoy registers them.
const (
	rbacFilter     = "envoy.filters.http.rbac"
	jwtAuthnFilter = "envoy.filters.http.jwt_authn"
	extAuthzFilter = "envoy.filters.http.ext_authz"
)

// hop is where one request lands in a proxy's configuration.
type hop struct {
	Chain *listener.FilterChain
	HCM   *hcm.HttpConnectionManager
	// Routes, Vhost and Route are where an outbound request is routed (nil for an inbound hop).
	Routes  *route.RouteConfiguration
	Vhost   *route.VirtualHost
	Route   *route.Route
	Cluster string
}

// inbound is where an HTTP request to port of proxy's pod lands, over mutual TLS with a SPIFFE
// certificate (tls is simulation.MTLS) or in plain text (simulation.Plaintext).
func (m *mesh) inbound(t *testing.T, proxy *model.Proxy, port int, tls simulation.TLSMode) (hop, error) {
	t.Helper()
	sim := simulation.NewSimulation(t, m.server, proxy)
	res := sim.Run(simulation.Call{
		Address:  proxy.IPAddresses[0],
		Port:     port,
		Protocol: simulation.HTTP,
		TLS:      tls,
		CallMode: simulation.CallModeInbound,
	})
	if res.Error != nil {
		return hop{}, res.Error
	}
	fc := xdstest.ExtractFilterChain(res.FilterChainMatched, xdstest.ExtractListener(res.ListenerMatched, sim.Listeners))
	return hop{Chain: fc, HCM: xdstest.ExtractHTTPConnectionManager(t, fc), Cluster: res.ClusterMatched}, nil
}

// outbound is where proxy's workload's plain HTTP request to host (its Host header) at
// address:port lands: Envoy's outbound listener, filter chain, virtual host and route. An empty
// address is one the mesh does not know, as a Service's cluster IP is to the simulation.
func (m *mesh) outbound(t *testing.T, proxy *model.Proxy, host, address string, port int, protocol simulation.Protocol) hop {
	t.Helper()
	sim := simulation.NewSimulation(t, m.server, proxy)
	res := sim.Run(simulation.Call{
		Address:    address,
		Port:       port,
		Protocol:   protocol,
		HostHeader: host,
		CallMode:   simulation.CallModeOutbound,
	})
	if res.Error != nil {
		t.Fatalf("a request from %s to %s (%s:%d) lands nowhere: %v", proxy.ID, host, address, port, res.Error)
	}
	fc := xdstest.ExtractFilterChain(res.FilterChainMatched, xdstest.ExtractListener(res.ListenerMatched, sim.Listeners))
	h := hop{Chain: fc, HCM: xdstest.ExtractHTTPConnectionManager(t, fc), Cluster: res.ClusterMatched}
	h.Routes = xdstest.ExtractRouteConfigurations(sim.Routes)[res.RouteConfigMatched]
	for _, vh := range h.Routes.GetVirtualHosts() {
		if vh.Name == res.VirtualHostMatched {
			h.Vhost = vh
			for _, r := range vh.Routes {
				if r.Name == res.RouteMatched {
					h.Route = r
				}
			}
		}
	}
	if h.Vhost == nil || h.Route == nil {
		t.Fatalf("route %q of virtual host %q not found in route configuration %q", res.RouteMatched, res.VirtualHostMatched, res.RouteConfigMatched)
	}
	return h
}

// httpFilters are the HTTP filters of h's connection manager with the given name, decoded.
func httpFilters[T proto.Message](t *testing.T, h hop, name string, into func() T) []T {
	t.Helper()
	var out []T
	for _, f := range h.HCM.GetHttpFilters() {
		if f.Name == name {
			v := into()
			if err := f.GetTypedConfig().UnmarshalTo(v); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			out = append(out, v)
		}
	}
	return out
}

// downstreamTLS is the TLS context Envoy terminates a filter chain's connections with.
func downstreamTLS(t *testing.T, fc *listener.FilterChain) *tlsv3.DownstreamTlsContext {
	t.Helper()
	if fc.GetTransportSocket() == nil {
		return nil
	}
	return xdstest.UnmarshalAny[tlsv3.DownstreamTlsContext](t, fc.GetTransportSocket().GetTypedConfig())
}

// endpoints are the endpoints istiod sends proxy for cluster over EDS.
func (m *mesh) endpoints(t *testing.T, proxy *model.Proxy, cluster string) []*endpoint.LbEndpoint {
	t.Helper()
	var out []*endpoint.LbEndpoint
	for _, cla := range m.server.Endpoints(proxy) {
		if cla.GetClusterName() == cluster {
			for _, l := range cla.GetEndpoints() {
				out = append(out, l.GetLbEndpoints()...)
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("istiod sends %s no endpoints for %s", proxy.ID, cluster)
	}
	return out
}

// transportSocketFor is the transport socket Envoy's cluster c uses towards endpoint ep: the first
// transport_socket_matches entry whose criteria ep's envoy.transport_socket_match metadata
// satisfies, else the cluster's transport_socket.
func transportSocketFor(c *cluster.Cluster, ep *endpoint.LbEndpoint) *core.TransportSocket {
	meta := ep.GetMetadata().GetFilterMetadata()["envoy.transport_socket_match"].GetFields()
	for _, m := range c.GetTransportSocketMatches() {
		ok := true
		for k, v := range m.GetMatch().GetFields() {
			if meta[k].GetStringValue() != v.GetStringValue() {
				ok = false
			}
		}
		if ok {
			return m.GetTransportSocket()
		}
	}
	return c.GetTransportSocket()
}

// request is what Envoy's HTTP filters see of one inbound request, as far as the reference
// policies look at it.
type request struct {
	// Peer is the SPIFFE ID in the client certificate's URI SAN ("" without mutual TLS).
	Peer   string
	Method string
	Path   string
	// JWT is the payload of a token in the Authorization header whose signature jwt_authn
	// verified (nil without one).
	JWT map[string]any
}

// dynamicMetadata is what Envoy's filters before RBAC leave in the request's dynamic metadata for
// r: jwt_authn stores a token's payload under the filter's name, at the key its provider names
// (payload_in_metadata), when the token is from the provider's issuer and for one of its
// audiences.
func dynamicMetadata(t *testing.T, h hop, r request) map[string]*structpb.Struct {
	t.Helper()
	out := map[string]*structpb.Struct{}
	if r.JWT == nil {
		return out
	}
	for _, cfg := range httpFilters(t, h, jwtAuthnFilter, func() *jwtauthn.JwtAuthentication { return &jwtauthn.JwtAuthentication{} }) {
		for _, p := range cfg.GetProviders() {
			if p.GetIssuer() != r.JWT["iss"] || !audienceAllowed(p.GetAudiences(), r.JWT["aud"]) {
				continue
			}
			payload, err := structpb.NewStruct(r.JWT)
			if err != nil {
				t.Fatal(err)
			}
			out[jwtAuthnFilter] = &structpb.Struct{Fields: map[string]*structpb.Value{p.GetPayloadInMetadata(): structpb.NewStructValue(payload)}}
		}
	}
	return out
}

func audienceAllowed(allowed []string, aud any) bool {
	if len(allowed) == 0 {
		return true
	}
	switch a := aud.(type) {
	case string:
		return slices.Contains(allowed, a)
	case []any:
		for _, x := range a {
			if s, ok := x.(string); ok && slices.Contains(allowed, s) {
				return true
			}
		}
	}
	return false
}

// rbacPolicy is the RBAC policy Istio generated from one AuthorizationPolicy rule, found in the
// enforcing (rules) or shadow (shadow_rules) part of h's RBAC filters, with the filter's action.
func rbacPolicy(t *testing.T, h hop, name string) (*rbacpb.Policy, rbacpb.RBAC_Action, bool) {
	t.Helper()
	for _, f := range httpFilters(t, h, rbacFilter, func() *rbachttp.RBAC { return &rbachttp.RBAC{} }) {
		for _, rules := range []*rbacpb.RBAC{f.GetRules(), f.GetShadowRules()} {
			if p, ok := rules.GetPolicies()[name]; ok {
				return p, rules.GetAction(), true
			}
		}
	}
	return nil, 0, false
}

// rbacPolicyNames lists every RBAC policy in h's RBAC filters.
func rbacPolicyNames(t *testing.T, h hop) []string {
	t.Helper()
	var out []string
	for _, f := range httpFilters(t, h, rbacFilter, func() *rbachttp.RBAC { return &rbachttp.RBAC{} }) {
		for _, rules := range []*rbacpb.RBAC{f.GetRules(), f.GetShadowRules()} {
			for n := range rules.GetPolicies() {
				out = append(out, n)
			}
		}
	}
	slices.Sort(out)
	return out
}

// allowFilters are h's enforcing RBAC filters with action ALLOW.
func allowFilters(t *testing.T, h hop) []*rbacpb.RBAC {
	t.Helper()
	var out []*rbacpb.RBAC
	for _, f := range httpFilters(t, h, rbacFilter, func() *rbachttp.RBAC { return &rbachttp.RBAC{} }) {
		if f.GetRules() != nil && f.GetRules().GetAction() == rbacpb.RBAC_ALLOW {
			out = append(out, f.GetRules())
		}
	}
	return out
}

// policyMatches is Envoy's RBAC matching of one policy: some permission and some principal
// match the request.
func policyMatches(t *testing.T, p *rbacpb.Policy, r request, meta map[string]*structpb.Struct) bool {
	t.Helper()
	if p.GetCondition() != nil || p.GetCelConfig() != nil {
		t.Fatalf("RBAC policy with a CEL condition: not evaluated here")
	}
	return slices.ContainsFunc(p.GetPermissions(), func(x *rbacpb.Permission) bool { return permissionMatches(t, x, r) }) &&
		slices.ContainsFunc(p.GetPrincipals(), func(x *rbacpb.Principal) bool { return principalMatches(t, x, r, meta) })
}

func principalMatches(t *testing.T, p *rbacpb.Principal, r request, meta map[string]*structpb.Struct) bool {
	t.Helper()
	switch id := p.GetIdentifier().(type) {
	case *rbacpb.Principal_Any:
		return id.Any
	case *rbacpb.Principal_AndIds:
		for _, x := range id.AndIds.GetIds() {
			if !principalMatches(t, x, r, meta) {
				return false
			}
		}
		return true
	case *rbacpb.Principal_OrIds:
		return slices.ContainsFunc(id.OrIds.GetIds(), func(x *rbacpb.Principal) bool { return principalMatches(t, x, r, meta) })
	case *rbacpb.Principal_NotId:
		return !principalMatches(t, id.NotId, r, meta)
	case *rbacpb.Principal_Authenticated_:
		// The URI SAN of the peer's certificate; no match without mutual TLS.
		if r.Peer == "" {
			return false
		}
		return id.Authenticated.GetPrincipalName() == nil || stringMatches(t, id.Authenticated.GetPrincipalName(), r.Peer)
	case *rbacpb.Principal_Metadata:
		//lint:ignore SA1019 Istio generates request principals and JWT claims as metadata principals.
		return metadataMatches(t, id.Metadata, meta)
	}
	t.Fatalf("RBAC principal %s: not evaluated here", jsonOf(p))
	return false
}

func permissionMatches(t *testing.T, p *rbacpb.Permission, r request) bool {
	t.Helper()
	switch rule := p.GetRule().(type) {
	case *rbacpb.Permission_Any:
		return rule.Any
	case *rbacpb.Permission_AndRules:
		for _, x := range rule.AndRules.GetRules() {
			if !permissionMatches(t, x, r) {
				return false
			}
		}
		return true
	case *rbacpb.Permission_OrRules:
		return slices.ContainsFunc(rule.OrRules.GetRules(), func(x *rbacpb.Permission) bool { return permissionMatches(t, x, r) })
	case *rbacpb.Permission_NotRule:
		return !permissionMatches(t, rule.NotRule, r)
	case *rbacpb.Permission_UrlPath:
		return stringMatches(t, rule.UrlPath.GetPath(), strings.SplitN(r.Path, "?", 2)[0])
	case *rbacpb.Permission_Header:
		if rule.Header.GetName() != ":method" {
			break
		}
		m := rule.Header.GetStringMatch()
		if m == nil {
			t.Fatalf("RBAC header matcher %s: not evaluated here", jsonOf(rule.Header))
		}
		return stringMatches(t, m, r.Method) != rule.Header.GetInvertMatch()
	}
	t.Fatalf("RBAC permission %s: not evaluated here", jsonOf(p))
	return false
}

// metadataMatches is Envoy's MetadataMatcher: the value at filter/path in the dynamic metadata.
func metadataMatches(t *testing.T, m *matcherpb.MetadataMatcher, meta map[string]*structpb.Struct) bool {
	t.Helper()
	v := structpb.NewStructValue(meta[m.GetFilter()])
	if meta[m.GetFilter()] == nil {
		v = nil
	}
	for _, seg := range m.GetPath() {
		if v.GetStructValue() == nil {
			v = nil
			break
		}
		v = v.GetStructValue().GetFields()[seg.GetKey()]
	}
	return valueMatches(t, m.GetValue(), v) != m.GetInvert()
}

func valueMatches(t *testing.T, m *matcherpb.ValueMatcher, v *structpb.Value) bool {
	t.Helper()
	switch p := m.GetMatchPattern().(type) {
	case *matcherpb.ValueMatcher_StringMatch:
		s, ok := v.GetKind().(*structpb.Value_StringValue)
		return ok && stringMatches(t, p.StringMatch, s.StringValue)
	case *matcherpb.ValueMatcher_ListMatch:
		l := v.GetListValue()
		return l != nil && slices.ContainsFunc(l.GetValues(), func(x *structpb.Value) bool { return valueMatches(t, p.ListMatch.GetOneOf(), x) })
	case *matcherpb.ValueMatcher_OrMatch:
		return slices.ContainsFunc(p.OrMatch.GetValueMatchers(), func(x *matcherpb.ValueMatcher) bool { return valueMatches(t, x, v) })
	case *matcherpb.ValueMatcher_PresentMatch:
		return (v != nil) == p.PresentMatch
	}
	t.Fatalf("value matcher %s: not evaluated here", jsonOf(m))
	return false
}

// stringMatches is Envoy's StringMatcher (a safe_regex must match the whole string).
func stringMatches(t *testing.T, m *matcherpb.StringMatcher, s string) bool {
	t.Helper()
	if m.GetIgnoreCase() {
		s = strings.ToLower(s)
	}
	lower := func(x string) string {
		if m.GetIgnoreCase() {
			return strings.ToLower(x)
		}
		return x
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherpb.StringMatcher_Exact:
		return s == lower(p.Exact)
	case *matcherpb.StringMatcher_Prefix:
		return strings.HasPrefix(s, lower(p.Prefix))
	case *matcherpb.StringMatcher_Suffix:
		return strings.HasSuffix(s, lower(p.Suffix))
	case *matcherpb.StringMatcher_Contains:
		return strings.Contains(s, lower(p.Contains))
	case *matcherpb.StringMatcher_SafeRegex:
		re, err := regexp.Compile("^(?:" + p.SafeRegex.GetRegex() + ")$")
		if err != nil {
			t.Fatalf("regex %q: %v", p.SafeRegex.GetRegex(), err)
		}
		return re.MatchString(s)
	}
	t.Fatalf("string matcher %s: not evaluated here", jsonOf(m))
	return false
}

// filterRunsOnRoute is Envoy's route-based filter chain (envoy/source/common/router/
// per_filter_config.cc and the HttpFilter.disabled field): the most specific per-filter
// configuration for the filter on the route, its virtual host or the route configuration decides.
// An envoy.config.route.v3.FilterConfig says itself whether the filter is disabled; any other
// configuration enables it, unless it is the filter's own "disabled" override (ExtAuthzPerRoute
// disabled: true). Without any, the filter runs unless the connection manager marks it disabled.
func filterRunsOnRoute(t *testing.T, h hop, name string) bool {
	t.Helper()
	i := slices.IndexFunc(h.HCM.GetHttpFilters(), func(f *hcm.HttpFilter) bool { return f.Name == name })
	if i < 0 {
		return false
	}
	for _, per := range []map[string]*anypb.Any{h.Route.GetTypedPerFilterConfig(), h.Vhost.GetTypedPerFilterConfig(), h.Routes.GetTypedPerFilterConfig()} {
		cfg, ok := per[name]
		if !ok {
			continue
		}
		switch cfg.GetTypeUrl() {
		case "type.googleapis.com/envoy.config.route.v3.FilterConfig":
			fc := xdstest.UnmarshalAny[route.FilterConfig](t, cfg)
			return !fc.GetDisabled()
		case "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute":
			return !xdstest.UnmarshalAny[extauthz.ExtAuthzPerRoute](t, cfg).GetDisabled()
		default:
			return true
		}
	}
	return !h.HCM.GetHttpFilters()[i].GetDisabled()
}

// jsonOf is m in JSON, for messages.
func jsonOf(m proto.Message) string {
	s, err := protomarshal.ToJSON(m)
	if err != nil {
		return err.Error()
	}
	return s
}

// findPolicy is the RBAC policy Istio named name (a CUSTOM policy's name carries a prefix).
func findPolicy(t *testing.T, h hop, name string) (*rbacpb.Policy, rbacpb.RBAC_Action) {
	t.Helper()
	for _, n := range rbacPolicyNames(t, h) {
		if n == name || strings.HasSuffix(n, "-"+name) {
			p, action, _ := rbacPolicy(t, h, n)
			return p, action
		}
	}
	t.Fatalf("no RBAC policy %s; have %v", name, rbacPolicyNames(t, h))
	return nil, 0
}

func principalsJSON(p *rbacpb.Policy) string {
	var s []string
	for _, x := range p.GetPrincipals() {
		s = append(s, jsonOf(x))
	}
	return strings.Join(s, "\n")
}

// sansAccept is Envoy's match_subject_alt_names for a certificate whose URI SAN is id.
func sansAccept(t *testing.T, sans []*matcherpb.StringMatcher, id string) bool {
	t.Helper()
	return len(sans) == 0 || slices.ContainsFunc(sans, func(m *matcherpb.StringMatcher) bool { return stringMatches(t, m, id) })
}
