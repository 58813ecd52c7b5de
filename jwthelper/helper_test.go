package jwthelper

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

const testSubject = "spiffe://example.org/ns/shop/sa/checkout"

// signer signs test JWT-SVIDs, as the SPIRE server would (ES256).
type signer struct{ s jose.Signer }

func newSigner(t *testing.T) *signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	require.NoError(t, err)
	return &signer{s: s}
}

// svid is a JWT-SVID for audience issued at iat and expiring at exp (JWT times have a resolution
// of one second).
func (s *signer) svid(t *testing.T, audience string, iat, exp time.Time) *jwtsvid.SVID {
	t.Helper()
	tok, err := jwt.Signed(s.s).Claims(jwt.Claims{
		Subject: testSubject, Audience: jwt.Audience{audience},
		IssuedAt: jwt.NewNumericDate(iat), Expiry: jwt.NewNumericDate(exp),
	}).Serialize()
	require.NoError(t, err)
	svid, err := jwtsvid.ParseInsecure(tok, []string{audience})
	require.NoError(t, err)
	return svid
}

func validOptions(t *testing.T) Options {
	return Options{
		SocketAddr: "unix:///spiffe-workload-api/spire-agent.sock",
		Audiences:  []string{"payments", "https://api.example.com"},
		OutputDir:  t.TempDir(),
		FileMode:   0o444,
		HealthAddr: "127.0.0.1:0",
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func newHelper(t *testing.T, change func(*Options)) *Helper {
	t.Helper()
	o := validOptions(t)
	if change != nil {
		change(&o)
	}
	h, err := New(o)
	require.NoError(t, err)
	return h
}

// TestOptionsValidate: every wrong option is refused with a message naming its flag; the
// options the webhook sets pass.
func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Options)
		want   []string // substrings of the error, each naming the flag; none: valid
	}{
		{"valid", func(*Options) {}, nil},
		{"valid with ext_authz", func(o *Options) { o.ExtAuthzAddr, o.ExtAuthzAudience = "127.0.0.1:15988", "payments" }, nil},
		{"valid tcp socket", func(o *Options) { o.SocketAddr = "tcp://127.0.0.1:8081" }, nil},
		{"no socket", func(o *Options) { o.SocketAddr = "" }, []string{"--socket (or SPIFFE_ENDPOINT_SOCKET): required"}},
		{"socket not a URL the Workload API takes", func(o *Options) { o.SocketAddr = "http://agent:8081" }, []string{`--socket "http://agent:8081"`, "allowed: unix:///path or tcp://ip:port"}},
		{"no audience", func(o *Options) { o.Audiences = nil }, []string{"--audience: at least one is required"}},
		{"too many audiences", func(o *Options) {
			o.Audiences = nil
			for i := range contract.MaxAudiences + 1 {
				o.Audiences = append(o.Audiences, "aud"+strings.Repeat("x", i))
			}
		}, []string{"--audience: 33 given; allowed: at most 32"}},
		{"audience listed twice", func(o *Options) { o.Audiences = []string{"a", "b", "a"} }, []string{`--audience "a": listed twice`}},
		{"audience with a space", func(o *Options) { o.Audiences = []string{"pay ments"} }, []string{`--audience "pay ments" contains the character ' '`}},
		{"empty audience", func(o *Options) { o.Audiences = []string{""} }, []string{`--audience "" is empty`}},
		{"audiences sharing a token file", func(o *Options) { o.Audiences = []string{"a/b", "a:b"} }, []string{"--audience: audiences \"a/b\" and \"a:b\" would share the token file a_b.jwt"}},
		{"relative output dir", func(o *Options) { o.OutputDir = "jwt" }, []string{`--output-dir "jwt": must be an absolute path`}},
		{"no output dir", func(o *Options) { o.OutputDir = "" }, []string{`--output-dir "": must be an absolute path`}},
		{"executable files", func(o *Options) { o.FileMode = 0o755 }, []string{"--file-mode 0755"}},
		{"unreadable by the owner", func(o *Options) { o.FileMode = 0o044 }, []string{"--file-mode 044"}},
		{"setuid bit", func(o *Options) { o.FileMode = 0o4444 }, []string{"--file-mode 04444"}},
		{"ext_authz audience not served", func(o *Options) { o.ExtAuthzAddr, o.ExtAuthzAudience = "127.0.0.1:15988", "orders" }, []string{`--ext-authz-audience "orders": must be one of the --audience values`}},
		{"ext_authz without audience", func(o *Options) { o.ExtAuthzAddr = "127.0.0.1:15988" }, []string{`--ext-authz-audience "": must be one of`}},
		{"zero min backoff", func(o *Options) { o.MinBackoff = 0 }, []string{"--min-backoff 0s, --max-backoff 200ms: need 0 < min <= max"}},
		{"max below min", func(o *Options) { o.MinBackoff, o.MaxBackoff = time.Second, 500*time.Millisecond }, []string{"--min-backoff 1s, --max-backoff 500ms"}},
		{"every error at once", func(o *Options) { o.SocketAddr, o.OutputDir, o.FileMode = "", "rel", 0o777 }, []string{"--socket", "--output-dir", "--file-mode"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := validOptions(t)
			tt.change(&o)
			err := o.Validate()
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			_, err = New(o)
			require.Error(t, err, "New refuses what Validate refuses")
		})
	}
}

