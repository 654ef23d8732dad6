package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// row is one line of a comparison table: a metric of the baseline and of berth-coord,
// their ratio, and the goal it is held to.
type row struct {
	metric        string
	base, coord   string
	ratio         string
	goal, verdict string
	section       bool
}

// table prints rows aligned, under a header naming the baseline.
func table(w io.Writer, baseline string, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "metric\t%s\tberth-coord\tcoord/%s\tgoal\tmet\n", baseline, baseline)
	for _, r := range rows {
		if r.section {
			fmt.Fprintf(tw, "%s\t\t\t\t\t\n", r.metric)
			continue
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", r.metric, r.base, r.coord, r.ratio, r.goal, r.verdict)
	}
	tw.Flush()
}

func ratio(coord, base float64) string {
	if base == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", coord/base)
}

func verdict(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

func fmtRate(r float64) string { return fmt.Sprintf("%.0f/s", r) }
