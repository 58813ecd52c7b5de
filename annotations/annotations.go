// Package annotations holds every label and annotation that spire-mesh-injector reads or writes, each
// with the one parser that turns its text into a typed value. Validation is parsing: a value that
// parses is valid, and every parse error names the key and says what is allowed.
package annotations

const (
	// InjectionLabel opts a namespace in (value InjectionEnabled, matched by the webhook's
	// namespaceSelector) and a pod out (value InjectionDisabled, matched by its objectSelector, so
	// the API server does not even call the webhook for such a pod). It is a label, not an
	// annotation, precisely so that the API server can filter on it.
	InjectionLabel = "spire-injection"
	// InjectionEnabled is the InjectionLabel value that opts a namespace in.
	InjectionEnabled = "enabled"
	// InjectionDisabled is the InjectionLabel value that opts a pod out.
	InjectionDisabled = "disabled"

	// AudienceAnnotation asks for JWT-SVIDs: a comma-separated list of audiences. It is the
	// annotation Red Hat's ZTWIM documentation already puts on pods. Parsed by ParseAudiences.
	AudienceAnnotation = "spiffe.io/audience"

	// StatusAnnotation records, as JSON, what the webhook did to a pod (see Status). It is how a
	// reinvocation knows what it added earlier, and how operators and `check` read the outcome.
	StatusAnnotation = "spire-mesh-injector.io/status"

	// ManagedIdentityLabel is the label Istio's SPIRE sample template puts on pods whose identity
	// comes from SPIRE; the webhook sets it to "true" on every pod it wires.
	ManagedIdentityLabel = "spiffe.io/spire-managed-identity"

	// InjectedLabel marks a pod the webhook wired, with the mode as value ("mesh" or "workload").
	// The ClusterSPIFFEIDs the webhook ensures select pods by this label, so they never select a
	// pod the webhook did not wire.
	InjectedLabel = "spire-mesh-injector.io/injected"

	// ExtAuthzAnnotation on a pod turns on the JWT helper's Envoy ext_authz mode: outbound requests
	// without an Authorization header get "Bearer <JWT-SVID>" for this audience, which must be one
	// of the spiffe.io/audience audiences. Parsed by ParseExtAuthz.
	ExtAuthzAnnotation = "spire-mesh-injector.io/jwt-ext-authz"

	// FederatesWithAnnotation on a Namespace adds trust domains (comma-separated) to the
	// federatesWith list of that namespace's ClusterSPIFFEID.
	FederatesWithAnnotation = "spire-mesh-injector.io/federates-with"
)
