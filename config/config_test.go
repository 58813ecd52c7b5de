package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
)

func TestDefaultsFitZTWIM(t *testing.T) {
	c := Default()
	assert.Equal(t, "csi.spiffe.io", c.CSIDriver)
	assert.Equal(t, "spire-agent.sock", c.SocketFileName)
	assert.Equal(t, "istio-proxy", c.Istio.ProxyContainerName)
	assert.Equal(t, "/var/run/secrets/workload-spiffe-uds", c.Istio.SocketMountPath)
	assert.Equal(t, "zero-trust-workload-identity-manager-spire", c.Registration.ClassName)
	assert.Equal(t, "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}", c.Registration.SPIFFEIDTemplate)
	assert.Equal(t, FailIgnore, c.FailurePolicy)
	assert.Equal(t, 5*time.Minute, c.Registration.JWTTTL.Duration)
	assert.Len(t, c.Version(), 12)
	assert.NotNil(t, c.SPIFFEIDTemplate())
}

func TestParseOverridesDefaults(t *testing.T) {
	c, err := Parse([]byte(`
trustDomain: apps.example.com
clusterName: prod-east
socketFileName: socket
jwtHelper:
  image: registry.example/smi:1.0
  nativeSidecar: always
  resources:
    limits:
      memory: 32Mi
registration:
  className: ""
  ttl: 1h
  jwtTtl: 90s
  federatesWith: [partner.example]
  dnsNameTemplates: ["{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc"]
failurePolicy: Fail
`))
	require.NoError(t, err)
	assert.Equal(t, "apps.example.com", c.TrustDomain)
	assert.Equal(t, "socket", c.SocketFileName)
	assert.Equal(t, NativeAlways, c.JWTHelper.NativeSidecar)
	assert.Equal(t, "32Mi", c.JWTHelper.Resources.Limits.Memory().String())
	assert.Equal(t, "24Mi", c.JWTHelper.Resources.Requests.Memory().String(), "defaults not named in the file stay")
	assert.Equal(t, "", c.Registration.ClassName)
	assert.Equal(t, time.Hour, c.Registration.TTL.Duration)
	assert.Equal(t, 90*time.Second, c.Registration.JWTTTL.Duration)
	assert.Equal(t, FailFail, c.FailurePolicy)
	assert.NotEqual(t, Default().Version(), c.Version())
}

