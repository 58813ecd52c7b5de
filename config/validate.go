package config

import (
	"fmt"
	"path"
	"strconv"
	"strings"
	"text/template"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/spire-mesh-injector/spire-mesh-injector/jwthelper/contract"
)

// istioReservedPorts are ports pilot-agent and Envoy listen on inside every mesh pod.
var istioReservedPorts = map[int32]bool{15000: true, 15001: true, 15004: true, 15006: true, 15008: true, 15009: true, 15020: true, 15021: true, 15053: true, 15090: true}

// Validate checks every field, names each one that is wrong and says what is allowed, and computes
// the derived values (parsed template, version). It is called once, at start-up.
func (c *Config) Validate() error {
	var errs field.ErrorList
	root := field.NewPath("")
	f := func(name string) *field.Path { return field.NewPath(name) }
	_ = root

	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil || c.TrustDomain == "" || strings.Contains(c.TrustDomain, "://") {
		errs = append(errs, field.Invalid(f("trustDomain"), c.TrustDomain, "must be a SPIFFE trust domain name such as example.org (lowercase letters, digits, '.', '-', '_'), equal to Istio's meshConfig.trustDomain"))
	}
	if c.ClusterName == "" {
		errs = append(errs, field.Required(f("clusterName"), "the cluster name spire-controller-manager is configured with"))
	}
	if msgs := validation.IsDNS1123Subdomain(c.ClusterDomain); len(msgs) > 0 {
		errs = append(errs, field.Invalid(f("clusterDomain"), c.ClusterDomain, "must be a DNS domain such as cluster.local"))
	}
	if msgs := validation.IsDNS1123Subdomain(c.CSIDriver); len(msgs) > 0 || len(c.CSIDriver) > 63 {
		errs = append(errs, field.Invalid(f("csiDriver"), c.CSIDriver, "must be a CSI driver name: a DNS subdomain of at most 63 characters, such as csi.spiffe.io"))
	}
	errs = append(errs, validateFileName(f("socketFileName"), c.SocketFileName)...)

	ip := f("istio")
	if msgs := validation.IsDNS1123Label(c.Istio.ProxyContainerName); len(msgs) > 0 {
		errs = append(errs, field.Invalid(ip.Child("proxyContainerName"), c.Istio.ProxyContainerName, "must be a container name (DNS label), normally istio-proxy"))
	}
	errs = append(errs, validateAbsPath(ip.Child("socketMountPath"), c.Istio.SocketMountPath)...)

	errs = append(errs, validateAbsPath(f("workload").Child("mountPath"), c.Workload.MountPath)...)

	jp := f("jwtHelper")
	j := &c.JWTHelper
	if j.Image == "" || strings.ContainsAny(j.Image, " \t\r\n") {
		errs = append(errs, field.Invalid(jp.Child("image"), j.Image, "must be an image reference without spaces"))
	}
	switch j.ImagePullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, field.NotSupported(jp.Child("imagePullPolicy"), j.ImagePullPolicy, []string{string(corev1.PullAlways), string(corev1.PullIfNotPresent), string(corev1.PullNever)}))
	}
	for name, q := range j.Resources.Requests {
		if lim, ok := j.Resources.Limits[name]; ok && q.Cmp(lim) > 0 {
			errs = append(errs, field.Invalid(jp.Child("resources", "requests").Key(string(name)), q.String(), "must not exceed the limit "+lim.String()))
		}
	}
	errs = append(errs, validateAbsPath(jp.Child("tokenDir"), j.TokenDir)...)
	if overlaps(j.TokenDir, c.Workload.MountPath) {
		errs = append(errs, field.Invalid(jp.Child("tokenDir"), j.TokenDir, "must not be, contain or be inside workload.mountPath "+c.Workload.MountPath))
	}
	if mode, err := strconv.ParseUint(j.FileMode, 8, 32); err != nil || mode&^0o666 != 0 || mode&0o400 == 0 {
		errs = append(errs, field.Invalid(jp.Child("fileMode"), j.FileMode, "must be an octal file mode without execute or special bits that the owner can read, such as 0444 or 0440"))
	}
	switch j.NativeSidecar {
	case NativeAuto, NativeAlways, NativeNever:
	default:
		errs = append(errs, field.NotSupported(jp.Child("nativeSidecar"), j.NativeSidecar, []string{string(NativeAuto), string(NativeAlways), string(NativeNever)}))
	}
	if j.HealthPort < 1024 || j.HealthPort > 65535 || istioReservedPorts[j.HealthPort] {
		errs = append(errs, field.Invalid(jp.Child("healthPort"), j.HealthPort, "must be a port from 1024 to 65535 that Istio does not reserve (15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090)"))
	}
	if j.ExtAuthzPort < 1024 || j.ExtAuthzPort > 65535 || istioReservedPorts[j.ExtAuthzPort] || j.ExtAuthzPort == j.HealthPort {
		errs = append(errs, field.Invalid(jp.Child("extAuthzPort"), j.ExtAuthzPort, "must be a port from 1024 to 65535 that Istio does not reserve, other than jwtHelper.healthPort"))
	}
	if j.MaxAudiences < 1 || j.MaxAudiences > contract.MaxAudiences {
		errs = append(errs, field.Invalid(jp.Child("maxAudiences"), j.MaxAudiences, fmt.Sprintf("must be from 1 to %d", contract.MaxAudiences)))
	}

	errs = append(errs, c.validateRegistration(f("registration"))...)

	switch c.FailurePolicy {
	case FailIgnore, FailFail:
	default:
		errs = append(errs, field.NotSupported(f("failurePolicy"), c.FailurePolicy, []string{string(FailIgnore), string(FailFail)}))
	}

	if len(errs) > 0 {
		return fmt.Errorf("invalid configuration: %w", errs.ToAggregate())
	}
	c.version = ""
	c.version = c.computeVersion()
	return nil
}

