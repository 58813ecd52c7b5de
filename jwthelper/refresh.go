package jwthelper

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

// The refresh loop: one per audience, fetching at half a token's lifetime; and the withdrawal of a
// token a margin before it expires, on a timer of its own.

// fetchFunc fetches the JWT-SVID of one audience: the Workload API client's FetchJWTSVID in Run.
type fetchFunc func(ctx context.Context, audience string) (*jwtsvid.SVID, error)

// refreshLoop keeps the token of one audience fresh: fetched at half its lifetime and retried with
// jittered exponential backoff. Withdrawing a token that is no longer usable is not its job: a
// fetch may hang up to FetchTimeout (an agent that accepts the connection and then waits on its
// kubelet), longer than a short-lived token's margin, so each stored token carries a timer of its
// own (store).
func (h *Helper) refreshLoop(ctx context.Context, fetch fetchFunc, audience string) {
	defer h.stopWithdrawal(audience)
	b := newBackoff(h.opts.MinBackoff, h.opts.MaxBackoff)
	for {
		var wait time.Duration
		fctx, cancel := context.WithTimeout(ctx, h.opts.FetchTimeout)
		svid, err := fetch(fctx, audience)
		cancel()
		if err == nil {
			err = h.store(audience, svid)
		}
		if err == nil {
			b.reset()
			wait = svid.Expiry.Sub(h.now()) / 2
		} else {
			if ctx.Err() != nil {
				return
			}
			h.metrics.fetchErrors.WithLabelValues(audience).Inc()
			wait = b.next()
			h.log.Warn("fetching JWT-SVID failed; keeping the last valid token", "audience", audience, "error", err, "retryIn", wait)
		}
		wait = max(wait, 100*time.Millisecond)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// backoff is the retry delay after failed fetches: from min, doubling up to max, each delay
// jittered so that the helpers of many pods that lost the agent together do not retry together.
type backoff struct{ min, max, cur time.Duration }

func newBackoff(lo, hi time.Duration) *backoff { return &backoff{min: lo, max: hi, cur: lo} }

// reset starts again from min, after a success.
func (b *backoff) reset() { b.cur = b.min }

// next returns the delay before the next retry, and doubles the backoff for the one after. The
// delay is the backoff plus up to a fifth of it; never more than max: there the jitter goes below
// max instead (down to a fifth below, never below min).
func (b *backoff) next() time.Duration {
	d := b.cur + time.Duration(rand.Int64N(int64(b.cur)/5+1))
	if d > b.max {
		floor := max(b.min, b.max-b.max/5)
		d = b.max - time.Duration(rand.Int64N(int64(b.max-floor)+1))
	}
	b.cur = min(b.cur*2, b.max)
	return d
}

// withdrawalMargin is how long before its expiry a token of lifetime is withdrawn: a tenth of its
// lifetime, at most 30 s (docs/jwt-helper.md).
func withdrawalMargin(lifetime time.Duration) time.Duration {
	return min(lifetime/10, 30*time.Second)
}

// usableUntil is when a token received at now stops being served. Its lifetime is exp - iat, not
// what is left of it at now: the SPIRE agent hands out a cached token until half its lifetime has
// passed. Without a usable iat, what is left is all that is known.
func usableUntil(svid *jwtsvid.SVID, now time.Time) time.Time {
	issued := now
	if iat, ok := issuedAt(svid); ok && iat.Before(svid.Expiry) {
		issued = iat
	}
	return svid.Expiry.Add(-withdrawalMargin(svid.Expiry.Sub(issued)))
}

// issuedAt is the token's iat claim, if it has one.
func issuedAt(svid *jwtsvid.SVID) (time.Time, bool) {
	var secs float64
	switch v := svid.Claims["iat"].(type) {
	case float64:
		secs = v
	case int64:
		secs = float64(v)
	case json.Number:
		f, err := v.Float64()
		if err != nil {
			return time.Time{}, false
		}
		secs = f
	default:
		return time.Time{}, false
	}
	return time.Unix(0, int64(secs*float64(time.Second))), true
}

// store writes a new token, makes it current and sets the timer that withdraws it.
func (h *Helper) store(audience string, svid *jwtsvid.SVID) error {
	now := h.now()
	if !svid.Expiry.After(now) {
		return fmt.Errorf("the Workload API returned an expired JWT-SVID (exp %s)", svid.Expiry.Format(time.RFC3339))
	}
	t := token{value: svid.Marshal(), expiry: svid.Expiry, usable: usableUntil(svid, now)}
	if !t.usable.After(now) {
		return fmt.Errorf("the Workload API returned a JWT-SVID within its withdrawal margin (exp %s)", svid.Expiry.Format(time.RFC3339))
	}
	// The file and the map change together under the audience's lock, so that a withdrawal of the
	// previous token cannot remove the file just written.
	fileMu := h.files[audience]
	fileMu.Lock()
	defer fileMu.Unlock()
	if err := writeAtomic(filepath.Join(h.opts.OutputDir, contract.TokenFileName(audience)), []byte(t.value), h.opts.FileMode); err != nil {
		return err
	}
	h.mu.Lock()
	h.tokens[audience] = t
	newTD := h.td.IsZero()
	h.td = svid.ID.TrustDomain()
	if prev := h.withdrawals[audience]; prev != nil {
		prev.Stop()
	}
	h.withdrawals[audience] = time.AfterFunc(t.usable.Sub(now), func() { h.expire(audience) })
	h.mu.Unlock()
	h.metrics.lastRefresh.WithLabelValues(audience).Set(float64(now.Unix()))
	if newTD {
		h.writeBundle()
	}
	h.log.Info("JWT-SVID refreshed", "audience", audience, "spiffeID", svid.ID.String(), "expiry", svid.Expiry.Format(time.RFC3339))
	return nil
}

// stopWithdrawal stops the withdrawal timer of audience (its refresh loop is ending).
func (h *Helper) stopWithdrawal(audience string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t := h.withdrawals[audience]; t != nil {
		t.Stop()
	}
}

func (h *Helper) current(audience string) (token, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	t, ok := h.tokens[audience]
	return t, ok
}

// expire removes the token of audience from disk once it is no longer usable: readers find no
// token rather than an expired one. A token stored meanwhile is left alone.
func (h *Helper) expire(audience string) {
	fileMu := h.files[audience]
	fileMu.Lock()
	defer fileMu.Unlock()
	h.mu.Lock()
	t, ok := h.tokens[audience]
	if !ok || h.now().Before(t.usable) {
		h.mu.Unlock()
		return
	}
	delete(h.tokens, audience)
	h.mu.Unlock()
	err := os.Remove(filepath.Join(h.opts.OutputDir, contract.TokenFileName(audience)))
	h.log.Error("JWT-SVID not refreshed in time; token withdrawn before its expiry", "audience", audience, "expiry", t.expiry.Format(time.RFC3339), "removeError", err)
}
