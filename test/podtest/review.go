package podtest

import (
	"encoding/json"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/benchpod"
)

// Request returns the AdmissionRequest the API server sends for creating podJSON in namespace.
func Request(namespace string, podJSON []byte) *admissionv1.AdmissionRequest {
	return &admissionv1.AdmissionRequest{
		UID:             types.UID("0b7f5a3e-6c1d-4f0e-9a61-3f2d8c7e5b41"),
		Kind:            metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Resource:        metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		RequestKind:     &metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		RequestResource: &metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
		Namespace:       namespace,
		Operation:       admissionv1.Create,
		UserInfo: authenticationv1.UserInfo{
			Username: "system:serviceaccount:kube-system:replicaset-controller",
			UID:      "5d0c7a2b-1f3e-4b8a-9c6d-2e7f1a0b3c4d",
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"},
		},
		Object:  runtime.RawExtension{Raw: podJSON},
		Options: runtime.RawExtension{Raw: []byte(`{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1","fieldManager":"kube-controller-manager"}`)},
	}
}

// ReviewBody encodes req in an admission.k8s.io/v1 AdmissionReview.
func ReviewBody(t testing.TB, req *admissionv1.AdmissionRequest) []byte {
	t.Helper()
	b, err := json.Marshal(&admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  req,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Enlarge is benchpod.Enlarge for a test.
func Enlarge(t testing.TB, pod *corev1.Pod, size int) *corev1.Pod {
	t.Helper()
	p, err := benchpod.Enlarge(pod, size)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
