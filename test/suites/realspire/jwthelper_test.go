package realspire

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/proc"
)

// TestJWTHelperAgainstRealSPIRE runs the real spiffe-jwt-helper binary, under a UID of its own, as
// the webhook configures it, against the real agent: tokens for two audiences that validate against
// the bundle; rotation before expiry with no gap a reader can see; ext_authz injection; the agent
// going away (last valid tokens kept, then withdrawn at expiry, readiness following) and coming back.
func TestJWTHelperAgainstRealSPIRE(t *testing.T) {
	requireRoot(t)
	bin := helperBinary(t)
	uid := workloadUID()
	id := spiffeid.RequireFromString("spiffe://" + trustDomain + "/ns/payments/sa/checkout")
	const jwtTTL = 8 // seconds: several rotations within the test
	register(t, id.String(), []string{"unix:uid:" + strconv.Itoa(uid)}, 0, jwtTTL)
	self := spiffeid.RequireFromString("spiffe://" + trustDomain + "/test-runner/jwt")
	registerSelf(t, self.String())
	waitSVID(t, agent.Socket(), self)

	out := filepath.Join(workDir, "jwt-"+strconv.Itoa(uid))
	require.NoError(t, os.MkdirAll(out, 0o755))
	require.NoError(t, os.Chown(out, uid, uid))
	health, extAuthzPort := freePort(t), freePort(t)
	audiences := []string{"payments", "https://api.example.com"}
	helper := proc.StartT(t, bin, proc.Options{
		Args: []string{
			"--audience=" + audiences[0], "--audience=" + audiences[1],
			"--output-dir=" + out, "--file-mode=0444",
			"--health-addr=127.0.0.1:" + strconv.Itoa(health),
			"--ext-authz-addr=127.0.0.1:" + strconv.Itoa(extAuthzPort), "--ext-authz-audience=payments",
			"--min-backoff=200ms", "--max-backoff=1s"},
		Env:        []string{"SPIFFE_ENDPOINT_SOCKET=" + agent.Socket()},
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)},
		Grace:      10 * time.Second,
	})
	base := "http://127.0.0.1:" + strconv.Itoa(health)
	status := func(path string) int {
		code, _ := proc.GetStatus(context.Background(), base+path)
		return code
	}
	require.Eventually(t, func() bool { return status("/ready") == 200 }, 60*time.Second, 100*time.Millisecond, "helper never ready")
	assert.Equal(t, 200, status("/healthz"))

	bundleFile := filepath.Join(out, contract.BundleFileName)
	require.Eventually(t, func() bool { _, err := os.Stat(bundleFile); return err == nil }, 10*time.Second, 100*time.Millisecond)
	localBundle, err := jwtbundle.Load(spiffeid.RequireTrustDomainFromString(trustDomain), bundleFile)
	require.NoError(t, err, "bundle.jwks is a JWKS for the trust domain")
	// The agent's own view of the bundle, fetched by this process.
	agentBundles := agentJWTBundles(t)
	validate := func(aud string) (*jwtsvid.SVID, error) {
		raw, err := os.ReadFile(filepath.Join(out, contract.TokenFileName(aud)))
		if err != nil {
			return nil, err
		}
		return jwtsvid.ParseAndValidate(strings.TrimSpace(string(raw)), agentBundles, []string{aud})
	}
	for _, aud := range audiences {
		svid, err := validate(aud)
		require.NoError(t, err, aud)
		assert.Equal(t, id, svid.ID, "sub is the SPIFFE ID")
		assert.Equal(t, []string{aud}, svid.Audience)
		raw, _ := os.ReadFile(filepath.Join(out, contract.TokenFileName(aud)))
		_, err = jwtsvid.ParseAndValidate(string(raw), localBundle, []string{aud})
		require.NoError(t, err, "validates against the JWKS the helper wrote")
		fi, err := os.Stat(filepath.Join(out, contract.TokenFileName(aud)))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o444), fi.Mode().Perm())
	}

	t.Run("rotation: replaced before expiry, never missing or expired", func(t *testing.T) {
		seen := map[string]bool{}
		deadline := time.Now().Add(3 * jwtTTL * time.Second)
		reads := 0
		for time.Now().Before(deadline) {
			for _, aud := range audiences {
				svid, err := validate(aud)
				require.NoError(t, err, "a reader found no valid token for %s", aud)
				require.True(t, svid.Expiry.After(time.Now()))
				seen[svid.Marshal()] = true
				reads++
			}
			time.Sleep(25 * time.Millisecond)
		}
		assert.GreaterOrEqual(t, len(seen), 2*4, "each audience rotated several times (%d distinct tokens in %d reads)", len(seen), reads)
	})

	t.Run("ext_authz adds the token and keeps an existing header", func(t *testing.T) {
		conn, err := grpc.NewClient("127.0.0.1:"+strconv.Itoa(extAuthzPort), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		defer conn.Close()
		c := authv3.NewAuthorizationClient(conn)
		check := func(headers map[string]string) *authv3.CheckResponse {
			resp, err := c.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
				Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/orders", Host: "orders.shop.svc", Headers: headers}},
			}})
			require.NoError(t, err)
			return resp
		}
		resp := check(map[string]string{":authority": "orders.shop.svc"})
		require.Equal(t, int32(0), resp.GetStatus().GetCode())
		hs := resp.GetOkResponse().GetHeaders()
		require.Len(t, hs, 1)
		assert.Equal(t, "authorization", hs[0].GetHeader().GetKey())
		assert.Equal(t, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, hs[0].GetAppendAction())
		tok, ok := strings.CutPrefix(hs[0].GetHeader().GetValue(), "Bearer ")
		require.True(t, ok)
		svid, err := jwtsvid.ParseAndValidate(tok, agentBundles, []string{"payments"})
		require.NoError(t, err)
		assert.Equal(t, id, svid.ID)

		resp = check(map[string]string{"authorization": "Bearer app-chose-this"})
		assert.Equal(t, int32(0), resp.GetStatus().GetCode())
		assert.Empty(t, resp.GetOkResponse().GetHeaders(), "an existing Authorization header is not overwritten")
	})

	if mem, err := proc.ReadMemory(helper.PID()); err == nil {
		t.Logf("MEASURE spiffe-jwt-helper RSS with 2 audiences, ext_authz on: %.1f MiB", float64(mem.RSS)/(1<<20))
	}

	t.Run("agent down: last valid tokens kept, then withdrawn before expiry; back: refreshed", func(t *testing.T) {
		// A reader, and Envoy through ext_authz, read the tokens throughout the outage: from the
		// moment the agent stops until it is back, none may be expired.
		conn, err := grpc.NewClient("127.0.0.1:"+strconv.Itoa(extAuthzPort), grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		defer conn.Close()
		reader := startTokenReader(out, audiences, agentBundles, authv3.NewAuthorizationClient(conn))
		agent.Stop()
		restarted := false
		defer func() {
			if !restarted {
				require.NoError(t, agent.Start(context.Background()))
			}
		}()
		// Right after the agent goes away the tokens on disk are still valid and served.
		for _, aud := range audiences {
			_, err := validate(aud)
			require.NoError(t, err)
		}
		assert.Equal(t, 200, status("/ready"))
		// They are withdrawn before they expire: readers find none rather than an expired one.
		require.Eventually(t, func() bool { return status("/ready") == 503 }, 2*jwtTTL*time.Second, 100*time.Millisecond)
		require.Eventually(t, func() bool {
			for _, aud := range audiences {
				if _, err := os.Stat(filepath.Join(out, contract.TokenFileName(aud))); !os.IsNotExist(err) {
					return false
				}
			}
			return true
		}, 2*jwtTTL*time.Second, 100*time.Millisecond, "every token withdrawn before it expired")
		assert.Equal(t, 200, status("/healthz"), "alive while waiting for the agent")
		assert.Greater(t, metricValue(t, base, `spiffe_jwt_helper_fetch_errors_total{audience="payments"}`), 0.0)
		// Stay down until past the expiry of every token read, so that one left behind (or put back)
		// would be read expired.
		time.Sleep(time.Until(reader.latestExpiry().Add(time.Second)))

		require.NoError(t, agent.Start(context.Background()))
		restarted = true
		r := reader.stop()
		t.Logf("during the outage: %d token reads, %d ext_authz checks; %d reads found no token (withdrawn); least time left on a token read: %s",
			r.tokens, r.checks, r.missing, r.leastLeft)
		assert.Zero(t, r.nExpired, "expired tokens read during the outage; the first: %q", r.expired)
		assert.Positive(t, r.tokens, "tokens were read before they were withdrawn")
		assert.Positive(t, r.missing, "and found withdrawn")
		assert.Positive(t, r.refused, "ext_authz refused without a valid token")
		require.Eventually(t, func() bool { return status("/ready") == 200 }, 60*time.Second, 100*time.Millisecond, "refresh resumes")
		for _, aud := range audiences {
			_, err := validate(aud)
			require.NoError(t, err)
		}
		assert.Greater(t, metricValue(t, base, `spiffe_jwt_helper_token_expiry_seconds{audience="payments"}`), 0.0)
	})
}

