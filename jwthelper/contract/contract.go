// Package contract is the JWT-SVID helper's interface, declared once: the command, flags, defaults,
// HTTP paths, limits and token files that the webhook writes into a pod (mutators) and that the
// helper binary serves (jwthelper, cmd/spiffe-jwt-helper). Both sides import it, so they cannot
// drift apart. It holds constants and pure functions only; no gRPC, no clients.
package contract

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Command is the helper's entrypoint in the project image.
const Command = "/spiffe-jwt-helper"

// EnvEndpointSocket is the SPIFFE standard variable holding the Workload API address, read by
// go-spiffe, spiffe-helper and the SPIFFE libraries; the helper takes its --socket default from it.
const EnvEndpointSocket = "SPIFFE_ENDPOINT_SOCKET"

// The helper's flags, without the leading dashes.
const (
	FlagSocket           = "socket"
	FlagAudience         = "audience"
	FlagOutputDir        = "output-dir"
	FlagFileMode         = "file-mode"
	FlagHealthAddr       = "health-addr"
	FlagExtAuthzAddr     = "ext-authz-addr"
	FlagExtAuthzAudience = "ext-authz-audience"
	FlagMinBackoff       = "min-backoff"
	FlagMaxBackoff       = "max-backoff"
	FlagVersion          = "version"
)

// Defaults of the helper and of the webhook's configuration of it.
const (
	// DefaultOutputDir is where the helper writes tokens and where app containers read them.
	DefaultOutputDir = "/var/run/secrets/spiffe.io/jwt"
	// DefaultFileMode is the octal mode of the files written.
	DefaultFileMode = "0444"
	// DefaultHealthPort serves ReadyPath, LivePath and MetricsPath. It is outside the ports Istio
	// reserves in the pod (15000-15090).
	DefaultHealthPort = 15987
	// DefaultExtAuthzPort is where the helper serves Envoy's ext_authz API on the pod's loopback.
	DefaultExtAuthzPort = 15988
)

// HTTP paths served on the health port.
const (
	// ReadyPath answers 200 once every requested token has been written and is unexpired.
	ReadyPath = "/ready"
	// LivePath answers 200 while every refresh loop is alive.
	LivePath = "/healthz"
	// MetricsPath serves Prometheus metrics.
	MetricsPath = "/metrics"
)

// Limits on what one helper serves.
const (
	// MaxAudiences is the most audiences one helper serves (and the largest maxAudiences the
	// webhook's configuration accepts).
	MaxAudiences = 32
	// MaxAudienceLength bounds one audience. JWT audiences are usually URLs or SPIFFE IDs; 255
	// bytes fits both with room and keeps the helper's arguments and file names bounded.
	MaxAudienceLength = 255
)

// Args are the settings the webhook passes to one helper.
type Args struct {
	Audiences  []string
	OutputDir  string
	FileMode   string
	HealthPort int32
	// ExtAuthzPort and ExtAuthzAudience turn on the ext_authz mode when the audience is set.
	ExtAuthzPort     int32
	ExtAuthzAudience string
}

// Flags renders a as the helper's command-line arguments.
func (a Args) Flags() []string {
	out := make([]string, 0, len(a.Audiences)+5)
	for _, aud := range a.Audiences {
		out = append(out, flag(FlagAudience, aud))
	}
	out = append(out,
		flag(FlagOutputDir, a.OutputDir),
		flag(FlagFileMode, a.FileMode),
		flag(FlagHealthAddr, ":"+strconv.Itoa(int(a.HealthPort))),
	)
	if a.ExtAuthzAudience != "" {
		// Loopback only: Envoy in the same pod is the only client.
		out = append(out, flag(FlagExtAuthzAddr, "127.0.0.1:"+strconv.Itoa(int(a.ExtAuthzPort))), flag(FlagExtAuthzAudience, a.ExtAuthzAudience))
	}
	return out
}

func flag(name, value string) string { return "--" + name + "=" + value }

// CheckAudience says what is wrong with one audience, if anything, as a phrase that follows the
// audience's name ("is empty", "contains ..."): an audience must be non-empty printable ASCII
// without spaces, quotes or backslashes, at most MaxAudienceLength bytes.
func CheckAudience(a string) error {
	if a == "" {
		return fmt.Errorf("is empty")
	}
	if len(a) > MaxAudienceLength {
		return fmt.Errorf("is %d bytes long; allowed: at most %d", len(a), MaxAudienceLength)
	}
	for i := 0; i < len(a); i++ {
		c := a[i]
		var bad string
		switch {
		case c >= utf8.RuneSelf:
			bad = "a non-ASCII character"
		case c < 0x20 || c == 0x7f:
			bad = fmt.Sprintf("the control character 0x%02x", c)
		case c == ' ' || c == '"' || c == '\'' || c == '\\' || c == '`':
			bad = fmt.Sprintf("the character %q", c)
		}
		if bad != "" {
			return fmt.Errorf("contains %s; allowed: printable ASCII without spaces, quotes or backslashes", bad)
		}
	}
	return nil
}

// TokenFileName is the file, inside the output directory, that holds the JWT-SVID for audience.
// Characters that are not safe in a file name become '_'; TokenFileCollision reports two audiences
// that would share a file.
func TokenFileName(audience string) string {
	b := []byte(audience)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	name := string(b)
	if strings.Trim(name, ".") == "" {
		name = strings.Repeat("_", len(name))
	}
	return name + ".jwt"
}

// BundleFileName is the file, inside the output directory, that holds the JWT bundle (a JWKS
// document) for validating tokens locally. Its extension keeps it apart from every token.
const BundleFileName = "bundle.jwks"

// TokenFileCollision returns an error naming the first two audiences that map to the same token
// file.
func TokenFileCollision(audiences []string) error {
	seen := make(map[string]string, len(audiences))
	for _, a := range audiences {
		f := TokenFileName(a)
		if prev, ok := seen[f]; ok {
			return fmt.Errorf("audiences %q and %q would share the token file %s; allowed: audiences that differ in their letters, digits, '.', '-' or '_'", prev, a, f)
		}
		seen[f] = a
	}
	return nil
}
