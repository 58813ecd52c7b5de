// Package identity says, with no clients and no I/O, what SPIRE identity spire-mesh-injector gives
// a pod: the name and labels of each namespace's ClusterSPIFFEID, the spec it should have, the one
// SPIFFE ID renderer (spire-controller-manager's template semantics), and the one rule that decides
// when another registration gives a pod a different identity. The webhook's mutators, the
// registration Ensurer and Reconciler, and `check` all ask this package, so they cannot disagree.
//
// It must stay below the impure layers: TestPure fails if it ever depends on controller-runtime,
// client-go or Prometheus.
package identity

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
)

const (
	// NamePrefix starts the name of every ClusterSPIFFEID the webhook manages.
	NamePrefix = "spire-mesh-injector-"
	// ManagedByLabel and ManagedByValue mark the ClusterSPIFFEIDs the webhook manages.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	// ManagedByValue is the ManagedByLabel value.
	ManagedByValue = "spire-mesh-injector"
	// NamespaceLabel names the namespace a managed ClusterSPIFFEID serves.
	NamespaceLabel = "spire-mesh-injector.io/namespace"
	// NamespaceNameLabel is set by the API server on every Namespace; registrations select their
	// namespace by it.
	NamespaceNameLabel = "kubernetes.io/metadata.name"
)

// Name is the deterministic name of namespace ns's ClusterSPIFFEID. Namespace names are DNS labels
// (at most 63 characters), so the name is always NamePrefix+ns; the hashed form only guards the
// object-name limit should that ever change.
func Name(ns string) string {
	n := NamePrefix + ns
	if len(n) <= validation.DNS1123SubdomainMaxLength {
		return n
	}
	sum := sha256.Sum256([]byte(ns))
	keep := validation.DNS1123SubdomainMaxLength - len(NamePrefix) - 11
	return NamePrefix + strings.TrimRight(ns[:keep], "-.") + "-" + hex.EncodeToString(sum[:])[:10]
}

// OptedIn reports whether a namespace with these labels asks for SPIRE identity: the label the
// webhook's namespaceSelector matches. Only such namespaces get a registration, Events, or anything
// else the webhook writes.
func OptedIn(nsLabels map[string]string) bool {
	return nsLabels[annotations.InjectionLabel] == annotations.InjectionEnabled
}

// IsManaged reports whether an object with these labels is a ClusterSPIFFEID the webhook manages.
func IsManaged(objLabels map[string]string) bool {
	return objLabels[ManagedByLabel] == ManagedByValue
}
