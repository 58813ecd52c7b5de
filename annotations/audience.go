package annotations

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxAudienceLength bounds one audience. JWT audiences are usually URLs or SPIFFE IDs; 255 bytes
// fits both with room and keeps the helper's arguments and file names bounded.
const MaxAudienceLength = 255

// ParseAudiences parses the value of AudienceAnnotation: a comma-separated list of between 1 and
// maxCount audiences. Surrounding spaces are trimmed. An audience must be printable ASCII without
// spaces, commas, quotes or backslashes, at most MaxAudienceLength bytes, and appear once.
func ParseAudiences(value string, maxCount int) ([]string, error) {
	if strings.TrimSpace(value) == "" {
		return nil, fmt.Errorf("annotation %s: empty; allowed: a comma-separated list of 1 to %d audiences, e.g. %q", AudienceAnnotation, maxCount, "my-service,https://api.example.com")
	}
	parts := strings.Split(value, ",")
	if len(parts) > maxCount {
		return nil, fmt.Errorf("annotation %s: %d audiences; allowed: at most %d", AudienceAnnotation, len(parts), maxCount)
	}
	out := make([]string, 0, len(parts))
	seen := make(map[string]struct{}, len(parts))
	for i, p := range parts {
		a := strings.TrimSpace(p)
		if a == "" {
			return nil, fmt.Errorf("annotation %s: audience %d is empty; allowed: non-empty audiences separated by single commas", AudienceAnnotation, i+1)
		}
		if len(a) > MaxAudienceLength {
			return nil, fmt.Errorf("annotation %s: audience %d is %d bytes long; allowed: at most %d", AudienceAnnotation, i+1, len(a), MaxAudienceLength)
		}
		if bad, ok := firstDisallowed(a); ok {
			return nil, fmt.Errorf("annotation %s: audience %d contains %s; allowed: printable ASCII without spaces, quotes or backslashes", AudienceAnnotation, i+1, bad)
		}
		if _, dup := seen[a]; dup {
			return nil, fmt.Errorf("annotation %s: audience %q is listed twice; allowed: each audience once", AudienceAnnotation, a)
		}
		seen[a] = struct{}{}
		out = append(out, a)
	}
	return out, nil
}

// firstDisallowed describes the first byte of s that an audience may not contain.
func firstDisallowed(s string) (string, bool) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= utf8.RuneSelf:
			return "a non-ASCII character", true
		case c < 0x20 || c == 0x7f:
			return fmt.Sprintf("the control character 0x%02x", c), true
		case c == ' ' || c == '"' || c == '\'' || c == '\\' || c == '`':
			return fmt.Sprintf("the character %q", c), true
		}
	}
	return "", false
}

// TokenFileName is the file, inside the JWT helper's token directory, that holds the JWT-SVID for
// audience. Characters that are not safe in a file name become '_'; JWTFileCollision reports two
// audiences that would share a file.
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

// BundleFileName is the file, inside the JWT helper's token directory, that holds the JWT bundle
// (a JWKS document) for validating tokens locally. Its extension keeps it apart from every token.
const BundleFileName = "bundle.jwks"

// CheckTokenFiles returns an error when two audiences map to the same token file.
func CheckTokenFiles(audiences []string) error {
	seen := make(map[string]string, len(audiences))
	for _, a := range audiences {
		f := TokenFileName(a)
		if prev, ok := seen[f]; ok {
			return fmt.Errorf("annotation %s: audiences %q and %q would share the token file %s; allowed: audiences that differ in their letters, digits, '.', '-' or '_'", AudienceAnnotation, prev, a, f)
		}
		seen[f] = a
	}
	return nil
}

// ParseExtAuthz parses the value of ExtAuthzAnnotation against the pod's audiences.
func ParseExtAuthz(value string, audiences []string) (string, error) {
	v := strings.TrimSpace(value)
	if len(audiences) == 0 {
		return "", fmt.Errorf("annotation %s: needs annotation %s; allowed: one of the pod's JWT-SVID audiences", ExtAuthzAnnotation, AudienceAnnotation)
	}
	for _, a := range audiences {
		if a == v {
			return v, nil
		}
	}
	return "", fmt.Errorf("annotation %s: %q is not one of the audiences in %s; allowed: %s", ExtAuthzAnnotation, v, AudienceAnnotation, strings.Join(audiences, ", "))
}
