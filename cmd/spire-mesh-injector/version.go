package main

import (
	"fmt"
	"io"
	"runtime"

	"github.com/spire-mesh-injector/spire-mesh-injector/version"
)

func runVersion(stdout io.Writer) error {
	_, err := fmt.Fprintf(stdout, "spire-mesh-injector %s (commit %s, %s)\n", version.Version, version.Commit, runtime.Version())
	return err
}
