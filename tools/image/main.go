// Command image writes a container image as an OCI image-layout tarball, with no Docker engine and
// no registry (go-containerregistry, from nothing: no base image is pulled). `make image` uses it
// for the project's image; the node suite (test/suites/node) for every image its node runs, which
// it then imports with `ctr images import`.
//
// The project's image is read from the Dockerfile's final stage, so that it holds what `docker
// build` would put there and nothing else:
//
//	image -dockerfile Dockerfile -context bin -ref ghcr.io/spire-mesh-injector/spire-mesh-injector:v0.1.0 -o bin/image.tar
//
// Each `COPY --from=<stage> /out/<file> <dst>` takes <file> from the -context folder (where `make
// build` wrote the binaries the build stage would have); USER, EXPOSE, ENV, WORKDIR, ENTRYPOINT and
// CMD become the image's configuration. Any other instruction in that stage is an error: the image
// could then differ from the Dockerfile's. The distroless base is replaced by what the binaries
// need of it: /etc/passwd and /etc/group naming root, nonroot (65532) and nobody, /home/nonroot and
// /tmp, as distroless/static lays them out.
//
// Any other image is given file by file:
//
//	image -ref smi.local/pause:1 -o pause.tar -add /path/to/pause=/pause -entrypoint /pause -user 65535:65535
//
// -libs also copies the shared libraries (and the dynamic loader) that the ELF files added need,
// from this machine: for a cgo binary such as spire-server, as a distroless/base image carries glibc.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	var s Spec
	var adds, env repeated
	out := fs.String("o", "", "the OCI tarball to write (required)")
	fs.StringVar(&s.Ref, "ref", "", "the image's name, as containerd imports it (required)")
	dockerfile := fs.String("dockerfile", "", "take the image from this Dockerfile's final stage")
	contextDir := fs.String("context", ".", "with -dockerfile: the folder holding the files the build stage writes to /out")
	fs.Var(&adds, "add", "SRC=DST: the file SRC of this machine at DST in the image, mode kept (repeatable)")
	fs.BoolVar(&s.Libs, "libs", false, "add the shared libraries the ELF files need, and their loader")
	entrypoint := fs.String("entrypoint", "", "the entrypoint, words separated by spaces")
	cmd := fs.String("cmd", "", "the command (arguments to the entrypoint), words separated by spaces")
	fs.StringVar(&s.User, "user", "", "uid:gid the image runs as")
	fs.StringVar(&s.WorkingDir, "workdir", "/", "the working folder")
	fs.Var(&env, "env", "K=V in the image's environment (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || s.Ref == "" {
		return errors.New("-o and -ref are required")
	}
	if *dockerfile != "" {
		df, err := os.ReadFile(*dockerfile)
		if err != nil {
			return err
		}
		if err := s.FromDockerfile(df, *contextDir); err != nil {
			return fmt.Errorf("%s: %w", *dockerfile, err)
		}
	}
	for _, a := range adds {
		src, dst, ok := strings.Cut(a, "=")
		if !ok || !path.IsAbs(dst) {
			return fmt.Errorf("-add %q: want SRC=DST with an absolute DST", a)
		}
		s.Files = append(s.Files, File{Src: src, Dst: dst})
	}
	if *entrypoint != "" {
		s.Entrypoint = strings.Fields(*entrypoint)
	}
	if *cmd != "" {
		s.Cmd = strings.Fields(*cmd)
	}
	s.Env = append(s.Env, env...)
	return s.Write(*out)
}

// File is one file of the image: Src on this machine, Dst in the image.
type File struct {
	Src, Dst string
	// Mode overrides the source file's permission bits when not 0.
	Mode os.FileMode
}

// Spec is everything the image holds.
type Spec struct {
	Ref        string
	Files      []File
	Libs       bool
	Passwd     bool
	Entrypoint []string
	Cmd        []string
	User       string
	WorkingDir string
	Env        []string
	Ports      []string
}

// FromDockerfile reads the final stage of a Dockerfile into s; files its COPY --from instructions
// take from the build stage's /out folder are read from contextDir.
func (s *Spec) FromDockerfile(df []byte, contextDir string) error {
	lines := logicalLines(df)
	last := -1
	for i, l := range lines {
		if strings.EqualFold(firstWord(l), "FROM") {
			last = i
		}
	}
	if last < 0 {
		return errors.New("no FROM")
	}
	// The distroless base: its users and folders.
	s.Passwd = true
	for _, l := range lines[last+1:] {
		instr, rest := firstWord(l), strings.TrimSpace(l[len(firstWord(l)):])
		switch strings.ToUpper(instr) {
		case "COPY":
			f := strings.Fields(rest)
			if len(f) != 3 || !strings.HasPrefix(f[0], "--from=") {
				return fmt.Errorf("COPY %s: only `COPY --from=<stage> /out/<file> <dst>` is supported", rest)
			}
			src, ok := strings.CutPrefix(f[1], "/out/")
			if !ok || strings.Contains(src, "/") {
				return fmt.Errorf("COPY %s: the source must be a file of the build stage's /out", rest)
			}
			s.Files = append(s.Files, File{Src: filepath.Join(contextDir, src), Dst: f[2]})
		case "USER":
			s.User = rest
		case "EXPOSE":
			for _, p := range strings.Fields(rest) {
				if !strings.Contains(p, "/") {
					p += "/tcp"
				}
				s.Ports = append(s.Ports, p)
			}
		case "ENV":
			k, v, ok := strings.Cut(rest, "=")
			if !ok || strings.ContainsAny(k, " \t") {
				return fmt.Errorf("ENV %s: only ENV K=V is supported", rest)
			}
			s.Env = append(s.Env, k+"="+v)
		case "WORKDIR":
			s.WorkingDir = rest
		case "ENTRYPOINT", "CMD":
			var words []string
			if err := json.Unmarshal([]byte(rest), &words); err != nil {
				return fmt.Errorf("%s %s: only the exec (JSON) form is supported: %w", instr, rest, err)
			}
			if strings.EqualFold(instr, "CMD") {
				s.Cmd = words
			} else {
				s.Entrypoint = words
			}
		default:
			return fmt.Errorf("%s: not supported in the final stage (the image would differ from the Dockerfile's)", instr)
		}
	}
	return nil
}

