package check

import (
	"context"
	"fmt"
	"path"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
)

// UseConfig sets the configuration the findings compare against, and says in ConfigSource where it
// came from: the file at file when one is named (an error if it does not load: the user asked for
// it), else the webhook's own, read from its Deployment and ConfigMap (ClusterConfig), else the
// built-in defaults, with why the webhook's could not be read — the config finding then warns that
// the report compares against defaults.
func (o *Options) UseConfig(ctx context.Context, c client.Reader, file string, deployment types.NamespacedName) error {
	if file != "" {
		cfg, err := config.Load(file)
		if err != nil {
			return err
		}
		o.Config, o.ConfigSource, o.ConfigFromDefaults = cfg, "file "+file, false
		return nil
	}
	cfg, src, err := ClusterConfig(ctx, c, deployment)
	if err != nil {
		o.Config, o.ConfigSource, o.ConfigFromDefaults = config.Default(), err.Error(), true
		return nil
	}
	o.Config, o.ConfigSource, o.ConfigFromDefaults = cfg, src, false
	return nil
}

// ClusterConfig reads the configuration the webhook runs with: the --config argument of the
// Deployment's serve container, the ConfigMap volume that file is mounted from, and its key,
// parsed and validated as `serve` parses it. It returns the configuration and a description of
// where it came from. Reading the running configuration, rather than assuming defaults, is what
// lets the check compare the cluster against what the webhook actually does.
func ClusterConfig(ctx context.Context, c client.Reader, deployment types.NamespacedName) (*config.Config, string, error) {
	d := &appsv1.Deployment{}
	if err := c.Get(ctx, deployment, d); err != nil {
		return nil, "", fmt.Errorf("reading Deployment %s: %w", deployment, err)
	}
	spec := d.Spec.Template.Spec
	for _, ctr := range spec.Containers {
		file := configArg(ctr.Args)
		if file == "" {
			continue
		}
		for _, m := range ctr.VolumeMounts {
			rel, ok := strings.CutPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
			if !ok {
				continue
			}
			if m.SubPath != "" {
				rel = path.Join(m.SubPath, rel)
			}
			for _, v := range spec.Volumes {
				if v.Name != m.Name || v.ConfigMap == nil {
					continue
				}
				key := rel
				for _, item := range v.ConfigMap.Items {
					if item.Path == rel {
						key = item.Key
					}
				}
				return readConfigMap(ctx, c, types.NamespacedName{Namespace: deployment.Namespace, Name: v.ConfigMap.Name}, key)
			}
		}
		return nil, "", fmt.Errorf("deployment %s: --config=%s is not in a ConfigMap volume", deployment, file)
	}
	return config.Default(), fmt.Sprintf("built-in defaults (Deployment %s runs without --config)", deployment), nil
}

func readConfigMap(ctx context.Context, c client.Reader, key types.NamespacedName, dataKey string) (*config.Config, string, error) {
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, key, cm); err != nil {
		return nil, "", fmt.Errorf("reading ConfigMap %s: %w", key, err)
	}
	raw, ok := cm.Data[dataKey]
	if !ok {
		return nil, "", fmt.Errorf("ConfigMap %s has no key %s", key, dataKey)
	}
	src := fmt.Sprintf("ConfigMap %s key %s", key, dataKey)
	cfg, err := config.Parse([]byte(raw))
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", src, err)
	}
	return cfg, src, nil
}

// configArg returns the value of --config (or -config) in a container's arguments.
func configArg(args []string) string {
	for i, a := range args {
		for _, prefix := range []string{"--config", "-config"} {
			if v, ok := strings.CutPrefix(a, prefix+"="); ok {
				return v
			}
			if a == prefix && i+1 < len(args) {
				return args[i+1]
			}
		}
	}
	return ""
}
