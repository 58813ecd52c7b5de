// Package version holds the build's version, set at link time with
// -X github.com/spire-mesh-injector/spire-mesh-injector/version.Version=vX.Y.Z.
package version

// Version is the release version; it also tags the default JWT helper image.
var Version = "v0.1.0"

// Commit is the source commit the binary was built from.
var Commit = "unknown"
