package identity

import (
	"bytes"
	"fmt"
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
