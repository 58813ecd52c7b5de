package xds

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pkg/jwt"
	"istio.io/istio/pkg/test"
	"sigs.k8s.io/yaml"
)

// manifestsDir is the repository's reference configurations, absolute because pilot-agent reads
// the downward-API files relative to its working directory and the tests that run it change
// theirs.
var manifestsDir = mustAbs("../../../manifests")

// testdataDir holds what the reference configurations are written for but do not ship: the sample
// workloads and ZTWIM's OIDC provider Service (testdata/workloads.yaml), an external host.
var testdataDir = mustAbs("testdata")

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return a
}

// object is one YAML document of a manifest, with the fields every test looks at decoded.
type object struct {
	File       string
	Raw        []byte
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
}

// key is how tests name an object: namespace/name, or name for a cluster-scoped one.
func (o object) key() string {
	if o.Metadata.Namespace == "" {
		return o.Metadata.Name
	}
	return o.Metadata.Namespace + "/" + o.Metadata.Name
}

// decode decodes the whole document into v.
func (o object) decode(t *testing.T, v any) {
	t.Helper()
	if err := yaml.Unmarshal(o.Raw, v); err != nil {
		t.Fatalf("%s: %s %s: %v", o.File, o.Kind, o.key(), err)
	}
}

// readObjects reads every document of every .yaml file under dir, in file order.
func readObjects(t *testing.T, dir string) []object {
	t.Helper()
	objs, err := loadObjects(dir)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func loadObjects(dir string) ([]object, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".yaml") {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var out []object
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		rel, _ := filepath.Rel(filepath.Dir(dir), f)
		for _, doc := range bytes.Split(b, []byte("\n---")) {
			o := object{File: rel, Raw: doc}
			if err := yaml.Unmarshal(doc, &o); err != nil {
				return nil, fmt.Errorf("%s: %v", rel, err)
			}
			if o.Kind != "" {
				out = append(out, o)
			}
		}
	}
	return out, nil
}

// isIstioConfig reports whether o is an Istio resource istiod reads (security and networking).
func (o object) isIstioConfig() bool {
	return strings.HasPrefix(o.APIVersion, "security.istio.io/") || strings.HasPrefix(o.APIVersion, "networking.istio.io/")
}

// sailValues is spec.values of the Sail operator's Istio resource in manifests/ossm3: the Helm
// values Istio's installer renders istiod and the mesh configuration from.
func sailValues(objs []object) (map[string]any, error) {
	var found []map[string]any
	for _, o := range objs {
		if o.APIVersion == "sailoperator.io/v1" && o.Kind == "Istio" {
			var r struct {
				Spec struct {
					Values map[string]any `json:"values"`
				} `json:"spec"`
			}
			if err := yaml.Unmarshal(o.Raw, &r); err != nil {
				return nil, fmt.Errorf("%s: %v", o.File, err)
			}
			found = append(found, r.Spec.Values)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("manifests/ has %d Sail Istio resources; the mesh is configured by exactly one", len(found))
	}
	return found[0], nil
}

// pilotEnv is istiod's environment as the Istio resource sets it (values.pilot.env).
func pilotEnv(t *testing.T, values map[string]any) map[string]string {
	t.Helper()
	pilot, _ := values["pilot"].(map[string]any)
	env, _ := pilot["env"].(map[string]any)
	out := map[string]string{}
	for k, v := range env {
		s, ok := v.(string)
		if !ok {
			t.Fatalf("values.pilot.env.%s is %T: Kubernetes takes environment values as strings; quote it", k, v)
		}
		out[k] = s
	}
	return out
}

// pilotFlags are the istiod feature flags this package applies, by environment variable: Istio
// reads each once at start-up, so a test sets the variable the way istiod would have read it.
// A variable the Istio resource sets that is not listed here fails the test rather than being
// silently ignored.
var pilotFlags = map[string]func(t *testing.T, v string){
	"PILOT_JWT_ENABLE_REMOTE_JWKS": func(t *testing.T, v string) {
		test.SetForTest(t, &features.JwksFetchMode, jwt.ConvertToJwksFetchMode(v))
	},
	"PILOT_SKIP_VALIDATE_TRUST_DOMAIN": func(t *testing.T, v string) {
		b, err := strconv.ParseBool(v)
		if err != nil {
			t.Fatalf("values.pilot.env.PILOT_SKIP_VALIDATE_TRUST_DOMAIN=%q: istiod would not start: %v", v, err)
		}
		test.SetForTest(t, &features.SkipValidateTrustDomain, b)
	},
}

// applyPilotEnv sets istiod's flags from env, each flag istiod would read at its default when
// the variable is absent.
func applyPilotEnv(t *testing.T, env map[string]string) {
	t.Helper()
	test.SetForTest(t, &features.JwksFetchMode, jwt.ConvertToJwksFetchMode("false"))
	test.SetForTest(t, &features.SkipValidateTrustDomain, false)
	for k, v := range env {
		set, ok := pilotFlags[k]
		if !ok {
			t.Fatalf("manifests/ossm3 sets istiod's %s, which this test does not apply: add it to pilotFlags", k)
		}
		set(t, v)
	}
}