func TestNewFillsDefaults(t *testing.T) {
	o := validOptions(t)
	o.Log, o.Registry, o.FetchTimeout = nil, nil, 0
	h, err := New(o)
	require.NoError(t, err)
	assert.NotNil(t, h.log)
	assert.NotNil(t, h.opts.Registry)
	assert.Equal(t, 10*time.Second, h.opts.FetchTimeout)
}

// TestWithdrawalMargin is the documented rule (docs/jwt-helper.md): a token is withdrawn a tenth
// of its lifetime before it expires, at most 30 s before.
func TestWithdrawalMargin(t *testing.T) {
	for lifetime, want := range map[time.Duration]time.Duration{
		time.Second:       100 * time.Millisecond,
		8 * time.Second:   800 * time.Millisecond,
		time.Minute:       6 * time.Second,
		5 * time.Minute:   30 * time.Second,
		time.Hour:         30 * time.Second,
		24 * time.Hour:    30 * time.Second,
		299 * time.Second: 29900 * time.Millisecond,
	} {
		assert.Equal(t, want, withdrawalMargin(lifetime), "lifetime %s", lifetime)
	}

	// The lifetime is the token's (exp - iat), not what is left of it when it arrives: the SPIRE
	// agent hands out a cached token until half its lifetime has passed.
	s := newSigner(t)
	now := time.Now().Truncate(time.Second)
	fresh := s.svid(t, "payments", now, now.Add(8*time.Second))
	sameTime(t, now.Add(8*time.Second-800*time.Millisecond), usableUntil(fresh, now), "a fresh 8 s token")
	cached := s.svid(t, "payments", now.Add(-4*time.Second), now.Add(4*time.Second))
	sameTime(t, now.Add(4*time.Second-800*time.Millisecond), usableUntil(cached, now), "a token issued 4 s ago with 8 s of lifetime")
	long := s.svid(t, "payments", now.Add(-150*time.Second), now.Add(150*time.Second))
	sameTime(t, now.Add(120*time.Second), usableUntil(long, now), "5 minutes: 30 s")

	// Stored, the token is served until then and not after.
	h := newHelper(t, func(o *Options) { o.Audiences = []string{"payments"} })
	var clock atomic.Pointer[time.Time]
	clock.Store(&now)
	h.now = func() time.Time { return *clock.Load() }
	require.NoError(t, h.store("payments", cached))
	tok, ok := h.Token("payments")
	require.True(t, ok)
	assert.Equal(t, cached.Marshal(), tok)
	assert.True(t, h.Ready())
	just := now.Add(4*time.Second - 800*time.Millisecond - time.Nanosecond)
	clock.Store(&just)
	_, ok = h.Token("payments")
	assert.True(t, ok, "usable until the margin")
	at := now.Add(4*time.Second - 800*time.Millisecond)
	clock.Store(&at)
	_, ok = h.Token("payments")
	assert.False(t, ok, "not served from the margin on")
	assert.False(t, h.Ready())
}

func sameTime(t *testing.T, want, got time.Time, msg string) {
	t.Helper()
	assert.True(t, want.Equal(got), "%s: want %s, got %s", msg, want.Format(time.RFC3339Nano), got.Format(time.RFC3339Nano))
}

