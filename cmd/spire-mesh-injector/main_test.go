package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spire-mesh-injector/spire-mesh-injector/version"
)

const example = "../../docs/examples/istio-injected-deployment.yaml"

// optedOut is a Deployment whose pods opt out: inject leaves it unwired, and says so.
const optedOut = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    metadata: {labels: {spire-injection: disabled}}\n    spec: {containers: [{name: a, image: x}]}\n"

func runCLI(stdin string, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCommands(t *testing.T) {
	in, err := os.ReadFile(example)
	require.NoError(t, err)
	badConfig := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(badConfig, []byte("jwtHelper:\n  nativeSidecar: maybe\n"), 0o600))

	tests := []struct {
		name     string
		stdin    string
		args     []string
		code     int
		stdout   []string
		stderr   []string
		noStdout bool
	}{
		{name: "inject a file", args: []string{"inject", "-f", example, "--registrations"}, code: 0,
			stdout: []string{"kind: Deployment", "csi.spiffe.io", "spire-mesh-injector.io/status", "kind: ClusterSPIFFEID", "name: spire-mesh-injector-bookinfo"}},
		{name: "inject stdin", stdin: string(in), args: []string{"inject", "-f", "-"}, code: 0, stdout: []string{"spiffe-jwt-helper"}},
		{name: "inject --f works like -f", stdin: string(in), args: []string{"inject", "--f", "-"}, code: 0, stdout: []string{"spiffe-jwt-helper"}},
		{name: "inject without -f", args: []string{"inject"}, code: 2, stderr: []string{"flag -f is required"}, noStdout: true},
		{name: "inject a missing file", args: []string{"inject", "-f", "no-such.yaml"}, code: 1, stderr: []string{"no-such.yaml"}, noStdout: true},
		{name: "inject with a bad config", args: []string{"inject", "-f", example, "--config", badConfig}, code: 1,
			stderr: []string{"jwtHelper.nativeSidecar: Unsupported value: \"maybe\""}, noStdout: true},
		{name: "inject a bad pod", stdin: "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {spiffe.io/audience: ''}\nspec: {containers: [{name: a}]}\n",
			args: []string{"inject", "-f", "-"}, code: 1, stderr: []string{"document 1: Pod/p: metadata.annotation spiffe.io/audience: empty"}, noStdout: true},
		{name: "inject --diff with changes exits 1", stdin: string(in), args: []string{"inject", "-f", "-", "--diff"}, code: 1,
			stdout: []string{"--- document 3, as written", "+++ document 3, as the webhook wires it", "+        name: spiffe-jwt-helper"}},
		{name: "inject --diff without changes exits 0", stdin: "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n", args: []string{"inject", "-f", "-", "--diff"}, code: 0, noStdout: true},
		{name: "inject reports what it leaves unwired", stdin: optedOut, args: []string{"inject", "-f", "-"}, code: 0,
			stderr: []string{"document 1: Deployment/d: not wired: the pod template opts out (label spire-injection=disabled)"}, stdout: []string{"kind: Deployment"}},
		{name: "inject --strict fails on what it leaves unwired", stdin: optedOut, args: []string{"inject", "-f", "-", "--strict"}, code: 3,
			stderr: []string{"not wired: the pod template opts out", "1 object(s) holding a pod template not wired (--strict)"}},
		{name: "unknown flag", args: []string{"inject", "--frobnicate"}, code: 2, stderr: []string{"flag provided but not defined: -frobnicate"}},
		{name: "stray argument", args: []string{"inject", "-f", example, "extra"}, code: 2, stderr: []string{`unexpected argument "extra"`}},
		{name: "version", args: []string{"version"}, code: 0, stdout: []string{"spire-mesh-injector " + version.Version}},
		{name: "help", args: []string{"help"}, code: 0, stdout: []string{"spire-mesh-injector inject  -f FILE"}},
		{name: "no command", args: nil, code: 2, stderr: []string{"Usage:"}},
		{name: "unknown command", args: []string{"frob"}, code: 2, stderr: []string{`unknown command "frob"`}},
		{name: "serve with a bad config", args: []string{"serve", "--config", badConfig}, code: 1, stderr: []string{"jwtHelper.nativeSidecar"}},
		{name: "check with an unknown output format", args: []string{"check", "-o", "yaml"}, code: 2, stderr: []string{`-o "yaml": allowed: table, json`}, noStdout: true},
		{name: "check with a malformed --istio-config", args: []string{"check", "--istio-config", "istio"}, code: 2, stderr: []string{"--istio-config", "NAMESPACE/NAME"}, noStdout: true},
		{name: "check without a cluster", args: []string{"check", "--kubeconfig", filepath.Join(os.TempDir(), "no-such-kubeconfig")}, code: 1, stderr: []string{"no-such-kubeconfig"}, noStdout: true},
		{name: "check with a bad config", args: []string{"check", "--config", badConfig, "--kubeconfig", filepath.Join(os.TempDir(), "no-such-kubeconfig")}, code: 1, stderr: []string{"no-such-kubeconfig"}, noStdout: true},
		{name: "help lists check", args: []string{"help"}, code: 0, stdout: []string{"spire-mesh-injector check   [flags]"}},
		{name: "serve without a cluster", args: []string{"serve", "--kubeconfig", filepath.Join(os.TempDir(), "no-such-kubeconfig")}, code: 1, stderr: []string{"no-such-kubeconfig"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCLI(tt.stdin, tt.args...)
			assert.Equal(t, tt.code, code, "stderr: %s", errOut)
			for _, s := range tt.stdout {
				assert.Contains(t, out, s)
			}
			for _, s := range tt.stderr {
				assert.Contains(t, errOut, s)
			}
			if tt.noStdout {
				assert.Empty(t, out)
			}
		})
	}
}