func (c *Config) validateRegistration(rp *field.Path) field.ErrorList {
	var errs field.ErrorList
	r := &c.Registration
	if r.ClassName != "" {
		if msgs := validation.IsQualifiedName(r.ClassName); len(msgs) > 0 {
			errs = append(errs, field.Invalid(rp.Child("className"), r.ClassName, "must be a spire-controller-manager class name such as "+DefaultClassName))
		}
	}
	for name, d := range map[string]Duration{"ttl": r.TTL, "jwtTtl": r.JWTTTL} {
		switch {
		case d.err != nil:
			errs = append(errs, field.Invalid(rp.Child(name), d.raw, "must be a duration such as 90s, 5m or 1h"))
		case d.Duration < 0:
			errs = append(errs, field.Invalid(rp.Child(name), d.raw, "must not be negative"))
		}
	}
	if !strings.Contains(r.SPIFFEIDTemplate, ".PodMeta.Namespace") {
		errs = append(errs, field.Invalid(rp.Child("spiffeIDTemplate"), r.SPIFFEIDTemplate, "must use {{ .PodMeta.Namespace }}, so that no two namespaces can be given the same SPIFFE ID"))
	}
	for i, td := range r.FederatesWith {
		if _, err := spiffeid.TrustDomainFromString(td); err != nil || strings.Contains(td, "://") {
			errs = append(errs, field.Invalid(rp.Child("federatesWith").Index(i), td, "must be a trust domain name such as partner.example"))
		} else if td == c.TrustDomain {
			errs = append(errs, field.Invalid(rp.Child("federatesWith").Index(i), td, "must differ from trustDomain"))
		}
	}
	if len(errs) > 0 {
		return errs
	}
	// The templates are parsed as spire-controller-manager's parser (ParseClusterSPIFFEIDSpec)
	// parses them: plain text/template. Its API package would pull controller-runtime into every
	// package that reads the configuration, so it is not called here; the registration package
	// runs it on every object before creating it, and its tests pin that both agree.
	t, err := template.New("spiffeID").Parse(r.SPIFFEIDTemplate)
	if err != nil {
		return append(errs, field.Invalid(rp.Child("spiffeIDTemplate"), r.SPIFFEIDTemplate, "rejected by spire-controller-manager's parser: invalid SPIFFEID template: "+err.Error()))
	}
	for i, d := range r.DNSNameTemplates {
		if _, err := template.New("dnsName").Parse(d); err != nil {
			errs = append(errs, field.Invalid(rp.Child("dnsNameTemplates").Index(i), d, "rejected by spire-controller-manager's parser: invalid dnsNameTemplate value: "+err.Error()))
		}
	}
	if len(errs) > 0 {
		return errs
	}
	c.spiffeIDTemplate = t
	return nil
}

func validateFileName(p *field.Path, name string) field.ErrorList {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 255 {
		return field.ErrorList{field.Invalid(p, name, "must be a bare file name such as spire-agent.sock (no '/')")}
	}
	return nil
}

func validateAbsPath(p *field.Path, v string) field.ErrorList {
	if !path.IsAbs(v) || path.Clean(v) != v || v == "/" || strings.ContainsAny(v, ":\x00") {
		return field.ErrorList{field.Invalid(p, v, "must be a clean absolute path other than / without ':', such as /spiffe-workload-api")}
	}
	return nil
}

// overlaps reports whether one of two clean absolute paths is, or is inside, the other.
func overlaps(a, b string) bool {
	return a == b || strings.HasPrefix(a, b+"/") || strings.HasPrefix(b, a+"/")
}
