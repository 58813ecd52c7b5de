package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spire-mesh-injector/spire-mesh-injector/check"
	"github.com/spire-mesh-injector/spire-mesh-injector/registration"
)

// errCheckFailed reports that the check ran and found at least one FAIL; the report itself has
// already been written, so nothing more is printed.
var errCheckFailed = errors.New("check found failures")

// listFlag collects a flag given several times or as a comma-separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

func runCheck(args []string, stdout, stderr io.Writer) error {
	// `check pod NAMESPACE/NAME [flags]` explains one pod.
	var pod *types.NamespacedName
	if len(args) > 0 && args[0] == "pod" {
		if len(args) < 2 || strings.HasPrefix(args[1], "-") {
			fmt.Fprintln(stderr, "check pod: allowed: check pod NAMESPACE/NAME [flags]")
			return errUsage
		}
		key, err := parseNamespacedName(args[1])
		if err != nil {
			fmt.Fprintf(stderr, "check pod: %v\n", err)
			return errUsage
		}
		pod, args = &key, args[2:]
	}
	var (
		namespaces, scmConfigs, agentConfigs       listFlag
		kubeconfig, kubeContext, configPath, out   string
		webhookNamespace, webhookName, istioConfig string
		timeout                                    time.Duration
	)
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
	fs.StringVar(&kubeContext, "context", "", "kubeconfig context (default: the current one)")
	fs.Var(&namespaces, "n", "namespace to check (repeatable, or comma-separated; default: every opted-in namespace)")
	fs.Var(&namespaces, "namespace", "same as -n")
	fs.StringVar(&out, "o", "table", "output format: table or json")
	fs.StringVar(&configPath, "config", "", "the webhook's configuration file (default: read from the webhook's Deployment and ConfigMap in the cluster)")
	fs.StringVar(&webhookNamespace, "webhook-namespace", "spire-mesh-injector", "namespace of the webhook's Deployment and configuration")
	fs.StringVar(&webhookName, "webhook-name", check.DefaultWebhookName, "name of the MutatingWebhookConfiguration")
	fs.StringVar(&istioConfig, "istio-config", check.DefaultIstioMeshConfig.String(), "Istio's mesh ConfigMap, NAMESPACE/NAME (key mesh)")
	fs.Var(&scmConfigs, "scm-config", "spire-controller-manager's ConfigMap, NAMESPACE/NAME (repeatable; default: spire-controller-manager in ZTWIM's namespace, spire-server, spire-system)")
	fs.Var(&agentConfigs, "agent-config", "the SPIRE agent's ConfigMap, NAMESPACE/NAME, key agent.conf (repeatable; default: spire-agent in ZTWIM's namespace, spire-system, spire-server)")
	fs.DurationVar(&timeout, "timeout", 30*time.Second, "give up after this long")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: spire-mesh-injector check [flags]\n"+
			"       spire-mesh-injector check pod NAMESPACE/NAME [flags]\n\n"+
			"Reads the cluster (never writes) and reports, per opted-in namespace, why workloads would have no\n"+
			"SPIRE identity: one line per finding, OK, WARN or FAIL, with what, why and how to fix.\n"+
			"check pod explains one pod: which registration gives it which SPIFFE ID, how it is wired, which\n"+
			"policies admit it.\n"+
			"Exit status: 0 nothing FAILs, 3 something FAILs, 1 the check could not run, 2 usage error.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if out != "table" && out != "json" {
		fmt.Fprintf(stderr, "-o %q: allowed: table, json\n", out)
		return errUsage
	}
	if pod != nil && len(namespaces) > 0 {
		fmt.Fprintln(stderr, "check pod: -n does not apply (the pod names its namespace)")
		return errUsage
	}
	o := check.Options{Namespaces: namespaces, WebhookName: webhookName}
	var err error
	if o.IstioMeshConfig, err = parseNamespacedName(istioConfig); err != nil {
		fmt.Fprintf(stderr, "--istio-config: %v\n", err)
		return errUsage
	}
	for _, s := range scmConfigs {
		key, err := parseNamespacedName(s)
		if err != nil {
			fmt.Fprintf(stderr, "--scm-config: %v\n", err)
			return errUsage
		}
		o.SCMConfigMaps = append(o.SCMConfigMaps, key)
	}
	for _, s := range agentConfigs {
		key, err := parseNamespacedName(s)
		if err != nil {
			fmt.Fprintf(stderr, "--agent-config: %v\n", err)
			return errUsage
		}
		o.AgentConfigMaps = append(o.AgentConfigMaps, key)
	}

	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	restConfig, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext}).ClientConfig()
	if err != nil {
		return err
	}
	restConfig.Timeout = timeout
	c, err := client.New(restConfig, client.Options{Scheme: registration.Scheme()})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	// Without --config the webhook's own configuration is read from the cluster; when it cannot be,
	// the report is still worth having: the findings compare against the defaults, and the config
	// finding says so and why.
	if err := o.UseConfig(ctx, c, configPath, types.NamespacedName{Namespace: webhookNamespace, Name: "spire-mesh-injector"}); err != nil {
		return err
	}

	var report *check.Report
	if pod != nil {
		report, err = check.RunPod(ctx, c, o, pod.Namespace, pod.Name)
	} else {
		report, err = check.Run(ctx, c, o)
	}
	if err != nil {
		return err
	}
	if out == "json" {
		err = check.WriteJSON(stdout, report)
	} else {
		err = check.WriteTable(stdout, report)
	}
	if err != nil {
		return err
	}
	if report.Worst() == check.Fail {
		return errCheckFailed
	}
	return nil
}

func parseNamespacedName(s string) (types.NamespacedName, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return types.NamespacedName{}, fmt.Errorf("%q: allowed: NAMESPACE/NAME", s)
	}
	return types.NamespacedName{Namespace: ns, Name: name}, nil
}
