// Package config is spire-mesh-injector's one configuration: a YAML file decoded strictly over
// built-in defaults that work for ZTWIM on OpenShift, validated once at start-up. Nothing re-parses
// configuration per request: mutators read the typed, validated Config.
package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
	"github.com/spire-mesh-injector/spire-mesh-injector/version"
)

// Defaults that match Red Hat's Zero Trust Workload Identity Manager (ZTWIM) and Istio.
const (
	// DefaultCSIDriver is the SPIFFE CSI driver's name, upstream and in ZTWIM.
	DefaultCSIDriver = "csi.spiffe.io"
	// DefaultSocketFileName is the SPIRE agent's socket file as ZTWIM publishes it through the CSI
	// driver. Upstream SPIRE's Helm chart uses the same name; Istio's own default is "socket".
	DefaultSocketFileName = "spire-agent.sock"
	// IstioDefaultSocketFileName is the file pilot-agent looks for when WORKLOAD_IDENTITY_SOCKET_FILE
	// is unset.
	IstioDefaultSocketFileName = "socket"
	// DefaultProxyContainerName is the name Istio gives its proxy container.
	DefaultProxyContainerName = "istio-proxy"
	// DefaultIstioSocketMountPath is where Istio's injection template mounts the workload-socket
	// volume in istio-proxy and where pilot-agent looks for the Workload API socket.
	DefaultIstioSocketMountPath = "/var/run/secrets/workload-spiffe-uds"
	// DefaultWorkloadMountPath is where plain workloads find the Workload API socket, as in the
	// SPIFFE CSI driver's examples.
	DefaultWorkloadMountPath = "/spiffe-workload-api"
	// DefaultClassName is the className ZTWIM's spire-controller-manager reconciles; it silently
	// ignores ClusterSPIFFEIDs with any other className, or none.
	DefaultClassName = "zero-trust-workload-identity-manager-spire"
	// DefaultSPIFFEIDTemplate gives each service account in each namespace its own identity, the
	// same shape as Istio's own identities.
	DefaultSPIFFEIDTemplate = "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
	// DefaultImageRepository is where the project's image (webhook and JWT helper) is published.
	DefaultImageRepository = "ghcr.io/spire-mesh-injector/spire-mesh-injector"
)

// NativeSidecarMode says when the JWT helper runs as a native sidecar (an init container with
// restartPolicy Always) rather than a classic container.
type NativeSidecarMode string

const (
	// NativeAuto uses a native sidecar when the pod already has one (Istio 1.27+ injects its proxy
	// as a native sidecar by default), a classic container otherwise.
	NativeAuto NativeSidecarMode = "auto"
	// NativeAlways always uses a native sidecar (needs Kubernetes 1.29+).
	NativeAlways NativeSidecarMode = "always"
	// NativeNever always uses a classic container.
	NativeNever NativeSidecarMode = "never"
)

// FailurePolicy says what an internal fault (not a user's mistake) does to an admission.
type FailurePolicy string

const (
	// FailIgnore admits the pod unchanged with a warning and a metric (fail open). Pair it with the
	// validating-policy safety net so no opted-in pod starts without identity.
	FailIgnore FailurePolicy = "Ignore"
	// FailFail denies the pod with the cause (fail closed).
	FailFail FailurePolicy = "Fail"
)