// logicalLines are the Dockerfile's instructions: comments and blank lines dropped, continued
// lines joined.
func logicalLines(df []byte) []string {
	var out []string
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(df))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if c, ok := strings.CutSuffix(l, "\\"); ok {
			cur.WriteString(c + " ")
			continue
		}
		cur.WriteString(l)
		out = append(out, cur.String())
		cur.Reset()
	}
	return out
}

func firstWord(l string) string {
	if i := strings.IndexAny(l, " \t"); i >= 0 {
		return l[:i]
	}
	return l
}

// epoch is every file's time: the same inputs give the same image.
var epoch = time.Unix(0, 0).UTC()

// Write writes the image as a tarball of an OCI image layout, named s.Ref for containerd
// (io.containerd.image.name) and for OCI tools (org.opencontainers.image.ref.name).
func (s *Spec) Write(out string) error {
	layer, err := s.layer()
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint, cf.Config.Cmd = s.Entrypoint, s.Cmd
	cf.Config.User, cf.Config.WorkingDir = s.User, s.WorkingDir
	cf.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, s.Env...)
	if len(s.Ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range s.Ports {
			cf.Config.ExposedPorts[p] = struct{}{}
		}
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}

	dir, err := os.MkdirTemp("", "image-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img,
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}),
		layout.WithAnnotations(map[string]string{
			"io.containerd.image.name":          s.Ref,
			"org.opencontainers.image.ref.name": s.Ref,
		})); err != nil {
		return err
	}
	return tarDir(dir, out)
}

// layer is the image's one layer: the files, their folders, the distroless users if asked, and the
// shared libraries if asked.
func (s *Spec) layer() (v1.Layer, error) {
	type entry struct {
		hdr  tar.Header
		data []byte
	}
	entries := map[string]*entry{}
	addDirs := func(p string) {
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			name := strings.TrimPrefix(d, "/") + "/"
			if _, ok := entries[name]; !ok {
				entries[name] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: epoch}}
			}
		}
	}
	addFile := func(dst string, data []byte, mode os.FileMode) {
		addDirs(dst)
		name := strings.TrimPrefix(dst, "/")
		entries[name] = &entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(mode.Perm()), Size: int64(len(data)), ModTime: epoch}, data: data}
	}
	var elves []string
	for _, f := range s.Files {
		fi, err := os.Stat(f.Src)
		if err != nil {
			return nil, err
		}
		data, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, err
		}
		mode := fi.Mode()
		if f.Mode != 0 {
			mode = f.Mode
		}
		addFile(f.Dst, data, mode)
		if bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
			elves = append(elves, f.Src)
		}
	}
	if s.Libs {
		libs, err := sharedLibraries(elves)
		if err != nil {
			return nil, err
		}
		for _, l := range libs {
			data, err := os.ReadFile(l)
			if err != nil {
				return nil, err
			}
			addFile(l, data, 0o755)
		}
	}
	if s.Passwd {
		addFile("/etc/passwd", []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"), 0o644)
		addFile("/etc/group", []byte("root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"), 0o644)
		entries["home/"] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "home/", Mode: 0o755, ModTime: epoch}}
		entries["home/nonroot/"] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "home/nonroot/", Mode: 0o700, Uid: 65532, Gid: 65532, ModTime: epoch}}
		entries["tmp/"] = &entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: epoch}}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names) // parents sort before their children
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestSpeed))
}

// libDirs are where the dynamic loader of this machine (Debian, amd64) finds libraries.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/lib", "/usr/lib"}

// sharedLibraries lists, for the ELF files bins, their loader and every shared library they need,
// directly or through another library, as paths of this machine.
func sharedLibraries(bins []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	var visit func(file string) error
	visit = func(file string) error {
		f, err := elf.Open(file)
		if err != nil {
			return err
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				b, err := io.ReadAll(p.Open())
				if err != nil {
					return err
				}
				interp := strings.TrimRight(string(b), "\x00")
				if !seen[interp] {
					seen[interp] = true
					out = append(out, interp)
				}
			}
		}
		needed, err := f.ImportedLibraries()
		if err != nil {
			return err
		}
		for _, lib := range needed {
			found := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
					found = filepath.Join(d, lib)
					break
				}
			}
			if found == "" {
				return fmt.Errorf("%s needs %s, which is in none of %v", file, lib, libDirs)
			}
			if !seen[found] {
				seen[found] = true
				out = append(out, found)
				if err := visit(found); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for _, b := range bins {
		if err := visit(b); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// tarDir writes the folder dir as a tar file out (the form `ctr images import` reads an OCI
// layout in).
func tarDir(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		hdr.Name, hdr.ModTime = filepath.ToSlash(rel), epoch
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer src.Close()
			_, err = io.Copy(tw, src)
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
