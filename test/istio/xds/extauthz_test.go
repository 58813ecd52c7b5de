package xds

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	"istio.io/istio/pilot/pkg/simulation"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// TestJWTSVIDGoesOnlyToItsAudience: a pod annotated spire-mesh-injector.io/jwt-ext-authz: <aud>
// (manifests/jwt-svid's frontend) has the JWT helper add its JWT-SVID for <aud> to the outbound
// requests the reference EnvoyFilter routes through the helper. The token is a bearer credential
// for <aud>: it must go only to the services whose workloads accept that audience (a
// RequestAuthentication under manifests/ lists it). A request to any other service of the mesh or
// to any host outside it must not pass through the helper.
func TestJWTSVIDGoesOnlyToItsAudience(t *testing.T) {
	m := newMesh(t)
	senders := 0
	for key, pod := range m.pods {
		aud := pod.Annotations[annotations.ExtAuthzAnnotation]
		if aud == "" {
			continue
		}
		senders++
		targets := m.servicesAccepting(t, aud)
		if len(targets) == 0 {
			t.Fatalf("%s sends JWT-SVIDs for %q, which no RequestAuthentication under manifests/ accepts", key, aud)
		}
		proxy := m.proxy(t, pod.Namespace, pod.Labels["app"])
		for _, d := range m.destinations(t) {
			h := m.outbound(t, proxy, d.host, d.address, d.port, d.protocol)
			helper := helperExtAuthz(t, m.cfg, h)
			runs := helper != nil && filterRunsOnRoute(t, h, extAuthzFilter)
			switch want := slices.Contains(targets, d.host); {
			case want && !runs:
				t.Errorf("%s → %s:%d: the JWT helper is not asked, the request goes without the JWT-SVID for %q", key, d.host, d.port, aud)
			case !want && runs:
				t.Errorf("%s → %s:%d: the request goes through the JWT helper and carries the JWT-SVID for %q to a service that is not %q's", key, d.host, d.port, aud, aud)
			case runs && helper.GetFailureModeAllow():
				t.Errorf("%s → %s:%d: a request the helper cannot give a token is sent anyway (failure_mode_allow)", key, d.host, d.port)
			}
		}
	}
	if senders == 0 {
		t.Fatal("no sample workload asks for jwt-ext-authz")
	}
}

// helperExtAuthz is the ext_authz filter of h's connection manager that calls the JWT helper on
// the pod's loopback (jwtHelper.extAuthzPort), or nil.
func helperExtAuthz(t *testing.T, cfg *config.Config, h hop) *extauthz.ExtAuthz {
	t.Helper()
	target := fmt.Sprintf("127.0.0.1:%d", cfg.JWTHelper.ExtAuthzPort)
	for _, f := range httpFilters(t, h, extAuthzFilter, func() *extauthz.ExtAuthz { return &extauthz.ExtAuthz{} }) {
		if f.GetGrpcService().GetGoogleGrpc().GetTargetUri() == target {
			return f
		}
	}
	return nil
}

// servicesAccepting are the hosts of the Services whose workloads accept JWT-SVIDs for aud: a
// RequestAuthentication under manifests/ lists aud and selects them.
func (m *mesh) servicesAccepting(t *testing.T, aud string) []string {
	t.Helper()
	var pods []*corev1.Pod
	for _, o := range m.objects {
		if o.Kind != "RequestAuthentication" {
			continue
		}
		var ra struct {
			Spec struct {
				Selector struct {
					MatchLabels map[string]string `json:"matchLabels"`
				} `json:"selector"`
				JWTRules []struct {
					Audiences []string `json:"audiences"`
				} `json:"jwtRules"`
			} `json:"spec"`
		}
		o.decode(t, &ra)
		for _, r := range ra.Spec.JWTRules {
			if slices.Contains(r.Audiences, aud) {
				pods = append(pods, m.podsSelected(o.Metadata.Namespace, ra.Spec.Selector.MatchLabels)...)
			}
		}
	}
	var hosts []string
	for _, o := range m.objects {
		if o.APIVersion != "v1" || o.Kind != "Service" {
			continue
		}
		var svc corev1.Service
		o.decode(t, &svc)
		for _, p := range pods {
			if p.Namespace == svc.Namespace && len(svc.Spec.Selector) > 0 && labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(p.Labels)) {
				hosts = append(hosts, svc.Name+"."+svc.Namespace+".svc.cluster.local")
			}
		}
	}
	return hosts
}

// destination is somewhere a workload sends plain HTTP that its sidecar handles.
type destination struct {
	host     string
	address  string
	port     int
	protocol simulation.Protocol
}

// destinations are every HTTP and gRPC port of every Service and ServiceEntry under manifests/ and
// testdata/, and a host the mesh does not know (sent on by Istio's passthrough).
func (m *mesh) destinations(t *testing.T) []destination {
	t.Helper()
	// Istio's protocol selection by port name (or a ServiceEntry's protocol).
	protocol := func(name string) simulation.Protocol {
		switch p, _, _ := strings.Cut(strings.ToLower(name), "-"); p {
		case "http":
			return simulation.HTTP
		case "http2", "grpc":
			return simulation.HTTP2
		}
		return ""
	}
	out := []destination{{host: "unknown.example", address: "203.0.113.7", port: 80, protocol: simulation.HTTP}}
	for _, o := range m.objects {
		switch {
		case o.APIVersion == "v1" && o.Kind == "Service":
			var svc corev1.Service
			o.decode(t, &svc)
			for _, p := range svc.Spec.Ports {
				if pr := protocol(p.Name); pr != "" {
					out = append(out, destination{svc.Name + "." + svc.Namespace + ".svc.cluster.local", "", int(p.Port), pr})
				}
			}
		case o.Kind == "ServiceEntry":
			var se struct {
				Spec struct {
					Hosts []string `json:"hosts"`
					Ports []struct {
						Number   int    `json:"number"`
						Protocol string `json:"protocol"`
					} `json:"ports"`
				} `json:"spec"`
			}
			o.decode(t, &se)
			for _, h := range se.Spec.Hosts {
				for _, p := range se.Spec.Ports {
					if pr := protocol(p.Protocol); pr != "" {
						out = append(out, destination{h, "", p.Number, pr})
					}
				}
			}
		}
	}
	return out
}
