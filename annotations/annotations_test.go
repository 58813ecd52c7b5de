package annotations

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseAudiences(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		err  string
	}{
		{in: "payments", want: []string{"payments"}},
		{in: " a , https://api.example.com ,spiffe://td/ns/x/sa/y", want: []string{"a", "https://api.example.com", "spiffe://td/ns/x/sa/y"}},
		{in: "", err: "empty; allowed: a comma-separated list of 1 to 4 audiences"},
		{in: "  ", err: "empty"},
		{in: "a,,b", err: "audience 2 is empty"},
		{in: "a,", err: "audience 2 is empty"},
		{in: "a,b,c,d,e", err: "5 audiences; allowed: at most 4"},
		{in: "a,a", err: `audience "a" is listed twice`},
		{in: "a b", err: `contains the character ' '`},
		{in: "a\tb", err: "control character 0x09"},
		{in: "a\x00b", err: "control character 0x00"},
		{in: "aü", err: "non-ASCII"},
		{in: `a"b`, err: `the character '"'`},
		{in: strings.Repeat("x", 256), err: "256 bytes long; allowed: at most 255"},
		{in: strings.Repeat("x", 255), want: []string{strings.Repeat("x", 255)}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAudiences(tt.in, 4)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				assert.Contains(t, err.Error(), "annotation spiffe.io/audience")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestParseAudiencesRefusesSharedTokenFiles(t *testing.T) {
	_, err := ParseAudiences("x:y,x/y", 4)
	require.ErrorContains(t, err, `annotation spiffe.io/audience: audiences "x:y" and "x/y" would share the token file x_y.jwt`)
}

func TestStatusRoundTrip(t *testing.T) {
	s := Status{Mode: ModeMesh, SPIFFEID: "spiffe://td/ns/a/sa/b", Registration: "r", Audiences: []string{"x"},
		Volumes: []string{"v"}, Containers: []string{"c"}, Mounts: map[string][]string{"b": {"v"}, "a": {"v"}}, Env: map[string][]string{"a": {"E"}}, ConfigVersion: "abc"}
	enc := s.Encode()
	assert.Equal(t, enc, s.Encode(), "deterministic")
	assert.Less(t, strings.Index(enc, `"a":`), strings.Index(enc, `"b":`), "map keys sorted")
	got, err := ParseStatus(enc)
	require.NoError(t, err)
	s.Version = StatusVersion
	assert.Equal(t, s, got)

	_, err = ParseStatus("{")
	require.ErrorContains(t, err, "not valid JSON")
	_, err = ParseStatus(`{"version":7}`)
	require.ErrorContains(t, err, "version 7; allowed: 1")
}

// TestStatusEncodeIsEncodingJSON: the status annotation, written directly, is byte for byte what
// encoding/json writes for Status, for every field empty, nil or set, and for strings that need
// escaping.
func TestStatusEncodeIsEncodingJSON(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	strs := []string{"", "a", "istio-proxy", `q"<&>`, "é\u2028", "\xff", "spiffe://example.org/ns/a/sa/b"}
	str := func() string { return strs[r.IntN(len(strs))] }
	list := func() []string {
		switch r.IntN(4) {
		case 0:
			return nil
		case 1:
			return []string{}
		}
		out := make([]string, r.IntN(3)+1)
		for i := range out {
			out[i] = str()
		}
		return out
	}
	mapOf := func() map[string][]string {
		switch r.IntN(3) {
		case 0:
			return nil
		case 1:
			return map[string][]string{}
		}
		m := map[string][]string{}
		for range r.IntN(4) + 1 {
			m[str()] = list()
		}
		return m
	}
	for range 2000 {
		s := Status{Version: r.IntN(3), Mode: Mode(str()), Skipped: SkipReason(str()), SPIFFEID: str(), Registration: str(),
			Audiences: list(), Volumes: list(), Containers: list(), Mounts: mapOf(), Env: mapOf(), ConfigVersion: str()}
		got := s.Encode()
		s.Version = StatusVersion
		want, err := json.Marshal(s)
		require.NoError(t, err)
		require.Equal(t, string(want), got)
	}
}
