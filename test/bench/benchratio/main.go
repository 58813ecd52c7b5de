// Command benchratio turns the output of two `make bench` steps into BENCH lines:
//
//	benchratio handler FILE   `go test -bench BenchmarkAdmission` output (figure 1): for each pod,
//	                          the handler's cost as a ratio of the floor measured in the same run
//	                          (medians over -count runs), and its allocations against the floor's
//	benchratio steady FILE    `go test -v -run TestSteadyStateCostsNoAPICall` output (figure 4):
//	                          the API writes and live reads counted while admitting pods
//	benchratio -istio ISTIO OURS
//	                          BenchmarkIstioInjection and BenchmarkAdmission output of the same
//	                          interleaved rounds (figure 2, test/istio/bench.sh): for each pod,
//	                          Istio's injection handler's cost as a multiple of ours
//
// Each line reads
//
//	BENCH <figure-name>: <value> (target <target>) met|missed
//
// It exits non-zero only when the input holds no result; a missed target is reported in the line.
package main

import (
	"bufio"
	"fmt"
	"os"
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

func main() {
	mode := strings.TrimLeft(os.Args[min(1, len(os.Args)-1)], "-")
	files := map[string]int{"handler": 1, "steady": 1, "istio": 2}[mode]
	if files == 0 || len(os.Args) != 2+files {
		fmt.Fprintln(os.Stderr, "usage: benchratio handler FILE | steady FILE | -istio ISTIO_FILE OURS_FILE")
		os.Exit(2)
	}
	var lines []string
	for _, name := range os.Args[2:] {
		l, err := readLines(name)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		lines = append(lines, l...)
	}
	var err error
	switch mode {
	case "handler":
		err = handler(lines)
	case "steady":
		err = steady(lines)
	case "istio":
		err = istio(lines)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchratio %s: %v\n", os.Args[1], err)
		os.Exit(1)
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

var benchLine = regexp.MustCompile(`^Benchmark(?:Admission|IstioInjection)/([^/]+)/(floor|handler|istio)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op.*?(\d+) allocs/op`)

// results are the ns/op of each run and the allocs/op, by pod and by kind (floor, handler, istio),
// with the pods in the order they first appear.
type results struct {
	pods   []string
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
			r.pods = append(r.pods, pod)
		}
		v, _ := strconv.ParseFloat(m[3], 64)
		r.ns[pod][kind] = append(r.ns[pod][kind], v)
		r.allocs[pod][kind], _ = strconv.Atoi(m[4])
	}
	return r
}

func istio(lines []string) error {
	r := parse(lines)
	if len(r.pods) == 0 {
		return fmt.Errorf("no BenchmarkIstioInjection or BenchmarkAdmission results")
	}
	for _, pod := range r.pods {
		is, h := median(r.ns[pod]["istio"]), median(r.ns[pod]["handler"])
		if is == 0 || h == 0 {
			return fmt.Errorf("%s: missing Istio or handler results", pod)
		}
		fmt.Fprintf(os.Stderr, "%s: Istio %.0f us, ours %.0f us (medians of %d and %d)\n", pod, is/1000, h/1000, len(r.ns[pod]["istio"]), len(r.ns[pod]["handler"]))
		want, ok := minIstioRatio[pod]
		if !ok {
			return fmt.Errorf("%s: no target for this pod", pod)
		}
		perf.Line(os.Stdout, "istio-vs-handler-"+pod, fmt.Sprintf("%.1fx", is/h), fmt.Sprintf(">=%gx", want), is/h >= want)
	}
	return nil
}

func handler(lines []string) error {
	r := parse(lines)
	pods, ns, allocs := r.pods, r.ns, r.allocs
	if len(pods) == 0 {
		return fmt.Errorf("no BenchmarkAdmission results")
	}
	for _, pod := range pods {
		fl, h := median(ns[pod]["floor"]), median(ns[pod]["handler"])
		if fl == 0 || h == 0 {
			return fmt.Errorf("%s: missing floor or handler results", pod)
		}
		ratio := h / fl
		fmt.Fprintf(os.Stderr, "%s: handler %.0f us, floor %.0f us (medians of %d)\n", pod, h/1000, fl/1000, len(ns[pod]["handler"]))
		perf.Line(os.Stdout, "handler-floor-"+pod,
			fmt.Sprintf("%.2fx", ratio),
			fmt.Sprintf("<=%.1fx", maxRatio), ratio <= maxRatio)
		ha, fa := allocs[pod]["handler"], allocs[pod]["floor"]
		allocRatio := float64(ha) / float64(fa)
		perf.Line(os.Stdout, "handler-allocs-"+pod,
			fmt.Sprintf("%d allocs/op, %.2fx the floor's %d", ha, allocRatio, fa),
			fmt.Sprintf("<=%.1fx the floor's", maxAllocRatio), allocRatio <= maxAllocRatio)
	}
	return nil
}

// measureLine is what TestSteadyStateCostsNoAPICall logs.
var measureLine = regexp.MustCompile(`MEASURE steady state: (\d+) admissions, (\d+) API writes, (\d+) live API reads`)

func steady(lines []string) error {
	failed := false
	for _, l := range lines {
		failed = failed || strings.HasPrefix(strings.TrimSpace(l), "--- FAIL")
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
			"0 writes, 0 live reads", writes == 0 && reads == 0 && !failed)
		return nil
	}
	return fmt.Errorf("no steady-state measurement (did TestSteadyStateCostsNoAPICall run?)")
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
