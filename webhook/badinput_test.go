package webhook

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

// TestBadInputCatalogue is the catalogue of bad input: each entry and the exact answer. Requests
// that are not AdmissionReviews get an HTTP error; mistakes in a pod get allowed:false, code 400,
// and a message that names the field and says what is allowed; attempts to dodge or borrow an
// identity are wired as any other pod. Nothing panics.
func TestBadInputCatalogue(t *testing.T) {
	plain := podJSON(t, "plain-workload")
	mesh := podJSON(t, "classic-sidecar")
	edit := func(base []byte, f func(p *corev1.Pod)) []byte {
		p := podtest.Decode(t, base)
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		f(p)
		return podtest.JSON(t, p)
	}
	aud := func(v string) func(p *corev1.Pod) {
		return func(p *corev1.Pod) { p.Annotations[annotations.AudienceAnnotation] = v }
	}
	reviewOf := func(req *admissionv1.AdmissionRequest) []byte { return podtest.ReviewBody(t, req) }
	in := func(ns string, obj []byte) []byte { return reviewOf(podtest.Request(ns, obj)) }

	httpCases := []struct {
		name, method, contentType string
		body                      []byte
		code                      int
		body0                     string
	}{
		{"1 empty body", "POST", "application/json", nil, 400, "request body is not an AdmissionReview: unexpected end of JSON input\n"},
		{"2 truncated JSON", "POST", "application/json", []byte(`{"apiVersion":`), 400, "request body is not an AdmissionReview: unexpected end of JSON input\n"},
		{"3 a JSON array", "POST", "application/json", []byte(`[]`), 400, "request body is not an AdmissionReview: json: cannot unmarshal array into Go value of type v1.AdmissionReview\n"},
		{"4 admission.k8s.io/v1beta1", "POST", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}`), 400,
			"apiVersion \"admission.k8s.io/v1beta1\" kind \"AdmissionReview\" not supported; allowed: apiVersion admission.k8s.io/v1, kind AdmissionReview\n"},
		{"5 another kind", "POST", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"ConversionReview"}`), 400,
			"apiVersion \"admission.k8s.io/v1\" kind \"ConversionReview\" not supported; allowed: apiVersion admission.k8s.io/v1, kind AdmissionReview\n"},
		{"6 keys in another case do not count", "POST", "application/json", []byte(`{"APIVersion":"admission.k8s.io/v1","Kind":"AdmissionReview","Request":{"uid":"u"}}`), 400,
			"apiVersion \"\" kind \"\" not supported; allowed: apiVersion admission.k8s.io/v1, kind AdmissionReview\n"},
		{"7 no request", "POST", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"u","allowed":true}}`), 400, "AdmissionReview has no request\n"},
		{"8 no uid", "POST", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"version":"v1","kind":"Pod"}}}`), 400, "AdmissionReview request.uid is empty\n"},
		{"9 body over 7 MiB", "POST", "application/json", bytes.Repeat([]byte("x"), MaxRequestBytes+1), 413, "request body of 7340033 bytes larger than 7340032 bytes\n"},
		{"10 form-encoded", "POST", "application/x-www-form-urlencoded", []byte("a=b"), 415, "Content-Type \"application/x-www-form-urlencoded\" not supported; allowed: application/json\n"},
		{"11 PUT", "PUT", "application/json", nil, 405, "method PUT not allowed; allowed: POST\n"},
	}
	h, _ := newHandler(t, podtest.Config(t))
	for _, tt := range httpCases {
		t.Run(tt.name, func(t *testing.T) {
			rec := serve(h, tt.method, tt.contentType, bytes.NewReader(tt.body))
			assert.Equal(t, tt.code, rec.Code)
			assert.Equal(t, tt.body0, rec.Body.String())
		})
	}
	t.Run("9b chunked body over 7 MiB", func(t *testing.T) {
		// A reader of unknown length: sent chunked, read up to the bound.
		rec := serve(h, "POST", "application/json", io.MultiReader(bytes.NewReader(bytes.Repeat([]byte("x"), MaxRequestBytes)), strings.NewReader("x")))
		assert.Equal(t, 413, rec.Code)
		assert.Equal(t, "request body larger than 7340032 bytes\n", rec.Body.String())
	})
	t.Run("9c bodies beyond the bytes in flight are shed", func(t *testing.T) {
		small, _ := newHandler(t, podtest.Config(t))
		small.WithInflightBytes(MaxRequestBytes)
		require.True(t, small.inflight.TryAcquire(1), "one byte of another request in flight")
		defer small.inflight.Release(1)
		rec := serve(small, "POST", "application/json", bytes.NewReader(bytes.Repeat([]byte("x"), MaxRequestBytes)))
		assert.Equal(t, 503, rec.Code)
		assert.Equal(t, "1", rec.Header().Get("Retry-After"))
		assert.Equal(t, "too many admission request bytes in flight; retry\n", rec.Body.String())
	})
	// Every refusal is counted by its reason (and logged, at most once a second per reason).
	for reason, n := range map[string]float64{RefusedNotAReview: 8, RefusedTooLarge: 2, RefusedContentType: 1, RefusedMethod: 1} {
		assert.Equal(t, n, testutil.ToFloat64(h.metrics.refused.WithLabelValues(reason)), reason)
	}

	denials := []struct {
		name string
		body []byte
		msg  string
	}{
		{"12 no object", reviewOf(podtest.Request("payments", nil)), "request.object: missing; allowed: the Pod being created"},
		{"13 object is a string", in("payments", []byte(`"pod"`)), "request.object: not a valid Pod: json: cannot unmarshal string into Go value of type v1.Pod"},
		{"14 containers is not a list", in("payments", []byte(`{"spec":{"containers":"app"}}`)), "request.object: not a valid Pod: json: cannot unmarshal string into Go struct field PodSpec.spec.containers of type []v1.Container"},
		{"15 empty audience", in("payments", edit(plain, aud(""))), "metadata.annotation spiffe.io/audience: empty; allowed: a comma-separated list of 1 to 8 audiences, e.g. \"my-service,https://api.example.com\""},
		{"16 empty audience in a list", in("payments", edit(plain, aud("a,,b"))), "metadata.annotation spiffe.io/audience: audience 2 is empty; allowed: non-empty audiences separated by single commas"},
		{"17 duplicate audience", in("payments", edit(plain, aud("a,b,a"))), "metadata.annotation spiffe.io/audience: audience \"a\" is listed twice; allowed: each audience once"},
		{"18 too many audiences", in("payments", edit(plain, aud("1,2,3,4,5,6,7,8,9"))), "metadata.annotation spiffe.io/audience: 9 audiences; allowed: at most 8"},
		{"19 huge audience", in("payments", edit(plain, aud(strings.Repeat("a", 256)))), "metadata.annotation spiffe.io/audience: audience 1 is 256 bytes long; allowed: at most 255"},
		{"20 newline in an audience", in("payments", edit(plain, aud("a\nb"))), "metadata.annotation spiffe.io/audience: audience 1 contains the control character 0x0a; allowed: printable ASCII without spaces, quotes or backslashes"},
		{"21 space in an audience", in("payments", edit(plain, aud("my service"))), "metadata.annotation spiffe.io/audience: audience 1 contains the character ' '; allowed: printable ASCII without spaces, quotes or backslashes"},
		{"22 non-ASCII audience", in("payments", edit(plain, aud("zahlungsdienst-ü"))), "metadata.annotation spiffe.io/audience: audience 1 contains a non-ASCII character; allowed: printable ASCII without spaces, quotes or backslashes"},
		{"23 backslash in an audience", in("payments", edit(plain, aud(`a\b`))), "metadata.annotation spiffe.io/audience: audience 1 contains the character '\\\\'; allowed: printable ASCII without spaces, quotes or backslashes"},
		{"24 audiences sharing a token file", in("payments", edit(plain, aud("a/b,a:b"))), "metadata.annotation spiffe.io/audience: audiences \"a/b\" and \"a:b\" would share the token file a_b.jwt; allowed: audiences that differ in their letters, digits, '.', '-' or '_'"},
		{"25 ext_authz without audiences", in("payments", edit(plain, func(p *corev1.Pod) { p.Annotations[annotations.ExtAuthzAnnotation] = "api" })),
			"metadata.annotation spire-mesh-injector.io/jwt-ext-authz: needs annotation spiffe.io/audience; allowed: one of the pod's JWT-SVID audiences"},
		{"26 ext_authz for another audience", in("payments", edit(plain, func(p *corev1.Pod) {
			p.Annotations[annotations.AudienceAnnotation] = "api"
			p.Annotations[annotations.ExtAuthzAnnotation] = "admin"
		})), "metadata.annotation spire-mesh-injector.io/jwt-ext-authz: \"admin\" is not one of the audiences in spiffe.io/audience; allowed: api"},
		{"27 malformed status annotation", in("payments", edit(plain, func(p *corev1.Pod) { p.Annotations[annotations.StatusAnnotation] = "mesh" })),
			"metadata.annotations[spire-mesh-injector.io/status]: annotation spire-mesh-injector.io/status: not valid JSON: invalid character 'm' looking for beginning of value; this annotation is written by spire-mesh-injector: remove it from the pod template"},
		{"28 status annotation of an unknown version", in("payments", edit(plain, func(p *corev1.Pod) { p.Annotations[annotations.StatusAnnotation] = `{"version":7,"mode":"mesh"}` })),
			"metadata.annotations[spire-mesh-injector.io/status]: annotation spire-mesh-injector.io/status: version 7; allowed: 1; this annotation is written by spire-mesh-injector: remove it from the pod template"},
		{"29 a volume of the author's named spiffe-workload-api", in("payments", edit(plain, func(p *corev1.Pod) {
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "spiffe-workload-api", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/run/spire/sockets"}}})
		})), "spec.volumes[spiffe-workload-api]: the name is reserved by spire-mesh-injector for the SPIFFE CSI volume; allowed: rename the volume, or make it exactly {csi: {driver: csi.spiffe.io, readOnly: true}}"},
		{"30 a volume of the author's named spiffe-jwt-svids", in("payments", edit(plain, func(p *corev1.Pod) {
			p.Annotations[annotations.AudienceAnnotation] = "api"
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "spiffe-jwt-svids", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
		})), "spec.volumes[spiffe-jwt-svids]: the name is reserved by spire-mesh-injector for the JWT-SVID token volume; allowed: any other volume name"},
		{"31 a container of the author's named spiffe-jwt-helper", in("payments", edit(plain, func(p *corev1.Pod) {
			p.Annotations[annotations.AudienceAnnotation] = "api"
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "spiffe-jwt-helper", Image: "evil/helper"})
		})), "spec.containers[spiffe-jwt-helper]: the name is reserved by spire-mesh-injector for the JWT-SVID helper; allowed: any other container name"},
		{"32 an init container named spiffe-jwt-helper", in("payments", edit(plain, func(p *corev1.Pod) {
			p.Annotations[annotations.AudienceAnnotation] = "api"
			p.Spec.InitContainers = append(p.Spec.InitContainers, corev1.Container{Name: "spiffe-jwt-helper", Image: "evil/helper"})
		})), "spec.initContainers[spiffe-jwt-helper]: the name is reserved by spire-mesh-injector for the JWT-SVID helper; allowed: any other container name"},
		{"33 another volume at the socket path", in("payments", edit(plain, func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "cache", MountPath: "/spiffe-workload-api"})
		})), "spec.containers[billing].volumeMounts: volume \"cache\" is mounted at /spiffe-workload-api, where spire-mesh-injector mounts the SPIFFE Workload API socket; allowed: any other mount path"},
		{"34 another volume at the token directory", in("payments", edit(plain, func(p *corev1.Pod) {
			p.Annotations[annotations.AudienceAnnotation] = "api"
			p.Spec.Containers[1].VolumeMounts = append(p.Spec.Containers[1].VolumeMounts, corev1.VolumeMount{Name: "cache", MountPath: "/var/run/secrets/spiffe.io/jwt"})
		})), "spec.containers[metrics-exporter].volumeMounts: volume \"cache\" is mounted at /var/run/secrets/spiffe.io/jwt, where spire-mesh-injector mounts JWT-SVIDs; allowed: any other mount path"},
		{"35 istio-proxy with another volume at the SDS socket path", in("shop", edit(mesh, func(p *corev1.Pod) {
			proxy := &p.Spec.Containers[1]
			proxy.VolumeMounts[0] = corev1.VolumeMount{Name: "istio-data", MountPath: "/var/run/secrets/workload-spiffe-uds"}
		})), "spec.containers[istio-proxy].volumeMounts: volume \"istio-data\" is mounted at /var/run/secrets/workload-spiffe-uds, where spire-mesh-injector mounts the Workload API socket for pilot-agent; allowed: any other mount path"},
		{"42 a container of the author's named spiffe-jwt-helper, no audience", in("payments", edit(plain, func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "spiffe-jwt-helper", Image: "evil/helper"})
		})), "spec.containers[spiffe-jwt-helper]: the name is reserved by spire-mesh-injector for the JWT-SVID helper; allowed: any other container name"},
		{"43 a copied status claims the author's container named spiffe-jwt-helper", in("payments", edit(plain, func(p *corev1.Pod) {
			p.Annotations[annotations.StatusAnnotation] = annotations.Status{Mode: annotations.ModeWorkload, Containers: []string{"spiffe-jwt-helper"}}.Encode()
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "spiffe-jwt-helper", Image: "their/own-helper"})
		})), "spec.containers[spiffe-jwt-helper]: the name is reserved by spire-mesh-injector for the JWT-SVID helper; allowed: any other container name"},
		{"44 thousands of containers", in("payments", edit(plain, func(p *corev1.Pod) {
			for i := range 2000 {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: "x"})
			}
		})), "metadata.annotations[spire-mesh-injector.io/status]: recording what spire-mesh-injector injected into 2003 containers takes 132229 bytes, over its limit of 32768 bytes; allowed: pods with fewer containers"},
		{"45 annotations at the API server's limit", in("payments", edit(plain, func(p *corev1.Pod) {
			p.Annotations["big"] = strings.Repeat("x", 256<<10-100)
		})), "metadata.annotations: with spire-mesh-injector's status annotation (449 bytes) the pod's annotations take 262525 bytes, over the API server's limit of 262144 bytes; allowed: smaller annotations"},
	}
	for _, tt := range denials {
		t.Run(tt.name, func(t *testing.T) {
			resp := review(t, h, tt.body)
			require.False(t, resp.Allowed)
			require.NotNil(t, resp.Result)
			assert.Equal(t, int32(400), resp.Result.Code)
			assert.Equal(t, "spire-mesh-injector: "+tt.msg, resp.Result.Message)
		})
	}

	// Attempts to dodge injection or borrow an identity: wired like any other pod.
	wiredAs := func(t *testing.T, body []byte, js []byte) *corev1.Pod {
		resp := review(t, h, body)
		require.True(t, resp.Allowed)
		require.NotNil(t, resp.Patch)
		return podtest.Decode(t, podtest.Apply(t, js, decodeOps(t, resp.Patch)))
	}
	statusOf := func(p *corev1.Pod) annotations.Status {
		st, err := annotations.ParseStatus(p.Annotations[annotations.StatusAnnotation])
		require.NoError(t, err)
		return st
	}
	t.Run("36 a status annotation copied from another namespace's pod", func(t *testing.T) {
		forged := annotations.Status{Mode: annotations.ModeMesh, SPIFFEID: "spiffe://example.org/ns/kube-system/sa/admin", Registration: "spire-mesh-injector-kube-system"}
		js := edit(plain, func(p *corev1.Pod) { p.Annotations[annotations.StatusAnnotation] = forged.Encode() })
		st := statusOf(wiredAs(t, in("payments", js), js))
		assert.Equal(t, "spiffe://example.org/ns/payments/sa/billing", st.SPIFFEID)
		assert.Equal(t, "spire-mesh-injector-payments", st.Registration)
		assert.Equal(t, annotations.ModeWorkload, st.Mode)
	})
	t.Run("37 a status annotation claiming the pod was skipped", func(t *testing.T) {
		js := edit(plain, func(p *corev1.Pod) {
			p.Annotations[annotations.StatusAnnotation] = `{"version":1,"skipped":"opt-out-label"}`
		})
		p := wiredAs(t, in("payments", js), js)
		assert.Equal(t, "workload", p.Labels[annotations.InjectedLabel])
	})
	t.Run("38 a pod claiming another namespace in its metadata", func(t *testing.T) {
		js := edit(plain, func(p *corev1.Pod) { p.Namespace = "kube-system" })
		st := statusOf(wiredAs(t, in("payments", js), js))
		assert.Equal(t, "spiffe://example.org/ns/payments/sa/billing", st.SPIFFEID, "the request's namespace is authoritative")
	})
	t.Run("39 hostNetwork and privileged pods are wired like others", func(t *testing.T) {
		js := edit(plain, func(p *corev1.Pod) {
			p.Spec.HostNetwork = true
			yes := true
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: &yes}
		})
		assert.Equal(t, annotations.ModeWorkload, statusOf(wiredAs(t, in("payments", js), js)).Mode)
	})
	t.Run("40 a Windows pod is skipped, and says why", func(t *testing.T) {
		js := podJSON(t, "windows")
		st := statusOf(wiredAs(t, in("win", js), js))
		assert.Equal(t, annotations.SkipWindows, st.Skipped)
	})
	t.Run("46 a hand-set injected label on a pod the webhook skips is removed", func(t *testing.T) {
		js := edit(podJSON(t, "windows"), func(p *corev1.Pod) {
			p.Labels = map[string]string{annotations.InjectedLabel: "mesh"}
		})
		p := wiredAs(t, in("win", js), js)
		assert.NotContains(t, p.Labels, annotations.InjectedLabel)
	})
	t.Run("47 a copied status does not take the author's socket address", func(t *testing.T) {
		own := corev1.EnvVar{Name: "SPIFFE_ENDPOINT_SOCKET", Value: "unix:///run/elsewhere/spire-agent.sock"}
		js := edit(plain, func(p *corev1.Pod) {
			p.Annotations[annotations.StatusAnnotation] = annotations.Status{Mode: annotations.ModeWorkload,
				Env: map[string][]string{p.Spec.Containers[0].Name: {own.Name}}}.Encode()
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, own)
		})
		p := wiredAs(t, in("payments", js), js)
		assert.Contains(t, p.Spec.Containers[0].Env, own)
	})
	t.Run("48 ISTIO_KUBE_APP_PROBERS from a ConfigMap is kept, with a warning", func(t *testing.T) {
		js := edit(mesh, func(p *corev1.Pod) {
			p.Annotations[annotations.AudienceAnnotation] = "api"
			proxy := &p.Spec.Containers[1]
			proxy.Env = append(proxy.Env, corev1.EnvVar{Name: "ISTIO_KUBE_APP_PROBERS", ValueFrom: &corev1.EnvVarSource{
				ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "probers"}, Key: "p"}}})
		})
		resp := review(t, h, in("shop", js))
		require.True(t, resp.Allowed)
		require.Len(t, resp.Warnings, 1)
		assert.Equal(t, "spire-mesh-injector: ISTIO_KUBE_APP_PROBERS uses valueFrom: helper probes not via pilot-agent; STRICT mTLS fails them", resp.Warnings[0])
		p := podtest.Decode(t, podtest.Apply(t, js, decodeOps(t, resp.Patch)))
		for _, e := range p.Spec.Containers[1].Env {
			if e.Name == "ISTIO_KUBE_APP_PROBERS" {
				assert.NotNil(t, e.ValueFrom, "kept as the author wrote it")
			}
		}
	})
	t.Run("41 a hand-set injected label does not skip wiring", func(t *testing.T) {
		js := edit(plain, func(p *corev1.Pod) { p.Labels[annotations.InjectedLabel] = "mesh" })
		p := wiredAs(t, in("payments", js), js)
		assert.Equal(t, "workload", p.Labels[annotations.InjectedLabel])
		assert.Equal(t, "spiffe-workload-api", p.Spec.Volumes[len(p.Spec.Volumes)-1].Name)
	})
}