// Config is the whole configuration. Field names are the YAML keys.
type Config struct {
	// TrustDomain is SPIRE's trust domain; it must equal Istio's meshConfig.trustDomain.
	TrustDomain string `json:"trustDomain"`
	// ClusterName is the cluster name spire-controller-manager is configured with
	// ({{ .ClusterName }} in templates).
	ClusterName string `json:"clusterName"`
	// ClusterDomain is the cluster's DNS domain ({{ .ClusterDomain }} in templates).
	ClusterDomain string `json:"clusterDomain"`
	// CSIDriver is the SPIFFE CSI driver that publishes the SPIRE agent's socket into pods.
	CSIDriver string `json:"csiDriver"`
	// SocketFileName is the agent socket's file name inside the CSI volume.
	SocketFileName string `json:"socketFileName"`
	// Istio configures the wiring of pods that run Istio's proxy.
	Istio IstioConfig `json:"istio"`
	// Workload configures the wiring of pods without a proxy.
	Workload WorkloadConfig `json:"workload"`
	// JWTHelper configures the JWT-SVID helper sidecar.
	JWTHelper JWTHelperConfig `json:"jwtHelper"`
	// Registration configures the ClusterSPIFFEID ensured for each opted-in namespace.
	Registration RegistrationConfig `json:"registration"`
	// FailurePolicy is what an internal fault does: Ignore (admit with a warning) or Fail (deny).
	FailurePolicy FailurePolicy `json:"failurePolicy"`

	// Derived at validation, never read from the file.
	spiffeIDTemplate *template.Template
	version          string
}

// IstioConfig configures the wiring of Istio-injected pods.
type IstioConfig struct {
	// ProxyContainerName is the name of Istio's proxy container.
	ProxyContainerName string `json:"proxyContainerName"`
	// SocketMountPath is where istio-proxy mounts the workload-socket volume when Istio's template
	// did not already mount it.
	SocketMountPath string `json:"socketMountPath"`
}

// WorkloadConfig configures the wiring of pods without a proxy.
type WorkloadConfig struct {
	// MountPath is where app containers (and the JWT helper) mount the Workload API socket.
	MountPath string `json:"mountPath"`
}

// JWTHelperConfig configures the JWT-SVID helper sidecar.
type JWTHelperConfig struct {
	// Image is the helper's image.
	Image string `json:"image"`
	// ImagePullPolicy is Always, IfNotPresent or Never.
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy"`
	// Resources are the helper container's requests and limits.
	Resources corev1.ResourceRequirements `json:"resources"`
	// TokenDir is where tokens are written and where app containers read them.
	TokenDir string `json:"tokenDir"`
	// FileMode is the octal mode of token files, e.g. "0444".
	FileMode string `json:"fileMode"`
	// NativeSidecar is auto, always or never.
	NativeSidecar NativeSidecarMode `json:"nativeSidecar"`
	// HealthPort serves the helper's /ready, /healthz and /metrics inside the pod.
	HealthPort int32 `json:"healthPort"`
	// ExtAuthzPort is where the helper serves Envoy's ext_authz API on the pod's loopback, for
	// pods that ask for it with the jwt-ext-authz annotation.
	ExtAuthzPort int32 `json:"extAuthzPort"`
	// MaxAudiences bounds the audiences one pod may ask for.
	MaxAudiences int `json:"maxAudiences"`
}

// RegistrationConfig configures the ClusterSPIFFEIDs the webhook ensures.
type RegistrationConfig struct {
	// ClassName is the spire-controller-manager class that reconciles them. Empty is allowed only
	// for an upstream spire-controller-manager with watchClassless: true.
	ClassName string `json:"className"`
	// SPIFFEIDTemplate is spire-controller-manager's SPIFFE ID template; it must use
	// {{ .PodMeta.Namespace }} so that no two namespaces can share an identity.
	SPIFFEIDTemplate string `json:"spiffeIDTemplate"`
	// TTL bounds X.509-SVID lifetimes (0: SPIRE server's default).
	TTL Duration `json:"ttl"`
	// JWTTTL bounds JWT-SVID lifetimes (0: SPIRE server's default).
	JWTTTL Duration `json:"jwtTtl"`
	// DNSNameTemplates are spire-controller-manager DNS name templates.
	DNSNameTemplates []string `json:"dnsNameTemplates,omitempty"`
	// AutoPopulateDNSNames adds the DNS names of the pod's Services.
	AutoPopulateDNSNames bool `json:"autoPopulateDNSNames"`
	// FederatesWith lists federated trust domains for every namespace.
	FederatesWith []string `json:"federatesWith,omitempty"`
}

