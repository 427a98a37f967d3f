package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// report prints the machine, the medians, kmsfs's speed relative to each
// peer, and the targets of docs/performance.md, as markdown.
func (b *bench) report(w io.Writer, syss []*system, results map[string]map[string][]float64,
	skipped, failed map[string]string, quick bool, loadBefore, loadAfter string, took time.Duration) {
	mode := "full"
	if quick {
		mode = "QUICK"
	}
	fmt.Fprintf(w, "\n## kmsfs bench (%s sizes, %d rounds, %s)\n\n", mode, b.rounds, took.Round(time.Second))
	for _, l := range b.machine() {
		fmt.Fprintf(w, "- %s\n", l)
	}
	fmt.Fprintf(w, "- load average (1, 5, 15 min): %s at start, %s at end\n", loadBefore, loadAfter)
	sz := b.sizes
	fmt.Fprintf(w, "- sizes: sequential %d MiB; random file %d MiB, fio %s per job; %d small files of %d B; tar of $GOROOT/%s (%d files, %.0f MiB)\n",
		sz.seq>>20, sz.rand>>20, sz.fioTime, sz.smallN, sz.smallSize, sz.tarSrc, b.tarFiles, float64(b.tarBytes)/(1<<20))
	if len(b.mountArgs) > 0 {
		fmt.Fprintf(w, "- kmsfs mounted with: %s\n", strings.Join(b.mountArgs, " "))
	}
	fmt.Fprintf(w, "- kmsfs: kmsfs init (file names encrypted); %s: kmsfs init --plaintext-names; both on the local provider\n", plainNames)
	if !b.canDrop {
		fmt.Fprintln(w, "- WARNING: the page cache could not be dropped (not root): cold-cache rows are warm")
	}
	for _, s := range systems() {
		if why, ok := skipped[s.name]; ok {
			fmt.Fprintf(w, "- %s: not run: %s\n", s.name, why)
		}
		if why, ok := failed[s.name]; ok {
			fmt.Fprintf(w, "- %s: FAILED: %.300s\n", s.name, oneLine(why))
		}
	}

	var names []string
	for _, s := range syss {
		if results[s.name] != nil {
			names = append(names, s.name)
		}
	}
	med := func(sys, key string) (float64, bool) {
		v, ok := results[sys][key]
		if !ok || len(v) == 0 {
			return 0, false
		}
		return median(v), true
	}

	fmt.Fprintf(w, "\nMedians (higher is better unless the unit is s, MiB or KiB):\n\n")
	fmt.Fprintf(w, "| workload | unit | %s |\n", strings.Join(names, " | "))
	fmt.Fprintf(w, "|---|---|%s\n", strings.Repeat("---:|", len(names)))
	for _, m := range metrics {
		row := []string{m.title, m.unit}
		any := false
		for _, n := range names {
			if v, ok := med(n, m.key); ok {
				row = append(row, fmtNum(v))
				any = true
			} else {
				row = append(row, "-")
			}
		}
		if any {
			fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
		}
	}

	_, haveK := results["kmsfs"]
	var peers []string
	for _, n := range names {
		if n != "kmsfs" {
			peers = append(peers, n)
		}
	}
	if haveK && len(peers) > 0 {
		fmt.Fprintf(w, "\nkmsfs's speed relative to each peer (peer time / kmsfs time; >1: kmsfs is faster):\n\n")
		fmt.Fprintf(w, "| workload | %s |\n", strings.Join(peers, " | "))
		fmt.Fprintf(w, "|---|%s\n", strings.Repeat("---:|", len(peers)))
		for _, m := range metrics {
			if m.key == "rss" || m.key == "locked" || m.kmsfsOnly {
				continue
			}
			k, ok := med("kmsfs", m.key)
			if !ok {
				continue
			}
			row := []string{m.title}
			for _, p := range peers {
				row = append(row, fmtRatio(speedRatio(m, k, p, med)))
			}
			fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
		}
	}
	if haveK {
		b.targets(w, med)
	}
}

// speedRatio is kmsfs's speed over peer's for metric m (0: unknown).
func speedRatio(m metric, k float64, peer string, med func(string, string) (float64, bool)) float64 {
	p, ok := med(peer, m.key)
	if !ok || p == 0 || k == 0 {
		return 0
	}
	if m.lowerBetter {
		return p / k
	}
	return k / p
}

func fmtRatio(r float64) string {
	if r == 0 {
		return "-"
	}
	return strconv.FormatFloat(r, 'f', 2, 64) + "x"
}

