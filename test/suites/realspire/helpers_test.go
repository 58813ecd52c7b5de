package realspire

import (
	"context"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/stretchr/testify/require"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
)

// requireRoot skips tests that must act as the kubelet (mounts) or run a workload as another
// user: both need root, which CI and this suite's machines have.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: it runs a workload under its own UID (the unix workload attestor's selector) or bind-mounts like the kubelet")
	}
}

var (
	buildOnce sync.Once
	helperBin string
	buildErr  error
)

// helperBinary builds cmd/spiffe-jwt-helper once, as shipped: the tests run the real binary.
func helperBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		helperBin, buildErr = controlplane.Build(workDir, "./cmd/spiffe-jwt-helper")
	})
	require.NoError(t, buildErr)
	return helperBin
}

var uidMu sync.Mutex
var nextUID = 40000

// workloadUID returns a UID of its own for one test workload, so the unix workload attestor tells
// it apart (selector unix:uid:<uid>).
func workloadUID() int {
	uidMu.Lock()
	defer uidMu.Unlock()
	nextUID++
	return nextUID
}

// register creates an entry for spiffeID with selectors under the agent and waits until the agent
// serves it to a caller with uid (the agent syncs entries every few seconds).
func register(t *testing.T, spiffeID string, selectors []string, x509TTL, jwtTTL int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, server.CreateEntry(ctx, agent.ID, spiffeID, selectors, x509TTL, jwtTTL))
}

// registerSelf gives this test process (selector unix:uid:<our uid>) identities: it then fetches
// bundles and plays workloads that run in-process.
func registerSelf(t *testing.T, ids ...string) {
	t.Helper()
	for _, id := range ids {
		register(t, id, []string{"unix:uid:" + strconv.Itoa(os.Getuid())}, 0, 0)
	}
}

// waitSVID waits until the Workload API at addr serves an X.509-SVID with id to this process.
func waitSVID(t *testing.T, addr string, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	var found *x509svid.SVID
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(addr))
		if err != nil {
			return false
		}
		for _, s := range svids {
			if s.ID == id {
				found = s
				return true
			}
		}
		return false
	}, 45*time.Second, 250*time.Millisecond, "the agent never served %s", id)
	return found
}

func freePort(t *testing.T) int {
	t.Helper()
	p, err := proc.FreePort()
	require.NoError(t, err)
	return p
}

func fetchJWTBundles(ctx context.Context) (*jwtbundle.Set, error) {
	return workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr(agent.Socket()))
}

func selfUID() int { return os.Getuid() }
