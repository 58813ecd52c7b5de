package identity

import (
	"bytes"
	"fmt"
	"sync"
	"text/template"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// templateData has the field names spire-controller-manager gives its templates
// (pkg/spireentry: TrustDomain, ClusterName, ClusterDomain, PodMeta, PodSpec, NodeMeta, NodeSpec).
type templateData struct {
	TrustDomain   string
	ClusterName   string
	ClusterDomain string
	PodMeta       *metav1.ObjectMeta
	PodSpec       *corev1.PodSpec
	NodeMeta      *metav1.ObjectMeta
	NodeSpec      *corev1.NodeSpec
}

// Render renders a SPIFFE ID template (any registration's) for pod as spire-controller-manager
// would before the pod is scheduled: node fields are empty. A pod without a service account name
// renders as "default", the name the ServiceAccount admission plugin gives it before any webhook
// runs (offline input may lack it).
func Render(t *template.Template, cfg *config.Config, pod *corev1.Pod) (string, error) {
	spec := pod.Spec
	if spec.ServiceAccountName == "" {
		spec.ServiceAccountName = "default"
	}
	var buf bytes.Buffer
	err := t.Execute(&buf, &templateData{
		TrustDomain:   cfg.TrustDomain,
		ClusterName:   cfg.ClusterName,
		ClusterDomain: cfg.ClusterDomain,
		PodMeta:       &pod.ObjectMeta,
		PodSpec:       &spec,
		NodeMeta:      &metav1.ObjectMeta{},
		NodeSpec:      &corev1.NodeSpec{},
	})
	if err != nil {
		return "", err
	}
	return buf.String(), nil
}

// SPIFFEID is the SPIFFE ID spire-controller-manager will give pod through the webhook's
// registration, validated as it validates it. It is "" when the configured template depends on the
// node, which is unknown before scheduling. pod must carry its namespace.
func SPIFFEID(cfg *config.Config, pod *corev1.Pod) (string, error) {
	if ReadsNode(cfg.SPIFFEIDTemplate()) {
		return "", nil
	}
	id, err := EntryID(cfg.SPIFFEIDTemplate(), cfg, pod)
	if err != nil {
		return "", fmt.Errorf("for this pod, registration.spiffeIDTemplate %v", err)
	}
	return id, nil
}

// IDs gives pods the webhook's SPIFFE ID (SPIFFEID) and remembers, when the configured template
// reads only the namespace and service account (ReadsOnlyNamespaceAndSA), the ID of each namespace
// and service account: the same for every pod of one, so rendered once rather than on every
// admission. It holds at most maxKnownIDs IDs, and forgets them all when full. Safe for concurrent
// use.
type IDs struct {
	cfg       *config.Config
	readsNode bool
	perSA     bool

	mu    sync.RWMutex
	known map[serviceAccount]string
}

type serviceAccount struct{ namespace, name string }

const maxKnownIDs = 4096

// NewIDs returns the IDs of cfg's template.
func NewIDs(cfg *config.Config) *IDs {
	t := cfg.SPIFFEIDTemplate()
	return &IDs{cfg: cfg, readsNode: ReadsNode(t), perSA: ReadsOnlyNamespaceAndSA(t), known: map[serviceAccount]string{}}
}

// For is SPIFFEID(cfg, pod).
func (m *IDs) For(pod *corev1.Pod) (string, error) {
	if m.readsNode {
		return "", nil
	}
	if !m.perSA {
		return SPIFFEID(m.cfg, pod)
	}
	k := serviceAccount{pod.Namespace, pod.Spec.ServiceAccountName}
	if k.name == "" {
		k.name = "default" // as Render renders it
	}
	m.mu.RLock()
	id, ok := m.known[k]
	m.mu.RUnlock()
	if ok {
		return id, nil
	}
	id, err := SPIFFEID(m.cfg, pod)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	if len(m.known) >= maxKnownIDs {
		clear(m.known)
	}
	m.known[k] = id
	m.mu.Unlock()
	return id, nil
}

// InNamespace returns pod as seen in namespace ns: pods created by a controller carry no namespace
// in their metadata at admission; the request's is authoritative.
func InNamespace(pod *corev1.Pod, ns string) *corev1.Pod {
	if pod.Namespace == ns {
		return pod
	}
	p := *pod
	p.Namespace = ns
	return &p
}
