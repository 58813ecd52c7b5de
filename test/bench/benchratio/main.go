// Command benchratio turns the output of `make bench`'s steps into BENCH lines, and checks that
// every figure the steps promise was measured:
//
//	benchratio handler FILE   `go test -bench BenchmarkAdmission` output (figure 1): for each pod,
//	                          the handler's cost as a ratio of the floor measured in the same run
//	                          (medians over -count runs), and its allocations against the floor's
//	benchratio steady [-exit-code N] FILE
//	                          `go test -v -run TestSteadyStateCostsNoAPICall` output (figure 4)
//	                          and the exit code of that go test: the API writes and live reads the
//	                          API server counted while admitting pods
//	benchratio -istio ISTIO OURS
//	                          BenchmarkIstioInjection and BenchmarkAdmissionHTTP output of the
//	                          same interleaved rounds (figure 2, test/istio/bench.sh): for each
//	                          pod, Istio's injection handler's cost as a multiple of ours, both
//	                          through their HTTP handlers
//	benchratio figures [-summary FILE] DIR STEP...
//	                          the BENCH lines of each step's DIR/STEP.bench, in order: fails if a
//	                          figure the step promises (figures) is missing or given twice, if a
//	                          line names a figure no step promises, or if a target is missed; with
//	                          -summary, writes the lines there too
//
// Each BENCH line reads
//
//	BENCH <figure-name>: <value> (target <target>) met|missed
//
// handler, steady and -istio exit non-zero when their input does not hold every result they need
// (and steady when the go test failed): a figure is never printed from partial input.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/spire-mesh-injector/spire-mesh-injector/test/bench/perf"
)

// Targets. maxRatio is issue 8's: the handler costs at most 1.2× the floor. maxAllocRatio is ours
// (the issue asks only that allocations be reported): the handler adds a few patch operations to
// a decoded pod, so half again the floor's allocations would mean it copies or re-encodes the
// pod.
const (
	maxRatio      = 1.2
	maxAllocRatio = 1.5
)

// minIstioRatio is issue 8's figure 2, by pod: Istio's injector costs at least this multiple of
// ours.
var minIstioRatio = map[string]float64{"typical": 15, "64KB": 6}

// benchPods are the pods figures 1 and 2 are measured on (test/fixtures/benchpod), in order.
var benchPods = []string{"typical", "64KB"}

// figures are the BENCH lines each step of `make bench` promises (its make target), in the order
// of docs/performance.md's table, which names the same figures (a test checks).
var figures = []struct {
	step    string
	figures []string
}{
	{"bench-handler", []string{"handler-floor-typical", "handler-allocs-typical", "handler-floor-64KB", "handler-allocs-64KB"}},
	{"bench-istio", []string{"istio-vs-handler-typical", "istio-vs-handler-64KB"}},
	{"bench-load", []string{"https-100rps", "https-500rps", "https-2000rps"}},
	{"bench-steady", []string{"steady-state-api-calls"}},
	{"bench-scale", []string{"scale-rss-10k-namespaces", "scale-reconcile-10k-namespaces"}},
	{"bench-helper", []string{"jwt-helper-idle", "jwt-helper-refresh"}},
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "benchratio: %v\n", err)
		os.Exit(1)
	}
}

const usage = "usage: benchratio handler FILE | steady [-exit-code N] FILE | -istio ISTIO_FILE OURS_FILE | figures [-summary FILE] DIR STEP..."

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%s", usage)
	}
	mode, args := strings.TrimLeft(args[0], "-"), args[1:]
	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	exitCode := fs.Int("exit-code", 0, "steady: the exit code of the go test that wrote FILE")
	summary := fs.String("summary", "", "figures: also write the BENCH lines to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	args = fs.Args()
	if mode == "figures" {
		if len(args) < 2 {
			return fmt.Errorf("%s", usage)
		}
		return checkFigures(args[0], args[1:], *summary)
	}
	files := map[string]int{"handler": 1, "steady": 1, "istio": 2}[mode]
	if files == 0 || len(args) != files {
		return fmt.Errorf("%s", usage)
	}
	var lines []string
	for _, name := range args {
		l, err := readLines(name)
		if err != nil {
			return err
		}
		lines = append(lines, l...)
	}
	switch mode {
	case "handler":
		return handler(lines)
	case "steady":
		return steady(lines, *exitCode)
	default:
		return istio(lines)
	}
}