// TestParseRejects: every error names the field and says what is allowed.
func TestParseRejects(t *testing.T) {
	tests := []struct{ yaml, want string }{
		{"trustDomian: x", `unknown field "trustDomian"`},
		{"trustDomain: a\ntrustDomain: b", `key "trustDomain" already set`},
		{"trustDomain: spiffe://example.org", "trustDomain: Invalid value: \"spiffe://example.org\": must be a SPIFFE trust domain name"},
		{"trustDomain: Example.ORG", "trustDomain: Invalid value"},
		{"clusterName: ''", "clusterName: Required value"},
		{"csiDriver: 'not a driver'", "csiDriver: Invalid value"},
		{"socketFileName: run/agent.sock", "socketFileName: Invalid value: \"run/agent.sock\": must be a bare file name"},
		{"istio: {proxyContainerName: Istio_Proxy}", "istio.proxyContainerName: Invalid value"},
		{"istio: {socketMountPath: relative/path}", "istio.socketMountPath: Invalid value"},
		{"workload: {mountPath: /a/../b}", "workload.mountPath: Invalid value: \"/a/../b\": must be a clean absolute path"},
		{"jwtHelper: {image: ''}", "jwtHelper.image: Invalid value"},
		{"jwtHelper: {imagePullPolicy: Sometimes}", `jwtHelper.imagePullPolicy: Unsupported value: "Sometimes": supported values: "Always", "IfNotPresent", "Never"`},
		{"jwtHelper: {tokenDir: /spiffe-workload-api/jwt}", "jwtHelper.tokenDir: Invalid value: \"/spiffe-workload-api/jwt\": must not be, contain or be inside workload.mountPath"},
		{"jwtHelper: {fileMode: '0755'}", "jwtHelper.fileMode: Invalid value: \"0755\": must be an octal file mode without execute"},
		{"jwtHelper: {fileMode: rw}", "jwtHelper.fileMode: Invalid value"},
		{"jwtHelper: {nativeSidecar: sometimes}", `jwtHelper.nativeSidecar: Unsupported value: "sometimes"`},
		{"jwtHelper: {healthPort: 15020}", "jwtHelper.healthPort: Invalid value: 15020: must be a port from 1024 to 65535 that Istio does not reserve"},
		{"jwtHelper: {extAuthzPort: 15987}", "jwtHelper.extAuthzPort: Invalid value: 15987: must be a port from 1024 to 65535 that Istio does not reserve, other than jwtHelper.healthPort"},
		{"jwtHelper: {maxAudiences: 0}", "jwtHelper.maxAudiences: Invalid value: 0: must be from 1 to 32"},
		{"jwtHelper: {maxAudiences: many}", "cannot unmarshal string"},
		{"jwtHelper: {resources: {requests: {memory: 128Mi}, limits: {memory: 64Mi}}}", "jwtHelper.resources.requests[memory]: Invalid value: \"128Mi\": must not exceed the limit 64Mi"},
		{"registration: {className: 'bad class!'}", "registration.className: Invalid value"},
		{"registration: {ttl: 5 minutes}", "registration.ttl: Invalid value: \"5 minutes\": must be a duration such as 90s, 5m or 1h"},
		{"registration: {jwtTtl: 300}", "registration.jwtTtl: Invalid value: \"300\": must be a duration"},
		{"registration: {jwtTtl: -5m}", "registration.jwtTtl: Invalid value: \"-5m\": must not be negative"},
		{"registration: {spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/sa/{{ .PodSpec.ServiceAccountName }}'}", "registration.spiffeIDTemplate: Invalid value: \"spiffe://{{ .TrustDomain }}/sa/{{ .PodSpec.ServiceAccountName }}\": must use {{ .PodMeta.Namespace }}"},
		{"registration: {spiffeIDTemplate: 'spiffe://{{ .TrustDomain }/ns/{{ .PodMeta.Namespace }}'}", "rejected by spire-controller-manager's parser: invalid SPIFFEID template"},
		{"registration: {dnsNameTemplates: ['{{ .PodMeta.Name ']}", "rejected by spire-controller-manager's parser: invalid dnsNameTemplate value"},
		{"registration: {federatesWith: ['https://partner']}", "registration.federatesWith[0]: Invalid value: \"https://partner\": must be a trust domain name"},
		{"trustDomain: a.example\nregistration: {federatesWith: [a.example]}", "registration.federatesWith[0]: Invalid value: \"a.example\": must differ from trustDomain"},
		{"failurePolicy: Open", `failurePolicy: Unsupported value: "Open": supported values: "Ignore", "Fail"`},
	}
	for _, tt := range tests {
		t.Run(tt.yaml, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestParseReportsEveryError(t *testing.T) {
	_, err := Parse([]byte("clusterName: ''\nfailurePolicy: x\njwtHelper: {maxAudiences: 99}"))
	require.Error(t, err)
	for _, f := range []string{"clusterName", "failurePolicy", "jwtHelper.maxAudiences"} {
		assert.Contains(t, err.Error(), f)
	}
}

func TestLoad(t *testing.T) {
	c, err := Load("")
	require.NoError(t, err)
	assert.Equal(t, Default().Version(), c.Version())

	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte("failurePolicy: Nope\n"), 0o600))
	_, err = Load(path)
	require.ErrorContains(t, err, path+": invalid configuration")
	_, err = Load(filepath.Join(dir, "missing.yaml"))
	require.ErrorContains(t, err, "missing.yaml")

	require.NoError(t, os.WriteFile(path, []byte("jwtHelper:\n  imagePullPolicy: Always\n"), 0o600))
	c, err = Load(path)
	require.NoError(t, err)
	assert.Equal(t, corev1.PullAlways, c.JWTHelper.ImagePullPolicy)
}

func TestWorkloadSocketURI(t *testing.T) {
	assert.Equal(t, "unix:///spiffe-workload-api/spire-agent.sock", Default().WorkloadSocketURI("/spiffe-workload-api"))
	assert.Equal(t, "unix:///run/x/spire-agent.sock", Default().WorkloadSocketURI("/run/x/"))
}