// Duration is a Go duration written as a string ("90s", "5m", "1h"). A malformed value is kept
// and reported by validation with the field's name.
type Duration struct {
	time.Duration
	raw string
	err error
}

// UnmarshalJSON records the duration, or the reason it is not one.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		d.raw, d.err = string(b), fmt.Errorf("not a string")
		return nil
	}
	d.raw = s
	if s == "" {
		d.Duration, d.err = 0, nil
		return nil
	}
	d.Duration, d.err = time.ParseDuration(s)
	return nil
}

// MarshalJSON writes the duration in Go's notation.
func (d Duration) MarshalJSON() ([]byte, error) {
	if d.Duration == 0 {
		return []byte(`""`), nil
	}
	return json.Marshal(d.Duration.String())
}

// Default returns the built-in configuration, validated.
func Default() *Config {
	c := defaults()
	if err := c.Validate(); err != nil {
		panic("built-in default configuration is invalid: " + err.Error())
	}
	return c
}

func defaults() *Config {
	return &Config{
		TrustDomain:    "cluster.local",
		ClusterName:    "cluster",
		ClusterDomain:  "cluster.local",
		CSIDriver:      DefaultCSIDriver,
		SocketFileName: DefaultSocketFileName,
		Istio: IstioConfig{
			ProxyContainerName: DefaultProxyContainerName,
			SocketMountPath:    DefaultIstioSocketMountPath,
		},
		Workload: WorkloadConfig{MountPath: DefaultWorkloadMountPath},
		JWTHelper: JWTHelperConfig{
			Image:           DefaultImageRepository + ":" + version.Version,
			ImagePullPolicy: corev1.PullIfNotPresent,
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse("10m"),
					corev1.ResourceMemory: resource.MustParse("24Mi"),
				},
				Limits: corev1.ResourceList{
					corev1.ResourceMemory: resource.MustParse("64Mi"),
				},
			},
			TokenDir:      contract.DefaultOutputDir,
			FileMode:      contract.DefaultFileMode,
			NativeSidecar: NativeAuto,
			HealthPort:    contract.DefaultHealthPort,
			ExtAuthzPort:  contract.DefaultExtAuthzPort,
			MaxAudiences:  8,
		},
		Registration: RegistrationConfig{
			ClassName:        DefaultClassName,
			SPIFFEIDTemplate: DefaultSPIFFEIDTemplate,
			JWTTTL:           Duration{Duration: 5 * time.Minute},
		},
		FailurePolicy: FailIgnore,
	}
}

// Parse decodes a YAML configuration over the defaults and validates it. Unknown keys and
// duplicate keys are errors.
func Parse(data []byte) (*Config, error) {
	c := defaults()
	if err := yaml.UnmarshalStrict(data, c); err != nil {
		return nil, fmt.Errorf("configuration: %s", strings.TrimPrefix(err.Error(), "error unmarshaling JSON: while decoding JSON: "))
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Load reads and parses the configuration file at path; an empty path means the defaults.
func Load(path string) (*Config, error) {
	if path == "" {
		return Default(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Version identifies this configuration: the first 12 hex digits of the SHA-256 of its canonical
// JSON. It goes into each pod's status annotation.
func (c *Config) Version() string { return c.version }

// SPIFFEIDTemplate is the parsed registration SPIFFE ID template.
func (c *Config) SPIFFEIDTemplate() *template.Template { return c.spiffeIDTemplate }

// WorkloadSocketURI is the SPIFFE_ENDPOINT_SOCKET value for a socket volume mounted at mountPath.
func (c *Config) WorkloadSocketURI(mountPath string) string {
	return "unix://" + strings.TrimSuffix(mountPath, "/") + "/" + c.SocketFileName
}

func (c *Config) computeVersion() string {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:12]
}
