package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestFiguresAreTheDocs: the figures `make bench` checks for are the ones docs/performance.md's
// table promises, no more and no fewer.
func TestFiguresAreTheDocs(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/performance.md")
	require.NoError(t, err)
	var documented []string
	inTable := false
	for _, l := range strings.Split(string(doc), "\n") {
		switch {
		case strings.HasPrefix(l, "| # | Figure |"):
			inTable = true
		case inTable && !strings.HasPrefix(l, "|"):
			inTable = false
		case inTable:
			cols := strings.Split(l, "|")
			if len(cols) < 3 {
				continue
			}
			for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(cols[2], -1) {
				documented = append(documented, m[1])
			}
		}
	}
	var promised []string
	for _, s := range figures {
		promised = append(promised, s.figures...)
	}
	slices.Sort(documented)
	slices.Sort(promised)
	require.NotEmpty(t, documented, "docs/performance.md has a figures table")
	assert.Equal(t, documented, promised)
}

func writeBench(t *testing.T, dir, step string, lines ...string) {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(dir, step+".bench"), []byte(strings.Join(lines, "\n")+"\n"), 0o644))
}

func met(figure string) string { return "BENCH " + figure + ": 1x (target <=2x) met" }

// TestCheckFigures: a step passes only with every figure it promises, each once, each met.
func TestCheckFigures(t *testing.T) {
	all := func(t *testing.T) string {
		dir := t.TempDir()
		for _, s := range figures {
			var lines []string
			for _, f := range s.figures {
				lines = append(lines, met(f))
			}
			writeBench(t, dir, s.step, append([]string{"some other output"}, lines...)...)
		}
		return dir
	}
	steps := strings.Fields(stepNames())

	t.Run("every figure met", func(t *testing.T) {
		dir := all(t)
		summary := filepath.Join(dir, "summary.txt")
		require.NoError(t, checkFigures(dir, steps, summary))
		b, err := os.ReadFile(summary)
		require.NoError(t, err)
		assert.Equal(t, 14, strings.Count(string(b), "BENCH "))
		assert.NotContains(t, string(b), "some other output")
	})
	tests := []struct {
		name    string
		breakIt func(dir string)
		want    string
	}{
		{"a step printed nothing (a figure skipped)", func(dir string) {
			writeBench(t, dir, "bench-istio", "figure 2 (test/istio/bench.sh) is not there yet: skipped")
		},
			"bench-istio: figure istio-vs-handler-typical missing"},
		{"a step's output is missing", func(dir string) { require.NoError(t, os.Remove(filepath.Join(dir, "bench-scale.bench"))) },
			"bench-scale: no figures"},
		{"one figure of three", func(dir string) { writeBench(t, dir, "bench-load", met("https-100rps"), met("https-500rps")) },
			"bench-load: figure https-2000rps missing"},
		{"a figure twice", func(dir string) {
			writeBench(t, dir, "bench-steady", met("steady-state-api-calls"), met("steady-state-api-calls"))
		}, "bench-steady: figure steady-state-api-calls given 2 times"},
		{"a target missed", func(dir string) {
			writeBench(t, dir, "bench-helper", met("jwt-helper-idle"), "BENCH jwt-helper-refresh: 0 refreshes (target >=20 refreshes) missed")
		}, "bench-helper: target missed: jwt-helper-refresh"},
		{"a figure of another step", func(dir string) {
			writeBench(t, dir, "bench-helper", met("jwt-helper-idle"), met("jwt-helper-refresh"), met("https-100rps"))
		}, "bench-helper: figure https-100rps is not one this step promises"},
		{"a malformed line", func(dir string) {
			writeBench(t, dir, "bench-helper", met("jwt-helper-idle"), met("jwt-helper-refresh"), "BENCH oops")
		}, `bench-helper: malformed line "BENCH oops"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := all(t)
			tt.breakIt(dir)
			err := checkFigures(dir, steps, "")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	t.Run("one step alone", func(t *testing.T) {
		dir := all(t)
		require.NoError(t, checkFigures(dir, []string{"bench-load"}, ""))
		require.ErrorContains(t, checkFigures(dir, []string{"bench-nothing"}, ""), "no such step")
	})
}

// TestSteadyNeedsAPassingTest: the steady-state figure is printed only from a test that ran and
// passed, whose go test exited 0.
func TestSteadyNeedsAPassingTest(t *testing.T) {
	measured := "    apicalls_test.go:249: MEASURE steady state: 50 admissions, 0 API writes, 0 live API reads (counted at the API server)"
	pass := "--- PASS: TestSteadyStateCostsNoAPICall (1.01s)"
	require.NoError(t, steady([]string{"=== RUN   TestSteadyStateCostsNoAPICall", measured, pass, "PASS", "ok  \tpkg\t3.1s"}, 0))
	require.ErrorContains(t, steady([]string{measured, pass, "FAIL\tpkg [build failed]"}, 1), "the go test exited 1")
	require.ErrorContains(t, steady([]string{measured, "--- FAIL: TestSteadyStateCostsNoAPICall (1.01s)"}, 1), "exited 1")
	require.ErrorContains(t, steady([]string{"--- SKIP: TestSteadyStateCostsNoAPICall (0.00s)", "ok"}, 0), "did not pass")
	require.ErrorContains(t, steady([]string{"ok  \tpkg\t0.02s [no tests to run]"}, 0), "did not pass")
	require.ErrorContains(t, steady([]string{pass}, 0), "no steady-state measurement")
}

// TestRatiosNeedEveryPod: figures 1 and 2 are computed only from complete results.
func TestRatiosNeedEveryPod(t *testing.T) {
	line := func(bench, pod, kind string) string {
		return "Benchmark" + bench + "/" + pod + "/" + kind + "-2   \t    2000\t    114497 ns/op\t  63.21 MB/s\t   32190 B/op\t     414 allocs/op"
	}
	full := []string{line("Admission", "typical", "floor"), line("Admission", "typical", "handler"), line("Admission", "64KB", "floor"), line("Admission", "64KB", "handler")}
	require.NoError(t, handler(full))
	require.ErrorContains(t, handler(full[:2]), "64KB: 0 floor and 0 handler results")
	require.ErrorContains(t, handler(append(full, line("Admission", "typical", "floor"))), "typical: 2 floor but 1 handler results")
	require.Error(t, handler(nil))

	both := []string{line("IstioInjection", "typical", "istio"), line("AdmissionHTTP", "typical", "http"), line("IstioInjection", "64KB", "istio"), line("AdmissionHTTP", "64KB", "http")}
	require.NoError(t, istio(both))
	require.ErrorContains(t, istio(both[:3]), "64KB: 1 istio and 0 http results")
	require.ErrorContains(t, istio(append(both[:2], line("Admission", "64KB", "handler"), line("IstioInjection", "64KB", "istio"))), "64KB: 1 istio and 0 http results",
		"ours must be measured through its HTTP handler, as Istio's is")
}
