package webhook

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/spire-mesh-injector/spire-mesh-injector/inject"
	"github.com/spire-mesh-injector/spire-mesh-injector/jsonenc"
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

// EncodeResponse encodes resp in an admission.k8s.io/v1 AdmissionReview, byte for byte as
// encoding/json encodes it. The response every admission gives (uid, allowed, the patch and its
// type, warnings) is written directly; one with a status or audit annotations (a denial, an
// internal fault) goes through encoding/json.
func EncodeResponse(resp *admissionv1.AdmissionResponse) ([]byte, error) {
	return AppendResponse(nil, resp)
}

// AppendResponse is EncodeResponse appending to dst.
func AppendResponse(dst []byte, resp *admissionv1.AdmissionResponse) ([]byte, error) {
	if resp.Result != nil || len(resp.AuditAnnotations) > 0 {
		b, err := json.Marshal(&admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: reviewGV.String(), Kind: "AdmissionReview"},
			Response: resp,
		})
		return append(dst, b...), err
	}
	n := len(responseHead) + len(resp.UID) + base64.StdEncoding.EncodedLen(len(resp.Patch)) + 64
	for _, w := range resp.Warnings {
		n += len(w) + 8
	}
	buf := append(slices.Grow(dst, n), responseHead...)
	buf = jsonenc.AppendString(buf, string(resp.UID))
	buf = append(buf, `,"allowed":`...)
	buf = strconv.AppendBool(buf, resp.Allowed)
	if len(resp.Patch) > 0 {
		buf = append(buf, `,"patch":"`...)
		buf = base64.StdEncoding.AppendEncode(buf, resp.Patch)
		buf = append(buf, '"')
	}
	if resp.PatchType != nil {
		buf = append(buf, `,"patchType":`...)
		buf = jsonenc.AppendString(buf, string(*resp.PatchType))
	}
	if len(resp.Warnings) > 0 {
		buf = append(buf, `,"warnings":[`...)
		for i, w := range resp.Warnings {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = jsonenc.AppendString(buf, w)
		}
		buf = append(buf, ']')
	}
	return append(buf, "}}"...), nil
}

// responseHead is what every response review starts with, up to its response's uid.
var responseHead = `{"kind":"AdmissionReview","apiVersion":"` + reviewGV.String() + `","response":{"uid":`
