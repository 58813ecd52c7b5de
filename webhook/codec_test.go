package webhook

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestEncodeResponseIsEncodingJSON: the response review, written directly for the responses every
// admission gives, is byte for byte what encoding/json writes, whatever the response holds.
func TestEncodeResponseIsEncodingJSON(t *testing.T) {
	pt := admissionv1.PatchTypeJSONPatch
	odd := admissionv1.PatchType(`odd"<type>`)
	patch := []byte(`[{"op":"add","path":"/metadata/labels/a~1b","value":"<&>"}]`)
	for i, resp := range []*admissionv1.AdmissionResponse{
		{UID: "705ab4f5-6393-11e8-b7cc-42010a800002", Allowed: true},
		{UID: "u", Allowed: false},
		{UID: "", Allowed: true},
		{UID: `u"<\>`, Allowed: true, Patch: patch, PatchType: &pt},
		{UID: "u", Allowed: true, Patch: []byte{}, PatchType: &odd},
		{UID: "u", Allowed: true, Patch: []byte{0, 1, 2, 0xff}},
		{UID: "u", Allowed: true, Warnings: []string{}},
		{UID: "u", Allowed: true, Patch: patch, PatchType: &pt, Warnings: []string{"spire-mesh-injector: a \"quoted\" <warning> & more\n", "é\u2028\xff", ""}},
		{UID: "u", Allowed: true, AuditAnnotations: map[string]string{}},
		{UID: "u", Allowed: true, AuditAnnotations: map[string]string{"k": "v"}, Warnings: []string{"w"}},
		{UID: "u", Allowed: false, Result: &metav1.Status{Code: 403, Message: "spec.containers[0]: not allowed"}},
	} {
		got, err := EncodeResponse(resp)
		require.NoError(t, err)
		want, err := json.Marshal(&admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Response: resp})
		require.NoError(t, err)
		require.Equal(t, string(want), string(got), "response %d", i)
	}
}
