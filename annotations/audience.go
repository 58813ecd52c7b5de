package annotations

import (
	"fmt"
	"strings"

	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

// ParseAudiences parses the value of AudienceAnnotation: a comma-separated list of between 1 and
// maxCount audiences. Surrounding spaces are trimmed. Each audience must be one the JWT helper
// accepts (contract.CheckAudience), appear once, and have a token file of its own.
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
		if err := contract.CheckAudience(a); err != nil {
			return nil, fmt.Errorf("annotation %s: audience %d %v", AudienceAnnotation, i+1, err)
		}
		if _, dup := seen[a]; dup {
			return nil, fmt.Errorf("annotation %s: audience %q is listed twice; allowed: each audience once", AudienceAnnotation, a)
		}
		seen[a] = struct{}{}
		out = append(out, a)
	}
	if err := contract.TokenFileCollision(out); err != nil {
		return nil, fmt.Errorf("annotation %s: %v", AudienceAnnotation, err)
	}
	return out, nil
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
