package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestRefreshesMet: the refresh figure is met only by a helper that refreshed every audience as
// often as its tokens' lifetime requires, with new tokens; the idle one only by a helper that
// refreshed nothing.
func TestRefreshesMet(t *testing.T) {
	auds := []string{"a", "b"}
	run := func(ttl int, refreshes, tokens map[string]int) Run {
		return Run{Audiences: auds, JWTTTL: ttl, Window: 30, ByAudience: refreshes, NewTokens: tokens}
	}
	r, tok := refreshesExpected(30, 10)
	assert.Equal(t, 5, r, "a 10 s token is fetched again every 5 s at the latest")
	assert.Equal(t, 3, tok)
	assert.True(t, run(10, map[string]int{"a": 7, "b": 6}, map[string]int{"a": 4, "b": 3}).refreshesMet())
	assert.False(t, run(10, map[string]int{"a": 7}, map[string]int{"a": 4}).refreshesMet(), "one audience stopped")
	assert.False(t, run(10, map[string]int{}, map[string]int{}).refreshesMet(), "the helper stopped refreshing")
	assert.False(t, run(10, map[string]int{"a": 7, "b": 6}, map[string]int{"a": 1, "b": 1}).refreshesMet(), "the same token rewritten")
	assert.True(t, run(3600, map[string]int{}, map[string]int{}).refreshesMet(), "idle: nothing to refresh")
	assert.False(t, run(3600, map[string]int{"a": 3}, map[string]int{"a": 1}).refreshesMet(), "idle: refreshing needlessly")
}
