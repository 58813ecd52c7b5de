// Command benchpods writes the pods the performance figures are measured on — typical.json (the
// typical post-Istio pod) and 64KB.json (its 64 KB enlargement) — into a folder, for the
// benchmark of Istio's own injector in the separate module test/istio, which cannot import this
// module (it pins another controller-runtime).
//
//	go run ./test/bench/benchpods DIR
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/benchpod"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: benchpods DIR")
		os.Exit(2)
	}
	if err := write(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "benchpods:", err)
		os.Exit(1)
	}
}

func write(dir string) error {
	typical, err := benchpod.Load(benchpod.TypicalFixture)
	if err != nil {
		return err
	}
	large, err := benchpod.Enlarge(typical, benchpod.LargeSize)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, pod := range map[string]any{"typical": typical, "64KB": large} {
		b, err := json.Marshal(pod)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name+".json"), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