func readLines(name string) ([]string, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, sc.Err()
}

var benchLine = regexp.MustCompile(`^Benchmark(?:Admission|AdmissionHTTP|IstioInjection)/([^/]+)/(floor|handler|http|istio)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op.*?(\d+) allocs/op`)

// results are the ns/op of each run and the allocs/op, by pod and by kind (floor, handler, http,
// istio).
type results struct {
	ns     map[string]map[string][]float64
	allocs map[string]map[string]int
}

func parse(lines []string) results {
	r := results{ns: map[string]map[string][]float64{}, allocs: map[string]map[string]int{}}
	for _, l := range lines {
		m := benchLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		pod, kind := m[1], m[2]
		if r.ns[pod] == nil {
			r.ns[pod] = map[string][]float64{}
			r.allocs[pod] = map[string]int{}
		}
		v, _ := strconv.ParseFloat(m[3], 64)
		r.ns[pod][kind] = append(r.ns[pod][kind], v)
		r.allocs[pod][kind], _ = strconv.Atoi(m[4])
	}
	return r
}

// runs returns the results of kinds a and b for pod, which must both be there, as often as each
// other (rounds interleave them).
func (r results) runs(pod, a, b string) ([]float64, []float64, error) {
	x, y := r.ns[pod][a], r.ns[pod][b]
	if len(x) == 0 || len(y) == 0 {
		return nil, nil, fmt.Errorf("%s: %d %s and %d %s results; both are needed", pod, len(x), a, len(y), b)
	}
	if len(x) != len(y) {
		return nil, nil, fmt.Errorf("%s: %d %s but %d %s results; a round is incomplete", pod, len(x), a, len(y), b)
	}
	return x, y, nil
}

func istio(lines []string) error {
	r := parse(lines)
	for _, pod := range benchPods {
		is, h, err := r.runs(pod, "istio", "http")
		if err != nil {
			return fmt.Errorf("BenchmarkIstioInjection and BenchmarkAdmissionHTTP: %w", err)
		}
		mi, mh := median(is), median(h)
		fmt.Fprintf(os.Stderr, "%s: Istio %.0f us, ours %.0f us, both through their HTTP handlers (medians of %d)\n", pod, mi/1000, mh/1000, len(is))
		perf.Line(os.Stdout, "istio-vs-handler-"+pod, fmt.Sprintf("%.1fx", mi/mh), fmt.Sprintf(">=%gx", minIstioRatio[pod]), mi/mh >= minIstioRatio[pod])
	}
	return nil
}

func handler(lines []string) error {
	r := parse(lines)
	for _, pod := range benchPods {
		fl, h, err := r.runs(pod, "floor", "handler")
		if err != nil {
			return fmt.Errorf("BenchmarkAdmission: %w", err)
		}
		ratio := median(h) / median(fl)
		fmt.Fprintf(os.Stderr, "%s: handler %.0f us, floor %.0f us (medians of %d)\n", pod, median(h)/1000, median(fl)/1000, len(h))
		perf.Line(os.Stdout, "handler-floor-"+pod, fmt.Sprintf("%.2fx", ratio), fmt.Sprintf("<=%.1fx", maxRatio), ratio <= maxRatio)
		ha, fa := r.allocs[pod]["handler"], r.allocs[pod]["floor"]
		allocRatio := float64(ha) / float64(fa)
		perf.Line(os.Stdout, "handler-allocs-"+pod,
			fmt.Sprintf("%d allocs/op, %.2fx the floor's %d", ha, allocRatio, fa),
			fmt.Sprintf("<=%.1fx the floor's", maxAllocRatio), allocRatio <= maxAllocRatio)
	}
	return nil
}

