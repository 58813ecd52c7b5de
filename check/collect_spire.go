package check

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// AgentConfigKey is the key ZTWIM and the upstream SPIRE Helm chart give the agent's
// configuration in its ConfigMap; both write it as JSON.
const AgentConfigKey = "agent.conf"

// SPIRE agent's SDS names when its configuration does not set them
// (cmd/spire-agent/cli/run/run.go).
const (
	spireDefaultSVIDName       = "default"
	spireDefaultBundleName     = "ROOTCA"
	spireDefaultAllBundlesName = "ALL"
)

// DefaultAgentConfigMaps are where ZTWIM (its operator namespace) and the upstream SPIRE Helm
// chart (the agent's namespace, spire-system; some installs put it beside the server) keep the
// agent's configuration.
var DefaultAgentConfigMaps = []types.NamespacedName{
	{Namespace: "zero-trust-workload-identity-manager", Name: "spire-agent"},
	{Namespace: "spire-system", Name: "spire-agent"},
	{Namespace: "spire-server", Name: "spire-agent"},
}

// AgentConfig is what the checks read from the SPIRE agent's configuration: the names its SDS
// server answers. A nil name is not set (SPIRE's default applies).
type AgentConfig struct {
	// Source says where it was read; Object is that ConfigMap as Kind/namespace/name.
	Source, Object                       string
	SVIDName, BundleName, AllBundlesName *string
}

// Effective names, SPIRE's defaults where unset.
func (a *AgentConfig) svidName() string   { return orDefault(a.SVIDName, spireDefaultSVIDName) }
func (a *AgentConfig) bundleName() string { return orDefault(a.BundleName, spireDefaultBundleName) }
func (a *AgentConfig) allBundlesName() string {
	return orDefault(a.AllBundlesName, spireDefaultAllBundlesName)
}

func orDefault(v *string, def string) string {
	if v == nil {
		return def
	}
	return *v
}

// collectAgent returns the first SPIRE agent configuration found (firstConfigMap).
func collectAgent(ctx context.Context, c client.Client, keys []types.NamespacedName) (*AgentConfig, error) {
	return firstConfigMap(ctx, c, keys, func(key types.NamespacedName, cm *corev1.ConfigMap) (*AgentConfig, string, error) {
		raw, ok := cm.Data[AgentConfigKey]
		if !ok {
			return nil, "has no key " + AgentConfigKey, nil
		}
		a, err := parseAgentConfig(raw)
		if err != nil {
			return nil, "", fmt.Errorf("ConfigMap %s key %s: %w", key, AgentConfigKey, err)
		}
		a.Source, a.Object = fmt.Sprintf("ConfigMap %s key %s", key, AgentConfigKey), "ConfigMap/"+key.String()
		return a, "", nil
	})
}

// parseAgentConfig reads agent.sds from the agent's JSON configuration. SPIRE parses it as HCL,
// whose JSON form may also write a block as a list of one object.
func parseAgentConfig(raw string) (*AgentConfig, error) {
	var doc struct {
		Agent json.RawMessage `json:"agent"`
	}
	if err := json.Unmarshal([]byte(raw), &doc); err != nil {
		return nil, fmt.Errorf("not JSON (an HCL file cannot be read by the check: look for agent.sds by hand): %v", err)
	}
	type sds struct {
		SVIDName       *string `json:"default_svid_name"`
		BundleName     *string `json:"default_bundle_name"`
		AllBundlesName *string `json:"default_all_bundles_name"`
	}
	var agent struct {
		SDS json.RawMessage `json:"sds"`
	}
	if len(doc.Agent) > 0 {
		if err := unmarshalBlock(doc.Agent, &agent); err != nil {
			return nil, fmt.Errorf("agent: %v", err)
		}
	}
	var names sds
	if len(agent.SDS) > 0 {
		if err := unmarshalBlock(agent.SDS, &names); err != nil {
			return nil, fmt.Errorf("agent.sds: %v", err)
		}
	}
	return &AgentConfig{SVIDName: names.SVIDName, BundleName: names.BundleName, AllBundlesName: names.AllBundlesName}, nil
}

// unmarshalBlock decodes an HCL block written in JSON: an object, or a list of one object.
func unmarshalBlock(raw json.RawMessage, v any) error {
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) == nil {
		if len(list) != 1 {
			return fmt.Errorf("a list of %d blocks; allowed: one", len(list))
		}
		raw = list[0]
	}
	return json.Unmarshal(raw, v)
}
