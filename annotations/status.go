package annotations

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/spire-mesh-injector/spire-mesh-injector/jsonenc"
)

// Mode says how the webhook wired a pod.
type Mode string

const (
	// ModeMesh: the pod runs Istio's proxy (sidecar, native sidecar or gateway); the proxy reads
	// SVIDs from SPIRE through Istio's SDS socket.
	ModeMesh Mode = "mesh"
	// ModeWorkload: the pod has no proxy; its containers reach the Workload API directly.
	ModeWorkload Mode = "workload"
)

// SkipReason says why the webhook left a pod's wiring alone. Every skip is logged and counted with
// its reason; reasons that belong to the pod are also written into its status annotation.
type SkipReason string

const (
	// SkipOptOut: the pod carries the opt-out label (normally the objectSelector filters it first).
	SkipOptOut SkipReason = "opt-out-label"
	// SkipWindows: the SPIFFE CSI driver serves Linux nodes only.
	SkipWindows SkipReason = "windows-pod"
	// SkipAwaitingIstio: istio-proxy is still the placeholder a gateway's pod template carries
	// (image "auto", no Istio status yet): Istio's injector has not run. Wiring it now would be
	// recorded by Istio as a user override of its proxy and give a different pod than when Istio
	// runs first; the webhook is reinvoked after Istio's injector and wires it then.
	SkipAwaitingIstio SkipReason = "awaiting-istio-injection"
	// SkipIstioControlPlane: the pod is istiod (Istio's control plane), which must not depend on
	// the webhook (the webhook's configuration and the validating policy skip it too).
	SkipIstioControlPlane SkipReason = "istio-control-plane"
	// SkipNotPod: the request is not a pod creation (wrong kind, resource, sub-resource or operation).
	SkipNotPod SkipReason = "not-a-pod-create"
)

// StatusVersion is the schema version of Status; a reader refuses versions it does not know.
const StatusVersion = 1

// Status is the JSON value of StatusAnnotation. Besides telling operators what happened, it lists
// exactly what the webhook added, so that a reinvocation can take its own additions back before
// wiring the pod again (for example when Istio's injector added a proxy after us). Only items that
// carry one of the webhook's reserved names are ever taken back, so a status written by hand cannot
// make the webhook remove anything else.
type Status struct {
	Version int `json:"version"`
	// Mode is how the pod was wired; empty when it was skipped.
	Mode Mode `json:"mode,omitempty"`
	// Skipped is the reason the pod was left alone.
	Skipped SkipReason `json:"skipped,omitempty"`
	// SPIFFEID is the identity spire-controller-manager will give the pod, when it can be known
	// before the pod is scheduled (templates that use node fields cannot).
	SPIFFEID string `json:"spiffeID,omitempty"`
	// Registration is the name of the ClusterSPIFFEID that selects the pod.
	Registration string `json:"registration,omitempty"`
	// Audiences are the JWT-SVID audiences the helper sidecar fetches.
	Audiences []string `json:"audiences,omitempty"`
	// Volumes the webhook added to the pod.
	Volumes []string `json:"volumes,omitempty"`
	// Containers the webhook added (in containers or, for native sidecars, initContainers).
	Containers []string `json:"containers,omitempty"`
	// Mounts maps a container name to the volumes the webhook mounted into it.
	Mounts map[string][]string `json:"mounts,omitempty"`
	// Env maps a container name to the environment variables the webhook set on it.
	Env map[string][]string `json:"env,omitempty"`
	// ConfigVersion identifies the configuration the webhook ran with.
	ConfigVersion string `json:"configVersion,omitempty"`
}

// ParseStatus parses the value of StatusAnnotation.
func ParseStatus(value string) (Status, error) {
	var s Status
	if err := json.Unmarshal([]byte(value), &s); err != nil {
		return Status{}, fmt.Errorf("annotation %s: not valid JSON: %v", StatusAnnotation, err)
	}
	if s.Version != StatusVersion {
		return Status{}, fmt.Errorf("annotation %s: version %d; allowed: %d", StatusAnnotation, s.Version, StatusVersion)
	}
	return s, nil
}

// Encode returns the annotation value: Status as encoding/json encodes it (with the current
// version), written directly since every wired pod gets one. Map keys come out sorted, so equal
// statuses encode equally. TestStatusEncodeIsEncodingJSON holds it to encoding/json.
func (s Status) Encode() string {
	buf := make([]byte, 0, 256)
	buf = append(buf, `{"version":`...)
	buf = strconv.AppendInt(buf, StatusVersion, 10)
	buf = appendStringField(buf, "mode", string(s.Mode))
	buf = appendStringField(buf, "skipped", string(s.Skipped))
	buf = appendStringField(buf, "spiffeID", s.SPIFFEID)
	buf = appendStringField(buf, "registration", s.Registration)
	buf = appendListField(buf, "audiences", s.Audiences)
	buf = appendListField(buf, "volumes", s.Volumes)
	buf = appendListField(buf, "containers", s.Containers)
	buf = appendMapField(buf, "mounts", s.Mounts)
	buf = appendMapField(buf, "env", s.Env)
	buf = appendStringField(buf, "configVersion", s.ConfigVersion)
	return string(append(buf, '}'))
}

// The fields of Status, each left out when empty (omitempty).

func appendStringField(buf []byte, name, v string) []byte {
	if v == "" {
		return buf
	}
	buf = append(append(append(buf, ',', '"'), name...), '"', ':')
	return jsonenc.AppendString(buf, v)
}

func appendListField(buf []byte, name string, v []string) []byte {
	if len(v) == 0 {
		return buf
	}
	buf = append(append(append(buf, ',', '"'), name...), '"', ':')
	return appendList(buf, v)
}

// appendList writes a list as encoding/json does: null when nil.
func appendList(buf []byte, v []string) []byte {
	if v == nil {
		return append(buf, "null"...)
	}
	buf = append(buf, '[')
	for i, s := range v {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = jsonenc.AppendString(buf, s)
	}
	return append(buf, ']')
}

func appendMapField(buf []byte, name string, m map[string][]string) []byte {
	if len(m) == 0 {
		return buf
	}
	buf = append(append(append(buf, ',', '"'), name...), '"', ':', '{')
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(jsonenc.AppendString(buf, k), ':')
		buf = appendList(buf, m[k])
	}
	return append(buf, '}')
}