// measureLine is what TestSteadyStateCostsNoAPICall logs.
var measureLine = regexp.MustCompile(`MEASURE steady state: (\d+) admissions, (\d+) API writes, (\d+) live API reads`)

// steady reads the figure from the test's log. The test must have run and passed: its go test
// exited 0 (exitCode) and printed its PASS line.
func steady(lines []string, exitCode int) error {
	passed := false
	for _, l := range lines {
		passed = passed || strings.HasPrefix(strings.TrimSpace(l), "--- PASS: TestSteadyStateCostsNoAPICall ")
	}
	for _, l := range lines {
		m := measureLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		writes, _ := strconv.Atoi(m[2])
		reads, _ := strconv.Atoi(m[3])
		perf.Line(os.Stdout, "steady-state-api-calls",
			fmt.Sprintf("%s API writes, %s live API reads for %s admissions", m[2], m[3], m[1]),
			"0 writes, 0 live reads", writes == 0 && reads == 0 && passed && exitCode == 0)
		break
	}
	switch {
	case exitCode != 0:
		return fmt.Errorf("steady: the go test exited %d (see its output)", exitCode)
	case !passed:
		return fmt.Errorf("steady: TestSteadyStateCostsNoAPICall did not pass (did it run, or was it skipped?)")
	}
	for _, l := range lines {
		if measureLine.MatchString(l) {
			return nil
		}
	}
	return fmt.Errorf("steady: no steady-state measurement in the test's output")
}

var figureLine = regexp.MustCompile(`^BENCH ([^:\s]+): .* \(target .*\) (met|missed)$`)

// checkFigures prints the BENCH lines of each step (dir/<step>.bench) and says what is wrong:
// a step's file missing, a figure it promises missing or given twice, a line for a figure no step
// promises, a missed target.
func checkFigures(dir string, steps []string, summary string) error {
	promised := map[string]string{}
	for _, s := range figures {
		for _, f := range s.figures {
			promised[f] = s.step
		}
	}
	var out, problems []string
	for _, step := range steps {
		var want []string
		for _, s := range figures {
			if s.step == step {
				want = s.figures
			}
		}
		if want == nil {
			problems = append(problems, fmt.Sprintf("%s: no such step; steps: %s", step, stepNames()))
			continue
		}
		lines, err := readLines(filepath.Join(dir, step+".bench"))
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: no figures: %v", step, err))
			lines = nil
		}
		seen := map[string]int{}
		for _, l := range lines {
			if !strings.HasPrefix(l, "BENCH ") {
				continue
			}
			m := figureLine.FindStringSubmatch(l)
			if m == nil {
				problems = append(problems, fmt.Sprintf("%s: malformed line %q", step, l))
				continue
			}
			out = append(out, l)
			seen[m[1]]++
			switch {
			case promised[m[1]] != step:
				problems = append(problems, fmt.Sprintf("%s: figure %s is not one this step promises", step, m[1]))
			case m[2] == "missed":
				problems = append(problems, fmt.Sprintf("%s: target missed: %s", step, m[1]))
			}
		}
		for _, f := range want {
			switch n := seen[f]; {
			case n == 0:
				problems = append(problems, fmt.Sprintf("%s: figure %s missing", step, f))
			case n > 1:
				problems = append(problems, fmt.Sprintf("%s: figure %s given %d times", step, f, n))
			}
		}
	}
	text := strings.Join(out, "\n")
	if text != "" {
		text += "\n"
	}
	fmt.Print(text)
	if summary != "" {
		if err := os.WriteFile(summary, []byte(text), 0o644); err != nil {
			return err
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%d problem(s):\n  %s", len(problems), strings.Join(problems, "\n  "))
	}
	return nil
}

func stepNames() string {
	var names []string
	for _, s := range figures {
		names = append(names, s.step)
	}
	return strings.Join(names, " ")
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
