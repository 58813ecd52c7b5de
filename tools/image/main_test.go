package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestProjectImage builds the project's two binaries as `make build` does, writes the project's
// image from the repository's Dockerfile as `make image` does, and reads the tarball back as
// containerd would: one image, named, for linux/amd64, running as the distroless nonroot user with
// the Dockerfile's entrypoint, command and ports, holding exactly the two binaries (executable,
// byte for byte what was built) and distroless' users and folders.
func TestProjectImage(t *testing.T) {
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	bin := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin+"/", "./cmd/spire-mesh-injector", "./cmd/spiffe-jwt-helper")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)

	tarPath := filepath.Join(t.TempDir(), "image.tar")
	const ref = "ghcr.io/spire-mesh-injector/spire-mesh-injector:test"
	require.NoError(t, run([]string{"-dockerfile", filepath.Join(root, "Dockerfile"), "-context", bin, "-ref", ref, "-o", tarPath}))

	dir := untar(t, tarPath)
	p, err := layout.FromPath(dir)
	require.NoError(t, err)
	idx, err := p.ImageIndex()
	require.NoError(t, err)
	im, err := idx.IndexManifest()
	require.NoError(t, err)
	require.Len(t, im.Manifests, 1)
	desc := im.Manifests[0]
	assert.Equal(t, ref, desc.Annotations["io.containerd.image.name"], "the name containerd imports it under")
	require.NotNil(t, desc.Platform)
	assert.Equal(t, "linux/amd64", desc.Platform.OS+"/"+desc.Platform.Architecture)

	img, err := p.Image(desc.Digest)
	require.NoError(t, err)
	cf, err := img.ConfigFile()
	require.NoError(t, err)
	assert.Equal(t, "65532:65532", cf.Config.User, "non-root, distroless' nonroot")
	assert.Equal(t, []string{"/spire-mesh-injector"}, cf.Config.Entrypoint)
	assert.Equal(t, []string{"serve"}, cf.Config.Cmd)
	assert.Equal(t, map[string]struct{}{"9443/tcp": {}, "8081/tcp": {}, "8443/tcp": {}}, cf.Config.ExposedPorts)
	assert.Equal(t, "linux", cf.OS)

	layers, err := img.Layers()
	require.NoError(t, err)
	require.Len(t, layers, 1)
	rc, err := layers[0].Uncompressed()
	require.NoError(t, err)
	defer rc.Close()
	files := map[string]*tar.Header{}
	contents := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		files[h.Name] = h
		if h.Typeflag == tar.TypeReg {
			contents[h.Name], err = io.ReadAll(tr)
			require.NoError(t, err)
		}
	}
	var regular []string
	for name, h := range files {
		if h.Typeflag == tar.TypeReg {
			regular = append(regular, name)
		}
	}
	assert.ElementsMatch(t, []string{"spire-mesh-injector", "spiffe-jwt-helper", "etc/passwd", "etc/group"}, regular)
	for _, b := range []string{"spire-mesh-injector", "spiffe-jwt-helper"} {
		want, err := os.ReadFile(filepath.Join(bin, b))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(want, contents[b]), "%s is the built binary", b)
		assert.Equal(t, int64(0o755), files[b].Mode&0o777, "%s is executable by anyone", b)
		assert.Zero(t, files[b].Uid, "%s is root's: the workload cannot change it", b)
	}
	assert.Contains(t, string(contents["etc/passwd"]), "nonroot:x:65532:65532:")
	assert.Equal(t, int64(0o1777), files["tmp/"].Mode&0o7777)
}

// TestDockerfileOutsideWhatTheToolReproduces: an instruction the tool cannot reproduce is an error,
// never an image that differs from the Dockerfile's.
func TestDockerfileOutsideWhatTheToolReproduces(t *testing.T) {
	for name, df := range map[string]string{
		"RUN in the final stage": "FROM a AS build\nFROM b\nRUN echo\n",
		"COPY from the context":  "FROM b\nCOPY main.go /main.go\n",
		"shell-form entrypoint":  "FROM b\nENTRYPOINT /x serve\n",
	} {
		t.Run(name, func(t *testing.T) {
			var s Spec
			assert.Error(t, s.FromDockerfile([]byte(df), t.TempDir()))
		})
	}
}

func untar(t *testing.T, file string) string {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(file)
	require.NoError(t, err)
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		require.NoError(t, err)
		p := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			require.NoError(t, os.MkdirAll(p, 0o755))
			continue
		}
		b, err := io.ReadAll(tr)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(p, b, 0o644))
	}
}