// TestBackoff: a failed fetch is retried after min, doubling to max, each delay jittered but
// never outside [min, max]; a success starts again from min.
func TestBackoff(t *testing.T) {
	const lo, hi = 100 * time.Millisecond, 3 * time.Second
	for range 200 {
		b := newBackoff(lo, hi)
		want := lo
		for i := range 10 {
			d := b.next()
			require.GreaterOrEqual(t, d, lo, "retry %d", i)
			require.LessOrEqual(t, d, hi, "retry %d: never more than max", i)
			if want < hi {
				require.GreaterOrEqual(t, d, want, "retry %d", i)
				require.LessOrEqual(t, d, want+want/5, "retry %d: at most a fifth of jitter", i)
			} else {
				require.GreaterOrEqual(t, d, hi-hi/5, "retry %d: at max, jittered below it", i)
			}
			want = min(want*2, hi)
		}
		b.reset()
		d := b.next()
		require.True(t, d >= lo && d <= lo+lo/5, "after a success, from min again: %s", d)
	}
	// Jitter spreads helpers that failed together.
	seen := map[time.Duration]bool{}
	for range 50 {
		seen[newBackoff(time.Second, 30*time.Second).next()] = true
	}
	assert.Greater(t, len(seen), 10, "jittered")
	// min == max: always that delay.
	b := newBackoff(time.Second, time.Second)
	for range 5 {
		assert.Equal(t, time.Second, b.next())
	}
}

// TestWriteAtomic: a file is replaced whole, with exactly the mode asked, leaving no temporary
// file; a reader never sees a partial file, whatever the umask or the timing.
func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "payments.jwt")
	require.NoError(t, writeAtomic(path, []byte("first"), 0o440))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "first", string(b))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o440), fi.Mode())
	require.NoError(t, writeAtomic(path, []byte("second"), 0o444))
	b, err = os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "second", string(b))
	fi, err = os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o444), fi.Mode(), "the mode of the new file, whatever the old one's")
	assert.Equal(t, []string{"payments.jwt"}, names(t, dir), "no temporary file left")

	// Readers racing the writer see one whole version or the other.
	const size = 64 << 10
	big := map[byte][]byte{'a': []byte(strings.Repeat("a", size)), 'b': []byte(strings.Repeat("b", size))}
	require.NoError(t, writeAtomic(path, big['a'], 0o444))
	var stop atomic.Bool
	var wg sync.WaitGroup
	var torn atomic.Int64
	var reads atomic.Int64
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
				b, err := os.ReadFile(path)
				if err != nil {
					torn.Add(1)
					continue
				}
				reads.Add(1)
				if len(b) == 0 || !bytesAll(b, b[0]) || len(b) != size {
					torn.Add(1)
				}
			}
		})
	}
	for i := range 100 {
		require.NoError(t, writeAtomic(path, big["ab"[i%2]], 0o444))
	}
	stop.Store(true)
	wg.Wait()
	assert.Zero(t, torn.Load(), "a reader saw a missing or partial file (%d reads)", reads.Load())
	assert.Positive(t, reads.Load())

	// A failure leaves the old file and no temporary one.
	sub := filepath.Join(dir, "sub")
	require.NoError(t, os.Mkdir(sub, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(sub, "x"), nil, 0o644))
	require.Error(t, writeAtomic(sub, []byte("over a folder"), 0o444), "renaming over a non-empty folder fails")
	assert.ElementsMatch(t, []string{"payments.jwt", "sub"}, names(t, dir), "the temporary file is removed")
	require.Error(t, writeAtomic(filepath.Join(dir, "missing", "x.jwt"), []byte("x"), 0o444))
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

func bytesAll(b []byte, c byte) bool {
	for _, x := range b {
		if x != c {
			return false
		}
	}
	return true
}

// fakeAgent stands in for the SPIRE agent's Workload API in the refresh loop: it serves tokens of
// a given lifetime, fails, or hangs until the fetch's deadline, as told.
type fakeAgent struct {
	t        *testing.T
	signer   *signer
	lifetime time.Duration
	mode     atomic.Value // "serve", "fail", "hang"
	fetches  atomic.Int64
}

func newFakeAgent(t *testing.T, lifetime time.Duration) *fakeAgent {
	a := &fakeAgent{t: t, signer: newSigner(t), lifetime: lifetime}
	a.mode.Store("serve")
	return a
}

func (a *fakeAgent) fetch(ctx context.Context, audience string) (*jwtsvid.SVID, error) {
	a.fetches.Add(1)
	switch a.mode.Load().(string) {
	case "fail":
		return nil, errors.New("rpc error: code = Unavailable desc = connection refused")
	case "hang":
		<-ctx.Done()
		return nil, ctx.Err()
	}
	now := time.Now().Truncate(time.Second)
	return a.signer.svid(a.t, audience, now, now.Add(a.lifetime)), nil
}

