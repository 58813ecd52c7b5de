package registration

import (
	"testing"
	"time"

	spirev1alpha1 "github.com/spiffe/spire-controller-manager/api/v1alpha1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/spire-mesh-injector/spire-mesh-injector/annotations"
	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/identity"
	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/podtest"
)

func cfg(t *testing.T, extra string) *config.Config { return podtest.ConfigWith(t, extra) }

func TestBuild(t *testing.T) {
	c := cfg(t, "registration:\n  ttl: 1h\n  jwtTtl: 5m\n  federatesWith: [partner.example]\n  autoPopulateDNSNames: true\n  dnsNameTemplates: ['{{ .PodMeta.Name }}.svc']\n")
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "payments", UID: "uid-1",
		Annotations: map[string]string{annotations.FederatesWithAnnotation: "bank.example, partner.example"}}}
	obj, err := Build(c, "payments", ns)
	require.NoError(t, err)
	assert.Equal(t, "spire.spiffe.io/v1alpha1", obj.APIVersion)
	assert.Equal(t, "ClusterSPIFFEID", obj.Kind)
	assert.Equal(t, "spire-mesh-injector-payments", obj.Name)
	assert.Equal(t, map[string]string{identity.ManagedByLabel: identity.ManagedByValue, identity.NamespaceLabel: "payments"}, obj.Labels)
	assert.Equal(t, []metav1.OwnerReference{{APIVersion: "v1", Kind: "Namespace", Name: "payments", UID: "uid-1"}}, obj.OwnerReferences)
	s := obj.Spec
	assert.Equal(t, config.DefaultClassName, s.ClassName)
	assert.Equal(t, config.DefaultSPIFFEIDTemplate, s.SPIFFEIDTemplate)
	assert.Equal(t, time.Hour, s.TTL.Duration)
	assert.Equal(t, 5*time.Minute, s.JWTTTL.Duration)
	assert.Equal(t, []string{"bank.example", "partner.example"}, s.FederatesWith, "sorted, without duplicates")
	assert.True(t, s.AutoPopulateDNSNames)
	assert.Equal(t, []string{"{{ .PodMeta.Name }}.svc"}, s.DNSNameTemplates)
	assert.False(t, s.Fallback)

	parsed, err := spirev1alpha1.ParseClusterSPIFFEIDSpec(&s)
	require.NoError(t, err)
	assert.True(t, parsed.NamespaceSelector.Matches(labels.Set{"kubernetes.io/metadata.name": "payments"}))
	assert.False(t, parsed.NamespaceSelector.Matches(labels.Set{"kubernetes.io/metadata.name": "other"}))
	for _, tt := range []struct {
		labels labels.Set
		want   bool
	}{
		{labels.Set{annotations.InjectedLabel: "mesh"}, true},
		{labels.Set{annotations.InjectedLabel: "workload"}, true},
		{labels.Set{annotations.InjectedLabel: "mesh", annotations.InjectionLabel: "disabled"}, false},
		{labels.Set{annotations.ManagedIdentityLabel: "true"}, false},
		{labels.Set{annotations.InjectedLabel: "yes"}, false},
	} {
		assert.Equal(t, tt.want, parsed.PodSelector.Matches(tt.labels), "%v", tt.labels)
	}
}

func TestBuildRejectsBadNamespaceAnnotations(t *testing.T) {
	c := cfg(t, "")
	for value, want := range map[string]string{
		"https://bank":    `entry 1 "https://bank" is not a trust domain name`,
		"ok.example,Bad!": `entry 2 "Bad!" is not a trust domain name`,
		"example.org":     "is the cluster's own trust domain",
	} {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: map[string]string{annotations.FederatesWithAnnotation: value}}}
		_, err := Build(c, "n", ns)
		require.ErrorContains(t, err, want)
		assert.Contains(t, err.Error(), annotations.FederatesWithAnnotation)
	}
}

// TestConfigAgreesWithSCMParser pins the configuration's own template parsing (config cannot import
// spire-controller-manager's API package, which pulls in controller-runtime) to
// spire-controller-manager's parser: whatever the configuration accepts, Build, which runs that
// parser, accepts too, and what the parser refuses the configuration refuses.
func TestConfigAgreesWithSCMParser(t *testing.T) {
	for _, reg := range []string{
		"{spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}'}",
		"{spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/c/{{ .ClusterName }}/ns/{{ .PodMeta.Namespace }}/{{ .PodMeta.Labels.app }}'}",
		"{spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}', dnsNameTemplates: ['{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc']}",
		"{spiffeIDTemplate: 'spiffe://{{ .TrustDomain }/ns/{{ .PodMeta.Namespace }}'}",
		"{spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}{{ end }}'}",
		"{spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}', dnsNameTemplates: ['{{ .PodMeta.Name ']}",
		"{spiffeIDTemplate: 'spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}', federatesWith: [partner.example]}",
	} {
		scm := spirev1alpha1.ClusterSPIFFEIDSpec{}
		require.NoError(t, yaml.Unmarshal([]byte(reg), &scm), reg)
		_, scmErr := spirev1alpha1.ParseClusterSPIFFEIDSpec(&scm)
		c, cfgErr := config.Parse([]byte("trustDomain: example.org\nclusterName: c1\nregistration: " + reg + "\n"))
		assert.Equal(t, scmErr == nil, cfgErr == nil, "%s: parser says %v, configuration says %v", reg, scmErr, cfgErr)
		if cfgErr == nil {
			_, err := Build(c, "n", nil)
			assert.NoError(t, err, reg)
		}
	}
}
