// Package realspire is the real-SPIRE suite: a spire-server and spire-agent built from the Go
// module proxy (test/fixtures/tools/build.sh spire), the real spiffe-csi-driver,
// spire-controller-manager (build.sh scm) and the JWT-SVID helper. The kubelet cannot run here:
// where a pod's volume must be published, the test calls the CSI driver's NodePublishVolume
// itself, as the kubelet would (as root), and names it a stand-in.
package realspire

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/spire"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/tools"
)

const trustDomain = "example.org"

var (
	assets string
	server *spire.Server
	agent  *spire.Agent
	// workDir holds the server's and agent's files.
	workDir string
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	var err error
	assets, err = spire.Assets()
	if tools.SkipSuite(err, requireEnv, "the real-SPIRE suite needs SPIRE binaries") {
		return 0
	}
	if err != nil {
		fmt.Println(err)
		return 1
	}
	// Unix socket paths are limited to about 100 bytes: keep them short.
	workDir, err = os.MkdirTemp("", "smi-spire-")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer os.RemoveAll(workDir)
	// Workloads run under UIDs of their own must reach the agent's socket and their binary.
	if err := os.Chmod(workDir, 0o755); err != nil {
		fmt.Println(err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	server, err = spire.StartServer(ctx, assets, filepath.Join(workDir, "server"), trustDomain, spire.ServerOptions{})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer server.Stop()
	agent, err = spire.StartAgent(ctx, assets, filepath.Join(workDir, "agent"), server)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer agent.Stop()
	code := m.Run()
	if code != 0 {
		fmt.Println("--- spire-server log ---\n" + server.Log() + "\n--- spire-agent log ---\n" + agent.Log())
	}
	return code
}
