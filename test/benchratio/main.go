// Command benchratio reads `go test -bench` output of BenchmarkAdmission and prints, for each pod,
// the handler's cost as a ratio of the floor measured in the same run (medians over -count runs),
// with allocation counts, one line per figure:
//
//	BENCH <figure-name>: <value> (target <target>) met|missed
package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
)

// maxRatio is the target: the handler costs at most 1.2× the floor.
const maxRatio = 1.2

var line = regexp.MustCompile(`^BenchmarkAdmission/([^/]+)/(floor|handler)(?:-\d+)?\s+\d+\s+([\d.]+) ns/op.*?(\d+) allocs/op`)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: benchratio FILE")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	ns := map[string]map[string][]float64{}
	allocs := map[string]map[string]string{}
	var pods []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		pod, kind := m[1], m[2]
		if ns[pod] == nil {
			ns[pod] = map[string][]float64{}
			allocs[pod] = map[string]string{}
			pods = append(pods, pod)
		}
		v, _ := strconv.ParseFloat(m[3], 64)
		ns[pod][kind] = append(ns[pod][kind], v)
		allocs[pod][kind] = m[4]
	}
	if len(pods) == 0 {
		fmt.Fprintln(os.Stderr, "no BenchmarkAdmission results")
		os.Exit(1)
	}
	failed := false
	for _, pod := range pods {
		fl, h := median(ns[pod]["floor"]), median(ns[pod]["handler"])
		if fl == 0 || h == 0 {
			fmt.Fprintf(os.Stderr, "%s: missing floor or handler results\n", pod)
			os.Exit(1)
		}
		ratio := h / fl
		verdict := "met"
		if ratio > maxRatio {
			verdict, failed = "missed", true
		}
		fmt.Printf("BENCH handler/floor %s: %.2fx (target <= %.2fx) %s [handler %.0f us %s allocs, floor %.0f us %s allocs, medians of %d]\n",
			pod, ratio, maxRatio, verdict, h/1000, allocs[pod]["handler"], fl/1000, allocs[pod]["floor"], len(ns[pod]["handler"]))
	}
	if failed {
		os.Exit(3)
	}
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