// tokenReader reads the helper's token files, and asks its ext_authz for a token, every 25 ms,
// and records every token it is given that has expired when read.
type tokenReader struct {
	done   chan struct{}
	result chan readerResult
	mu     sync.Mutex
	latest time.Time
}

type readerResult struct {
	tokens, checks, missing, refused int
	leastLeft                        time.Duration
	// expired are the first few expired (or invalid) tokens read, and how many there were.
	expired  []string
	nExpired int
}

func (r *readerResult) expire(what string) {
	if r.nExpired++; len(r.expired) < 5 {
		r.expired = append(r.expired, what)
	}
}

func startTokenReader(dir string, audiences []string, bundles *jwtbundle.Set, extAuthz authv3.AuthorizationClient) *tokenReader {
	r := &tokenReader{done: make(chan struct{}), result: make(chan readerResult, 1)}
	go func() {
		res := readerResult{leastLeft: time.Hour}
		defer func() { r.result <- res }()
		seen := func(svid *jwtsvid.SVID, read time.Time, where string) {
			left := svid.Expiry.Sub(read)
			res.leastLeft = min(res.leastLeft, left)
			if left <= 0 {
				res.expire(fmt.Sprintf("%s: exp %s, read at %s", where, svid.Expiry.Format(time.RFC3339), read.Format(time.RFC3339Nano)))
			}
			r.mu.Lock()
			if svid.Expiry.After(r.latest) {
				r.latest = svid.Expiry
			}
			r.mu.Unlock()
		}
		for {
			select {
			case <-r.done:
				return
			case <-time.After(25 * time.Millisecond):
			}
			for _, aud := range audiences {
				raw, err := os.ReadFile(filepath.Join(dir, contract.TokenFileName(aud)))
				read := time.Now()
				if err != nil {
					res.missing++
					continue
				}
				// ParseAndValidate allows go-jose's default minute of leeway on exp: expiry is
				// checked here against the time of the read, with none.
				svid, err := jwtsvid.ParseAndValidate(strings.TrimSpace(string(raw)), bundles, []string{aud})
				if err != nil {
					res.expire(fmt.Sprintf("%s: not a valid token: %v", aud, err))
					continue
				}
				res.tokens++
				seen(svid, read, aud+".jwt")
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			resp, err := extAuthz.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
				Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/orders", Host: "orders.shop.svc"}},
			}})
			read := time.Now()
			cancel()
			if err != nil {
				continue
			}
			res.checks++
			hs := resp.GetOkResponse().GetHeaders()
			if len(hs) == 0 {
				res.refused++
				continue
			}
			tok, _ := strings.CutPrefix(hs[0].GetHeader().GetValue(), "Bearer ")
			svid, err := jwtsvid.ParseAndValidate(tok, bundles, []string{"payments"})
			if err != nil {
				res.expire(fmt.Sprintf("ext_authz: not a valid token: %v", err))
				continue
			}
			seen(svid, read, "ext_authz")
		}
	}()
	return r
}

// latestExpiry is the latest expiry of any token read so far.
func (r *tokenReader) latestExpiry() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.latest
}

func (r *tokenReader) stop() readerResult {
	close(r.done)
	return <-r.result
}

func agentJWTBundles(t *testing.T) *jwtbundle.Set {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	set, err := fetchJWTBundles(ctx)
	require.NoError(t, err)
	return set
}

// metricValue reads one sample from the helper's /metrics.
func metricValue(t *testing.T, base, series string) float64 {
	t.Helper()
	r, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			require.NoError(t, err)
			return f
		}
	}
	t.Fatalf("series %s not in /metrics:\n%s", series, b)
	return 0
}
