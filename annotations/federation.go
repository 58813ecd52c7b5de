package annotations

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ParseFederatesWith parses the Namespace annotation FederatesWithAnnotation: a comma-separated
// list of trust domain names.
func ParseFederatesWith(value string) ([]string, error) {
	var out []string
	for i, p := range strings.Split(value, ",") {
		td := strings.TrimSpace(p)
		if td == "" {
			continue
		}
		if _, err := spiffeid.TrustDomainFromString(td); err != nil || strings.Contains(td, "://") {
			return nil, fmt.Errorf("namespace annotation %s: entry %d %q is not a trust domain name; allowed: comma-separated names such as partner.example", FederatesWithAnnotation, i+1, td)
		}
		out = append(out, td)
	}
	return out, nil
}
