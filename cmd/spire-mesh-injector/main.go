// Command spire-mesh-injector is a mutating admission webhook that wires pods to SPIRE for Istio
// meshes (OpenShift Service Mesh 3) with Red Hat's Zero Trust Workload Identity Manager or upstream
// SPIRE, spire-controller-manager and the SPIFFE CSI driver.
//
//	spire-mesh-injector serve   [--config FILE] [--cert-dir DIR] ...   the webhook server
//	spire-mesh-injector inject  -f FILE|- [--config FILE] ...          offline preview
//	spire-mesh-injector check   [-n NS] [-o json] ...                  read-only cluster diagnosis
//	spire-mesh-injector version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

const usage = `spire-mesh-injector wires pods to SPIRE at admission for Istio meshes.

Usage:
  spire-mesh-injector serve   [flags]   run the mutating admission webhook server
  spire-mesh-injector inject  -f FILE   print manifests as the webhook would mutate them (-f - reads stdin)
  spire-mesh-injector check   [flags]   read the cluster and report why workloads would have no SPIRE identity
  spire-mesh-injector version           print the version

Run 'spire-mesh-injector <command> -h' for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes one command and returns the process exit status: 0 on success, 1 on failure (and
// when inject --diff shows changes), 2 on a usage error, 3 when check ran and found a FAIL or
// inject --strict left a pod template unwired (so that scripts can tell "something to fix" from
// "the command could not run").
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = runServe(args[1:], stderr)
	case "inject":
		err = runInject(args[1:], stdin, stdout, stderr)
	case "check":
		err = runCheck(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		err = runVersion(stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, errCheckFailed):
		return 3
	case errors.Is(err, errChanges):
		return 1
	case errors.Is(err, errStrict):
		fmt.Fprintf(stderr, "spire-mesh-injector %s: %v\n", args[0], err)
		return 3
	default:
		fmt.Fprintf(stderr, "spire-mesh-injector %s: %v\n", args[0], err)
		return 1
	}
}

// errUsage marks a command-line mistake already reported by the flag package.
var errUsage = errors.New("usage")

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}