// run runs h's refresh loop for audience against a until the test ends.
func runLoop(t *testing.T, h *Helper, a *fakeAgent, audience string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.refreshLoop(ctx, a.fetch, audience) }()
	t.Cleanup(func() { cancel(); <-done })
}

// watchFile reads audience's token file every few milliseconds until stop closes, and fails the
// test on any token that has expired when it is read. It returns how many tokens it read.
func watchFile(t *testing.T, h *Helper, audience string, stop <-chan struct{}) <-chan int {
	out := make(chan int, 1)
	go func() {
		n := 0
		defer func() { out <- n }()
		path := filepath.Join(h.opts.OutputDir, contract.TokenFileName(audience))
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			b, err := os.ReadFile(path)
			if err != nil {
				continue
			}
			read := time.Now()
			svid, err := jwtsvid.ParseInsecure(string(b), []string{audience})
			if err != nil {
				t.Errorf("a reader found a token it cannot parse: %v", err)
				return
			}
			n++
			if !svid.Expiry.After(read) {
				t.Errorf("a reader found an expired token on disk: exp %s, read at %s", svid.Expiry.Format(time.RFC3339Nano), read.Format(time.RFC3339Nano))
				return
			}
		}
	}()
	return out
}

func fileExists(h *Helper, audience string) bool {
	_, err := os.Stat(filepath.Join(h.opts.OutputDir, contract.TokenFileName(audience)))
	return err == nil
}

// TestTokensWithdrawnBeforeExpiry is docs/jwt-helper.md's promise: while the agent is away the
// last valid token stays in place, then is removed a margin before its expiry (readiness and
// ext_authz follow), never left to expire on disk; once the agent is back it is fetched again.
func TestTokensWithdrawnBeforeExpiry(t *testing.T) {
	for _, outage := range []string{"fail", "hang"} {
		t.Run("agent "+outage+"s", func(t *testing.T) {
			t.Parallel()
			h := newHelper(t, func(o *Options) {
				o.Audiences = []string{"payments"}
				o.FetchTimeout = 4 * time.Second // longer than the token lives: a hung fetch must not keep it on disk
			})
			a := newFakeAgent(t, 3*time.Second)
			runLoop(t, h, a, "payments")
			require.Eventually(t, h.Ready, 5*time.Second, 10*time.Millisecond)
			stop := make(chan struct{})
			reads := watchFile(t, h, "payments", stop)

			a.mode.Store(outage)
			outageAt := time.Now()
			require.True(t, fileExists(h, "payments"), "the last valid token stays while the agent is away")
			require.Eventually(t, func() bool { return !fileExists(h, "payments") }, 5*time.Second, 5*time.Millisecond, "withdrawn")
			assert.False(t, h.Ready())
			_, ok := h.Token("payments")
			assert.False(t, ok, "ext_authz has no token to add")
			// Stay in the outage past the token's expiry: nothing reappears.
			time.Sleep(time.Until(outageAt.Add(3500 * time.Millisecond)))
			assert.False(t, fileExists(h, "payments"))

			a.mode.Store("serve")
			require.Eventually(t, h.Ready, 10*time.Second, 10*time.Millisecond, "fetched again once the agent is back")
			assert.True(t, fileExists(h, "payments"))
			time.Sleep(200 * time.Millisecond)
			close(stop)
			assert.Positive(t, <-reads)
		})
	}
}

// TestRefreshedAtHalfLifetime: with the agent up, the token is replaced before the margin, so a
// reader always finds a valid one.
func TestRefreshedAtHalfLifetime(t *testing.T) {
	h := newHelper(t, func(o *Options) { o.Audiences = []string{"payments"} })
	a := newFakeAgent(t, 2*time.Second)
	runLoop(t, h, a, "payments")
	require.Eventually(t, h.Ready, 5*time.Second, 10*time.Millisecond)
	stop := make(chan struct{})
	reads := watchFile(t, h, "payments", stop)
	gone := 0
	start := time.Now()
	for time.Since(start) < 5*time.Second {
		if !fileExists(h, "payments") || !h.Ready() {
			gone++
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	assert.Zero(t, gone, "never missing while the agent serves")
	assert.Positive(t, <-reads)
	assert.GreaterOrEqual(t, a.fetches.Load(), int64(4), "refreshed at half of each 2 s lifetime")
}
