package manifests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/markdown"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/tools"
)

// TestAlerts runs Prometheus' own rule unit tests (promtool test rules, promtool built from the Go
// module proxy by test/fixtures/tools/build.sh promtool) on the alerts of kustomize/components/monitoring,
// with testdata/alerts.test.yaml: every alert fires on the series that should fire it and stays
// quiet otherwise.
func TestAlerts(t *testing.T) {
	dir := tools.Require(t, "SMI_REQUIRE_PROMTOOL", "PROMTOOL_ASSETS", "promtool", "promtool")
	y, err := os.ReadFile(filepath.Join(controlplane.Root(), "kustomize", "components", "monitoring", "prometheusrule.yaml"))
	require.NoError(t, err)
	var rule monitoringv1.PrometheusRule
	require.NoError(t, yaml.UnmarshalStrict(y, &rule))
	rules, err := yaml.Marshal(map[string]any{"groups": rule.Spec.Groups})
	require.NoError(t, err)

	work := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(work, "rules.yaml"), rules, 0o600))
	tests, err := os.ReadFile("testdata/alerts.test.yaml")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(work, "alerts.test.yaml"), tests, 0o600))

	// Every alert has a test.
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			require.Contains(t, string(tests), "alertname: "+r.Alert, "no promtool test for %s", r.Alert)
		}
	}
	cmd := exec.Command(filepath.Join(dir, "promtool"), "test", "rules", "alerts.test.yaml")
	cmd.Dir = work
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "promtool test rules:\n%s", out)
	require.True(t, strings.Contains(string(out), "SUCCESS"), "%s", out)
	t.Logf("promtool: %s", strings.TrimSpace(string(out)))
}

// TestAlertsAreDocumented keeps every alert's runbook link pointing at a heading of
// docs/runbooks.md and every alert in docs/observability.md's table.
func TestAlertsAreDocumented(t *testing.T) {
	root := controlplane.Root()
	y, err := os.ReadFile(filepath.Join(root, "kustomize", "components", "monitoring", "prometheusrule.yaml"))
	require.NoError(t, err)
	var rule monitoringv1.PrometheusRule
	require.NoError(t, yaml.UnmarshalStrict(y, &rule))
	anchors, err := markdown.Anchors(filepath.Join(root, "docs", "runbooks.md"))
	require.NoError(t, err)
	obs, err := os.ReadFile(filepath.Join(root, "docs", "observability.md"))
	require.NoError(t, err)
	const prefix = "https://github.com/spire-mesh-injector/spire-mesh-injector/blob/main/docs/runbooks.md#"
	n := 0
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			n++
			url := r.Annotations["runbook_url"]
			require.True(t, strings.HasPrefix(url, prefix), "%s: runbook_url %q is not in docs/runbooks.md", r.Alert, url)
			assert.True(t, anchors[strings.TrimPrefix(url, prefix)], "%s: docs/runbooks.md has no heading for %q", r.Alert, url)
			assert.Contains(t, string(obs), "| `"+r.Alert+"` |", "docs/observability.md does not list %s", r.Alert)
		}
	}
	require.Positive(t, n)
}