// targets checks the goals of issue 7 against this run's medians.
func (b *bench) targets(w io.Writer, med func(string, string) (float64, bool)) {
	fmt.Fprintf(w, "\nTargets (this run):\n\n| target | measured | |\n|---|---|---|\n")
	mByKey := map[string]metric{}
	for _, m := range metrics {
		mByKey[m.key] = m
	}
	row := func(target, measured string, ok, known bool) {
		verdict := "met"
		switch {
		case !known:
			verdict = "not measured"
		case !ok:
			verdict = "NOT MET"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", target, measured, verdict)
	}
	vs := func(key, peer string, want float64) {
		m := mByKey[key]
		k, kok := med("kmsfs", key)
		r := 0.0
		if kok {
			r = speedRatio(m, k, peer, med)
		}
		row(fmt.Sprintf("%s: >= %.1fx %s", m.title, want, peer), fmtRatio(r), r >= want, r != 0)
	}
	vsBest := func(key string) {
		m := mByKey[key]
		k, kok := med("kmsfs", key)
		best, bestName := 0.0, ""
		for _, p := range []string{"gocryptfs", "securefs"} {
			if r := speedRatio(m, k, p, med); r != 0 && kok && (bestName == "" || r < best) {
				best, bestName = r, p
			}
		}
		row(fmt.Sprintf("%s: >= 1.0x the better of gocryptfs, securefs", m.title),
			fmt.Sprintf("%s (vs %s)", fmtRatio(best), bestName), best >= 1.0, bestName != "")
	}
	for _, k := range []string{"seqwrite", "seqread"} {
		vs(k, "gocryptfs", 1.2)
		vs(k, "loopback", 0.6)
	}
	vs("randwrite", "gocryptfs", 1.5)
	vs("randread", "gocryptfs", 1.0)
	for _, k := range []string{"smallcreate", "smallstat", "smallread", "smalldelete", "tarextract", "tarread", "tarremove"} {
		vsBest(k)
	}
	b.plainNamesTargets(row, mByKey, med)
	b.baseTargets(row, mByKey, med)
	// createsVs: the create rate of system sys over that of base, when sys ran.
	createsVs := func(sys, base, target string) {
		if a, aok := med(sys, "smallcreate"); aok {
			b, bok := med(base, "smallcreate")
			r := 0.0
			if bok && b > 0 {
				r = a / b
			}
			row(target, fmtRatio(r), r >= 0.8, bok)
		}
	}
	createsVs("kmsfs-aws", "kmsfs", "small files: create, kmsfs-aws (local-kms) >= 0.8x kmsfs (local)")
	createsVs("kmsfs-aws-10ms", "kmsfs-aws", "small files: create, kmsfs-aws with 10 ms KMS round trips >= 0.8x without (the DEK pool hides them)")
	if v, ok := med("kmsfs", "kmscalls"); ok {
		row("re-opening cached files makes no KMS call", fmt.Sprintf("%.0f calls", v), v == 0, true)
	}
	if v, ok := med("kmsfs", "rss"); ok {
		row("mount RSS (VmHWM) after tar < 200 MiB", fmt.Sprintf("%.1f MiB", v), v < 200, true)
	}
	if v, ok := med("kmsfs", "locked"); ok {
		per := v * 1024 / cacheEntries
		row("locked memory <= 64 B per cached key", fmt.Sprintf("%.0f KiB / %d keys = %.1f B", v, cacheEntries, per), per <= 64, true)
	}
	b.cryptoTarget(w, row)
}

// plainNamesTargets compares kmsfs (file names encrypted, the default)
// with the same kmsfs initialised with --plaintext-names, in this run: on
// every workload of the metrics table but memory, kmsfs must reach 0.9x
// the speed of kmsfs-plainnames (speedRatio: for the timed rows, the
// plain-names time over the kmsfs time). Name encryption costs on the
// namespace rows (small files, tar); on the data rows (sequential and
// random I/O on one file) it must cost nothing, so a ratio below 0.9x
// there flags a slowdown of the data path.
func (b *bench) plainNamesTargets(row func(string, string, bool, bool), mByKey map[string]metric, med func(string, string) (float64, bool)) {
	const want = 0.9
	keys := []string{"seqwrite", "seqread", "randread", "randwrite",
		"smallcreate", "smallstat", "smallread", "smalldelete", "tarextract", "tarread", "tarremove"}
	ran := false
	for _, key := range keys {
		if _, ok := med(plainNames, key); ok {
			ran = true
		}
	}
	if !ran {
		row(fmt.Sprintf("kmsfs (encrypted names) >= %.1fx %s", want, plainNames), plainNames+" did not run", false, false)
		return
	}
	for _, key := range keys {
		m := mByKey[key]
		k, kok := med("kmsfs", key)
		r := 0.0
		if kok {
			r = speedRatio(m, k, plainNames, med)
		}
		row(fmt.Sprintf("%s: kmsfs (encrypted names) >= %.1fx %s", m.title, want, plainNames), fmtRatio(r), r >= want, r != 0)
	}
}

// baseTargets compares this build with the -kmsfs-base build on the data
// rows (sequential and random I/O on one file), when it ran: a change to
// how the cipher directory is reached (directory handles) must make none
// of them slower. Both columns of this build are compared: kmsfs-plainnames
// has the base's layout, kmsfs the new default.
func (b *bench) baseTargets(row func(string, string, bool, bool), mByKey map[string]metric, med func(string, string) (float64, bool)) {
	const want = 0.9
	if _, ok := med(baseKmsfs, "seqread"); !ok {
		return
	}
	for _, key := range []string{"seqwrite", "seqread", "randread", "randwrite"} {
		m := mByKey[key]
		for _, sys := range []string{plainNames, "kmsfs"} {
			k, ok := med(sys, key)
			r := 0.0
			if ok {
				r = speedRatio(m, k, baseKmsfs, med)
			}
			row(fmt.Sprintf("%s: %s >= %.1fx %s", m.title, sys, want, baseKmsfs), fmtRatio(r), r >= want, r != 0)
		}
	}
}

var overheadLineRE = regexp.MustCompile(`^BenchmarkChunkOverhead/(Seal|Open)/(\w+)-\d+\s.*\s(-?[\d.]+) overhead-%`)

var benchLineRE = regexp.MustCompile(`^Benchmark(SealChunk|OpenChunk)/(kmsfs|rawGCM)/(\w+)-\d+\s+\d+\s+([\d.]+) ns/op`)

// cryptoTarget reads `go test -bench` output of ./crypto: kmsfs's chunk
// seal/open per chunk size against raw AES-GCM on the same buffer.
func (b *bench) cryptoTarget(w io.Writer, row func(string, string, bool, bool)) {
	if b.goBench == "" {
		row("chunk seal/open within 10% of raw AES-256-GCM", "run with -gobench FILE (make bench does)", false, false)
		return
	}
	f, err := os.Open(b.goBench)
	if err != nil {
		row("chunk seal/open within 10% of raw AES-256-GCM", err.Error(), false, false)
		return
	}
	defer f.Close()
	// Each benchmark may run several times (-count): the median counts.
	runs := map[string][]float64{}
	var order []string
	overhead := map[string][]float64{}
	var overOrder []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := overheadLineRE.FindStringSubmatch(sc.Text()); m != nil {
			v, _ := strconv.ParseFloat(m[3], 64)
			key := m[1] + "Chunk/" + m[2]
			if _, seen := overhead[key]; !seen {
				overOrder = append(overOrder, key)
			}
			overhead[key] = append(overhead[key], v)
			continue
		}
		m := benchLineRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, _ := strconv.ParseFloat(m[4], 64)
		key := m[1] + "/" + m[3]
		if _, seen := runs[key+"/kmsfs"]; !seen && m[2] == "kmsfs" {
			order = append(order, key)
		}
		runs[key+"/"+m[2]] = append(runs[key+"/"+m[2]], v)
	}
	if len(overhead) > 0 {
		// BenchmarkChunkOverhead interleaves the two, so load falls on
		// both alike: prefer it.
		for _, key := range overOrder {
			over := median(overhead[key])
			row(fmt.Sprintf("%s within 10%% of raw AES-256-GCM (interleaved)", key), fmt.Sprintf("%+.1f%%", over), over <= 10, true)
		}
		return
	}
	for _, key := range order {
		k, raw := median(runs[key+"/kmsfs"]), median(runs[key+"/rawGCM"])
		if k == 0 || raw == 0 {
			continue
		}
		over := k/raw - 1
		row(fmt.Sprintf("%s within 10%% of raw AES-256-GCM", key), fmt.Sprintf("%.0f vs %.0f ns (%+.1f%%)", k, raw, over*100), over <= 0.10, true)
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
