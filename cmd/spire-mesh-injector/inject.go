package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/spire-mesh-injector/spire-mesh-injector/config"
	"github.com/spire-mesh-injector/spire-mesh-injector/mutators"
	"github.com/spire-mesh-injector/spire-mesh-injector/preview"
)

func runInject(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("f", "", "manifest file to read (YAML or JSON, multi-document, kind: List); - reads standard input")
	configPath := fs.String("config", "", "configuration file (default: the built-in configuration, ZTWIM on OpenShift)")
	namespace := fs.String("namespace", "default", "namespace assumed for objects that name none")
	registrations := fs.Bool("registrations", false, "also print the ClusterSPIFFEIDs that admission would ensure")
	diff := fs.Bool("diff", false, "print a unified diff of each document the webhook changes instead of the manifests; exit 1 if any would change, 0 if none (like diff)")
	strict := fs.Bool("strict", false, "exit 3 if any object holding a pod template comes out unwired (each is reported on standard error with the reason)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: spire-mesh-injector inject -f FILE|- [flags]\n\n"+
			"Prints the manifests with every workload's pod template mutated as the webhook would mutate it,\n"+
			"as if the namespace were opted in (a pod's %s=%s label still wins). Every object holding a pod\n"+
			"template that comes out unwired, and every warning admission would give, is reported on standard\n"+
			"error.\n\nFlags:\n", "spire-injection", "disabled")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *file == "" {
		fmt.Fprintln(stderr, "flag -f is required: a manifest file, or - for standard input")
		fs.Usage()
		return errUsage
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	in := stdin
	if *file != "-" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	sum, err := preview.Inject(in, stdout, mutators.NewChain(cfg), preview.Options{Namespace: *namespace, Registrations: *registrations, Report: stderr, Diff: *diff})
	if err != nil {
		if *file != "-" {
			return fmt.Errorf("%s: %w", *file, err)
		}
		return err
	}
	switch {
	case *strict && sum.Reported > 0:
		return fmt.Errorf("%w: %d object(s) holding a pod template not wired (--strict)", errStrict, sum.Reported)
	case *diff && sum.Changed > 0:
		return errChanges
	}
	return nil
}

// errChanges: inject --diff found documents the webhook changes (exit 1, like diff, with no
// message beyond the diff itself).
var errChanges = errors.New("changes")

// errStrict: inject --strict reported objects it left unwired (exit 3).
var errStrict = errors.New("inject")
