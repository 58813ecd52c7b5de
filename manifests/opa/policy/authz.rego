# Authorization by SPIFFE ID for Envoy's ext_authz, evaluated by OPA (opa-envoy-plugin, decision
# path envoy/authz/allow). A request is allowed when its caller's SPIFFE ID — taken from the mTLS
# client certificate (X.509-SVID) or from a valid JWT-SVID — is permitted the method and path.
package envoy.authz

import rego.v1

# Who may call what: SPIFFE ID -> methods and path prefixes. Kept as data so operators can ship it
# as a separate file (data.spire.permissions) and this default applies when they do not.
default_permissions := {
	"spiffe://apps.example.com/ns/shop/sa/frontend": [{"methods": ["GET", "POST"], "prefix": "/orders"}],
	"spiffe://apps.example.com/ns/shop/sa/reporting": [{"methods": ["GET"], "prefix": "/orders"}],
}

permissions := p if {
	p := data.spire.permissions
} else := default_permissions

# JWT-SVIDs: issued by the SPIRE server (SpireServer.spec.jwtIssuer) for this service's audience.
issuer := i if {
	i := data.spire.jwt.issuer
} else := "https://oidc-discovery.apps.example.com"

audience := a if {
	a := data.spire.jwt.audience
} else := "orders"

jwks_url := u if {
	u := data.spire.jwt.jwks_url
} else := "https://spire-spiffe-oidc-discovery-provider.zero-trust-workload-identity-manager.svc.cluster.local/keys"

default allow := false

# X.509-SVID: the mTLS peer's SPIFFE ID.
allow if permitted(x509_id)

# JWT-SVID: the SPIFFE ID in a validated token's "sub".
allow if permitted(jwt_id)

http_request := input.attributes.request.http

permitted(id) if {
	some p in permissions[id]
	http_request.method in p.methods
	startswith(http_request.path, p.prefix)
}

# Envoy (Istio's sidecar) gives the verified client certificate's URI SAN as source.principal.
x509_id := id if {
	id := input.attributes.source.principal
	startswith(id, "spiffe://")
}

# Where the proxy forwards the client certificate in x-forwarded-client-cert and sanitizes it
# (Envoy's forward_client_cert_details: SANITIZE_SET, as in the spiffe.io Envoy tutorials), take the
# URI field of the last (closest) element. Never trust XFCC from a proxy that passes clients' own.
x509_id := id if {
	not input.attributes.source.principal
	xfcc := http_request.headers["x-forwarded-client-cert"]
	elements := split(xfcc, ",")
	some field in split(elements[count(elements) - 1], ";")
	startswith(field, "URI=")
	id := trim(substring(field, 4, -1), "\"")
	startswith(id, "spiffe://")
}

bearer := token if {
	v := http_request.headers.authorization
	startswith(v, "Bearer ")
	token := substring(v, 7, -1)
}

# The JWKS of the SPIRE OIDC discovery provider: from data (tests, air-gapped setups) or fetched
# and cached for a minute.
jwks := k if {
	k := data.spire.jwt.jwks
} else := http.send({
	"method": "GET",
	"url": jwks_url,
	"force_cache": true,
	"force_cache_duration_seconds": 60,
}).raw_body

jwt_id := payload.sub if {
	[valid, _, payload] := io.jwt.decode_verify(bearer, {"cert": jwks, "iss": issuer, "aud": audience})
	valid
	startswith(payload.sub, "spiffe://")
}
