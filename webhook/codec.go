package webhook

import (
	"encoding/json"
	"errors"
	"fmt"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/spire-mesh-injector/spire-mesh-injector/inject"
)

// The review codec: what the API server sends (an admission.k8s.io/v1 AdmissionReview) and what
// it expects back. Decoding follows the API machinery's JSON rules (inject.Unmarshal).

var (
	podKind     = metav1.GroupVersionKind{Group: "", Version: "v1", Kind: "Pod"}
	podResource = metav1.GroupVersionResource{Group: "", Version: "v1", Resource: "pods"}
	reviewGV    = schema.GroupVersion{Group: "admission.k8s.io", Version: "v1"}
)

// podReview is an admission.k8s.io/v1 AdmissionReview whose request object is decoded straight
// into a Pod.
type podReview struct {
	metav1.TypeMeta `json:",inline"`
	Request         *podRequest `json:"request,omitempty"`
}

// podRequest is an AdmissionRequest whose object is a Pod: the shallower Object field hides the
// embedded request's raw one.
type podRequest struct {
	admissionv1.AdmissionRequest
	Object *corev1.Pod `json:"object"`
}

// ok says the review is one the general path would decide by decoding the pod: a v1 review of a
// pod creation with a request UID and a pod.
func (r *podReview) ok() bool {
	gvk := r.GroupVersionKind()
	return gvk.GroupVersion() == reviewGV && gvk.Kind == "AdmissionReview" && r.Request != nil &&
		r.Request.UID != "" && r.Request.Object != nil && isPodCreate(&r.Request.AdmissionRequest)
}

func isPodCreate(req *admissionv1.AdmissionRequest) bool {
	return req.Kind == podKind && req.Resource == podResource && req.SubResource == "" && req.Operation == admissionv1.Create
}

// DecodeReview decodes an admission.k8s.io/v1 AdmissionReview with the API machinery's JSON rules
// (case-sensitive field names) and checks it carries a request.
func DecodeReview(body []byte) (*admissionv1.AdmissionReview, error) {
	review := &admissionv1.AdmissionReview{}
	if err := inject.Unmarshal(body, review); err != nil {
		return nil, fmt.Errorf("request body is not an AdmissionReview: %v", err)
	}
	if gv := review.GroupVersionKind(); gv.GroupVersion() != reviewGV || gv.Kind != "AdmissionReview" {
		return nil, fmt.Errorf("apiVersion %q kind %q not supported; allowed: apiVersion admission.k8s.io/v1, kind AdmissionReview", review.APIVersion, review.Kind)
	}
	if review.Request == nil {
		return nil, errors.New("AdmissionReview has no request")
	}
	if review.Request.UID == "" {
		return nil, errors.New("AdmissionReview request.uid is empty")
	}
	return review, nil
}

// EncodeResponse encodes resp in an admission.k8s.io/v1 AdmissionReview.
func EncodeResponse(resp *admissionv1.AdmissionResponse) ([]byte, error) {
	return json.Marshal(&admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: reviewGV.String(), Kind: "AdmissionReview"},
		Response: resp,
	})
}
