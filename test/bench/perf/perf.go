// Package perf holds what the performance programs of `make bench` share (test/bench/load,
// test/bench/scale, test/bench/helpercost, test/bench/benchratio): building and running the real
// binaries as processes, reading a process's memory and CPU time from /proc, scraping Prometheus
// text metrics, and printing each figure as one greppable line:
//
//	BENCH <figure-name>: <value> (target <target>) met|missed
//
// Measurements are taken from outside the measured process, as an operator would see them, so
// the programs add no instrumentation to the binaries they measure.
package perf

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/fixtures/controlplane"
)

// Line prints one figure in the form `make bench` promises. A figure without a numeric target
// still states what it is held to, so every line reads met or missed.
func Line(w io.Writer, figure, value, target string, met bool) {
	verdict := "met"
	if !met {
		verdict = "missed"
	}
	fmt.Fprintf(w, "BENCH %s: %s (target %s) %s\n", figure, value, target, verdict)
}

// WriteJSON writes v, indented, to path (the raw results under bench-results/), creating its
// folder.
func WriteJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Build builds the main package pkg (relative to the repository, e.g. ./cmd/spire-mesh-injector)
// into dir and returns the binary's path. It builds as `make build` does (static, stripped), so
// the memory measured is the shipped binary's.
func Build(dir, pkg string) (string, error) {
	out := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = controlplane.Root()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

// Process is a started command whose exit is watched, so a caller waiting for it to become
// ready can tell "not yet" from "gone".
type Process struct {
	Cmd *exec.Cmd
	// Done closes when the process has exited; Err then holds cmd.Wait's result.
	Done chan struct{}
	Err  error
}

// Start starts cmd and watches it.
func Start(cmd *exec.Cmd) (*Process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{Cmd: cmd, Done: make(chan struct{})}
	go func() { p.Err = cmd.Wait(); close(p.Done) }()
	return p, nil
}

// PID is the process id.
func (p *Process) PID() int { return p.Cmd.Process.Pid }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.Done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and waits for the process to exit, killing it after grace.
func (p *Process) Stop(grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.Done:
		return nil
	case <-time.After(grace):
		_ = p.Cmd.Process.Kill()
		<-p.Done
		return fmt.Errorf("%s did not stop within %s: killed", filepath.Base(p.Cmd.Path), grace)
	}
}

// Memory is a process's memory as the kernel accounts it, in bytes.
type Memory struct {
	// RSS is VmRSS: resident memory now, what a container's memory limit is held to (with the
	// page cache the process causes, which these programs do not have).
	RSS int64 `json:"rssBytes"`
	// HWM is VmHWM: the peak RSS since the process started.
	HWM int64 `json:"hwmBytes"`
}

// ReadMemory reads /proc/<pid>/status.
func ReadMemory(pid int) (Memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	defer f.Close()
	var m Memory
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch key {
		case "VmRSS":
			dst = &m.RSS
		case "VmHWM":
			dst = &m.HWM
		default:
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("/proc/%d/status %s: %w", pid, key, err)
		}
		*dst = kb << 10
	}
	if m.RSS == 0 {
		return Memory{}, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return m, sc.Err()
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat. Linux fixes it at 100
// on every architecture Go supports, so reading it through sysconf (cgo) buys nothing.
const clockTicks = 100

// CPUTime is the user plus system CPU time pid has used, from /proc/<pid>/stat.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces: count fields after it.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// Metrics is one scrape of a Prometheus text endpoint: each sample by its series as written
// (name{labels}).
type Metrics map[string]float64

// Sum adds the samples of metric name whose labels include every label=value of match.
func (m Metrics) Sum(name string, match ...string) float64 {
	var sum float64
	for series, v := range m {
		n, labels, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		ok := true
		for i := 0; i+1 < len(match); i += 2 {
			ok = ok && strings.Contains(labels, match[i]+`="`+match[i+1]+`"`)
		}
		if ok {
			sum += v
		}
	}
	return sum
}

// Scrape reads url's Prometheus text exposition with client.
func Scrape(ctx context.Context, client *http.Client, url string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	m := Metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// TLSClient is an HTTPS client trusting caPEM only, with conns kept-alive connections at most:
// what the API server uses to call a webhook.
func TLSClient(caPEM []byte, conns int, timeout time.Duration) (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no certificate in the CA bundle")
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			MaxConnsPerHost:     conns,
			IdleConnTimeout:     90 * time.Second,
			ForceAttemptHTTP2:   false,
		},
	}, nil
}

// Poll calls f every interval until it returns true, an error, or timeout passes.
func Poll(ctx context.Context, timeout, interval time.Duration, what string, f func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		done, err := f(ctx)
		if err == nil && done {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%s: not within %s: %w", what, timeout, last)
			}
			return fmt.Errorf("%s: not within %s", what, timeout)
		case <-time.After(interval):
		}
	}
}

// MiB formats bytes in MiB with one decimal.
func MiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
