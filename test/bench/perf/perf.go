// Package perf holds what the performance programs of `make bench` share (test/bench/load,
// test/bench/scale, test/bench/helpercost, test/bench/benchratio): running the shipped `serve`
// binary against a control plane (as a process, with test/fixtures/proc, which also reads its
// memory and CPU time from /proc), admitting pods to it, scraping Prometheus text metrics, and
// printing each figure as one greppable line:
//
//	BENCH <figure-name>: <value> (target <target>) met|missed
//
// Measurements are taken from outside the measured process, as an operator would see them, so
// the programs add no instrumentation to the binaries they measure.
package perf

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
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

// MiB formats bytes in MiB with one decimal.
func MiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
