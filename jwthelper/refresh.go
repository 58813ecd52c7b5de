package jwthelper

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

// The refresh loop: one per audience, fetching at half a token's lifetime and withdrawing a token
// before it expires.

// refreshLoop keeps the token of one audience fresh: fetched at half its lifetime, retried with
// jittered exponential backoff, and removed from disk once it is no longer usable.
func (h *Helper) refreshLoop(ctx context.Context, client *workloadapi.Client, audience string) {
	backoff := h.opts.MinBackoff
	for {
		var wait time.Duration
		svid, err := h.fetch(ctx, client, audience)
		if err == nil {
			err = h.store(audience, svid)
		}
		now := h.now()
		if err == nil {
			backoff = h.opts.MinBackoff
			wait = svid.Expiry.Sub(now) / 2
		} else {
			if ctx.Err() != nil {
				return
			}
			h.metrics.fetchErrors.WithLabelValues(audience).Inc()
			h.log.Warn("fetching JWT-SVID failed; keeping the last valid token", "audience", audience, "error", err, "retryIn", backoff)
			wait = backoff + time.Duration(rand.Int64N(int64(backoff)/5+1))
			backoff = min(backoff*2, h.opts.MaxBackoff)
		}
		// Wake up in time to withdraw a token that is about to become unusable.
		if t, ok := h.current(audience); ok && t.usable.After(now) && t.usable.Sub(now) < wait {
			wait = t.usable.Sub(now)
		}
		wait = max(wait, 100*time.Millisecond)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		h.expire(audience)
	}
}

func (h *Helper) fetch(ctx context.Context, client *workloadapi.Client, audience string) (*jwtsvid.SVID, error) {
	ctx, cancel := context.WithTimeout(ctx, h.opts.FetchTimeout)
	defer cancel()
	return client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
}

// store writes a new token and makes it current.
func (h *Helper) store(audience string, svid *jwtsvid.SVID) error {
	now := h.now()
	if !svid.Expiry.After(now) {
		return fmt.Errorf("the Workload API returned an expired JWT-SVID (exp %s)", svid.Expiry.Format(time.RFC3339))
	}
	if err := writeAtomic(filepath.Join(h.opts.OutputDir, contract.TokenFileName(audience)), []byte(svid.Marshal()), h.opts.FileMode); err != nil {
		return err
	}
	lifetime := svid.Expiry.Sub(now)
	margin := min(lifetime/10, 30*time.Second)
	h.mu.Lock()
	h.tokens[audience] = token{value: svid.Marshal(), expiry: svid.Expiry, usable: svid.Expiry.Add(-margin)}
	newTD := h.td.IsZero()
	h.td = svid.ID.TrustDomain()
	h.mu.Unlock()
	h.metrics.lastRefresh.WithLabelValues(audience).Set(float64(now.Unix()))
	if newTD {
		h.writeBundle()
	}
	h.log.Info("JWT-SVID refreshed", "audience", audience, "spiffeID", svid.ID.String(), "expiry", svid.Expiry.Format(time.RFC3339))
	return nil
}

func (h *Helper) current(audience string) (token, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	t, ok := h.tokens[audience]
	return t, ok
}

// expire removes the token of audience from disk once it is no longer usable: readers find no
// token rather than an expired one.
func (h *Helper) expire(audience string) {
	h.mu.Lock()
	t, ok := h.tokens[audience]
	if !ok || h.now().Before(t.usable) {
		h.mu.Unlock()
		return
	}
	delete(h.tokens, audience)
	h.mu.Unlock()
	err := os.Remove(filepath.Join(h.opts.OutputDir, contract.TokenFileName(audience)))
	h.log.Error("JWT-SVID expired before it could be refreshed; token withdrawn", "audience", audience, "expiry", t.expiry.Format(time.RFC3339), "removeError", err)
}
