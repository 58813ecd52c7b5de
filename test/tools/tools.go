// Package tools finds the real components test/tools/build.sh builds from the Go module proxy:
// each build prints a folder, which reaches the tests in an environment variable.
package tools

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// ErrNotBuilt says a tool folder's environment variable is not set.
var ErrNotBuilt = errors.New("not built")

// Dir returns the folder named by the environment variable env, after checking it holds bins.
// target is the build.sh target that builds them, for the message.
func Dir(env, target string, bins ...string) (string, error) {
	dir := os.Getenv(env)
	if dir == "" {
		return "", fmt.Errorf("%w: %s is not set: build %v with `test/tools/build.sh %s` (make test does) and point %s at the folder it prints",
			ErrNotBuilt, env, bins, target, env)
	}
	for _, b := range bins {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("%s=%s: %w", env, dir, err)
		}
	}
	return dir, nil
}

// Require is Dir for a test: without the tools it skips, unless the environment variable
// requireEnv is set (as `make test` sets it), in which case it fails.
func Require(t testing.TB, requireEnv, env, target string, bins ...string) string {
	t.Helper()
	dir, err := Dir(env, target, bins...)
	if errors.Is(err, ErrNotBuilt) && os.Getenv(requireEnv) == "" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return dir
}
