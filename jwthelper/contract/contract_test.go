package contract

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTokenFiles(t *testing.T) {
	assert.Equal(t, "payments.jwt", TokenFileName("payments"))
	assert.Equal(t, "https___api.example.com.jwt", TokenFileName("https://api.example.com"))
	assert.Equal(t, "spiffe___td_ns_x_sa_y.jwt", TokenFileName("spiffe://td/ns/x/sa/y"))
	assert.Equal(t, "__.jwt", TokenFileName(".."), "never a path component")
	assert.NotEqual(t, BundleFileName, TokenFileName("bundle"))
	require.NoError(t, TokenFileCollision([]string{"a", "b", "https://a"}))
	require.ErrorContains(t, TokenFileCollision([]string{"x:y", "x/y"}), "would share the token file x_y.jwt")
}

func TestCheckAudience(t *testing.T) {
	for in, want := range map[string]string{
		"payments":               "",
		"spiffe://td/ns/x/sa/y":  "",
		strings.Repeat("x", 255): "",
		"":                       "is empty",
		strings.Repeat("x", 256): "is 256 bytes long; allowed: at most 255",
		"a b":                    "contains the character ' '",
		"a\tb":                   "contains the control character 0x09",
		"aü":                     "contains a non-ASCII character",
		`a"b`:                    `contains the character '"'`,
		"a`b":                    "contains the character '`'",
	} {
		err := CheckAudience(in)
		if want == "" {
			assert.NoError(t, err, in)
			continue
		}
		assert.ErrorContains(t, err, want, in)
	}
}

func TestFlags(t *testing.T) {
	a := Args{Audiences: []string{"a", "https://b"}, OutputDir: "/t", FileMode: "0444", HealthPort: 15987}
	assert.Equal(t, []string{"--audience=a", "--audience=https://b", "--output-dir=/t", "--file-mode=0444", "--health-addr=:15987"}, a.Flags())
	a.ExtAuthzAudience, a.ExtAuthzPort = "a", 15988
	assert.Equal(t, []string{"--ext-authz-addr=127.0.0.1:15988", "--ext-authz-audience=a"}, a.Flags()[5:], "ext_authz on the pod's loopback only")
}
