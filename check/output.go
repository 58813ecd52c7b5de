package check

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteJSON writes the report as one indented JSON object, for automation.
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes one line per finding, then a summary and the runbook of every check that did
// not pass. Text is kept on one line so that grep and sort work on the output.
func WriteTable(w io.Writer, r *Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tCHECK\tNAMESPACE\tWHAT\tWHY\tFIX")
	for _, f := range r.Findings {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.Status, f.Check, dash(f.Namespace), oneLine(f.What), dash(oneLine(f.Why)), dash(oneLine(f.Fix)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%d OK, %d WARN, %d FAIL (configuration: %s)\n", r.Count(OK), r.Count(Warn), r.Count(Fail), r.Config)
	seen := map[ID]bool{}
	for _, f := range r.Findings {
		if f.Status == OK || seen[f.Check] {
			continue
		}
		if len(seen) == 0 {
			fmt.Fprintln(w, "Runbooks:")
		}
		seen[f.Check] = true
		fmt.Fprintf(w, "  %-24s %s\n", f.Check, f.Runbook)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps tabs and newlines from an error message out of the table's columns.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
