package keymgr

// audit_read.go: readers of the audit log (format in audit.go, writer and
// rotation in audit_log.go).
//
// The log is in the cipher directory, so its writer may have changed any
// line. A reader returns every record that parses and reports each line
// that does not (AuditDamage: file, line number, why) instead of stopping
// at it or skipping it silently:
//
//   - a blank line is skipped (not damage);
//   - a last line without its newline that does not parse is a write torn
//     by a crash, or one still being written, and is skipped (not damage);
//   - any other line that is not one JSON object, or is longer than
//     maxAuditLine bytes (never buffered whole), is damage.
//
// An I/O error ends the read and is returned as such; damage comes back as
// an *AuditDamageError (errors.As) beside the records, naming at most
// maxAuditDamage lines and counting all of them.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	// maxAuditLine bounds one line: a record is a few hundred bytes; a
	// longer line is damage and is skipped without being held in memory.
	maxAuditLine = 64 << 10
	// maxAuditDamage bounds the damaged lines an AuditDamageError names.
	maxAuditDamage = 20
)

// AuditDamage is one line of an audit log that did not parse.
type AuditDamage struct {
	File string // the log's base name ("audit.log.1"); "" for ReadAudit
	Line int    // 1-based; 0 when the whole file could not be read
	Why  string
}

func (d AuditDamage) String() string {
	where := "line " + strconv.Itoa(d.Line)
	if d.Line == 0 {
		where = "unreadable"
	}
	if d.File != "" {
		where = d.File + " " + where
	}
	return where + ": " + d.Why
}

// AuditDamageError reports the damaged lines of an audit log read; the
// records returned with it are every other line's.
type AuditDamageError struct {
	Damage []AuditDamage // the first maxAuditDamage, in reading order
	Lines  int           // damaged lines in all
}

func (e *AuditDamageError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d damaged audit log line(s), skipped (", e.Lines)
	for i, d := range e.Damage {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(d.String())
	}
	if e.Lines > len(e.Damage) {
		fmt.Fprintf(&b, "; %d more", e.Lines-len(e.Damage))
	}
	b.WriteString("): the log was changed outside kmsfs, or a write was cut short")
	return b.String()
}

// add records one damaged line.
func (e *AuditDamageError) add(d AuditDamage) {
	e.Lines++
	if len(e.Damage) < maxAuditDamage {
		e.Damage = append(e.Damage, d)
	}
}

// orNil is e as an error, nil when nothing was damaged.
func (e *AuditDamageError) orNil() error {
	if e.Lines == 0 {
		return nil
	}
	return e
}

// ReadAudit parses one audit log file's content. It returns every record
// that parses, with an *AuditDamageError naming the lines that do not (by
// the rules in this file's comment), or the read error that ended it.
// Fuzzed by FuzzReadAudit.
func ReadAudit(r io.Reader) ([]AuditRecord, error) {
	var out []AuditRecord
	var dmg AuditDamageError
	if err := scanAudit(r, "", func(rec AuditRecord) { out = append(out, rec) }, &dmg); err != nil {
		return out, err
	}
	return out, dmg.orNil()
}

// CountAuditOps counts the calls recorded in the audit log at path and in
// its rotated logs (path.1 .. path.MaxAuditKeep, those that exist) per op
// ("GenerateDataKey", "Decrypt", "ReEncrypt", "DescribeKey"), whatever
// their outcome; every op of the four is in the map, 0 when absent or when
// there is no log yet. It streams the logs, so a running mount may be
// appending to them (a rotation during the count may count some lines
// twice or not at all). Damaged lines, and rotated logs that are not
// regular files, are skipped and reported in an *AuditDamageError with
// the full counts of the rest; an error opening or reading the current log
// is returned with the counts so far.
func CountAuditOps(path string) (map[string]int, error) {
	counts := map[string]int{AuditGenerateDataKey: 0, AuditDecrypt: 0, AuditReEncrypt: 0, AuditDescribeKey: 0}
	dir, err := openAuditDir(filepath.Dir(path))
	if errors.Is(err, os.ErrNotExist) {
		return counts, nil
	}
	if err != nil {
		return counts, fmt.Errorf("open audit log: %w", err)
	}
	defer dir.Close()
	name := filepath.Base(path)
	count := func(rec AuditRecord) { counts[rec.Op]++ }
	var dmg AuditDamageError
	// Oldest first, as the lines were written.
	for i := MaxAuditKeep; i >= 1; i-- {
		rname := name + "." + strconv.Itoa(i)
		var st unix.Stat_t
		if unix.Fstatat(int(dir.Fd()), rname, &st, unix.AT_SYMLINK_NOFOLLOW) == unix.ENOENT {
			continue
		}
		f, err := openAtNoFollow(dir, rname, unix.O_RDONLY, 0)
		if err != nil {
			dmg.add(AuditDamage{File: rname, Why: err.Error()})
			continue
		}
		err = scanAudit(f, rname, count, &dmg)
		f.Close()
		if err != nil {
			dmg.add(AuditDamage{File: rname, Why: err.Error()})
		}
	}
	f, err := openAtNoFollow(dir, name, unix.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return counts, dmg.orNil()
	}
	if err != nil {
		return counts, fmt.Errorf("open audit log: %w", err)
	}
	defer f.Close()
	if err := scanAudit(f, name, count, &dmg); err != nil {
		return counts, fmt.Errorf("%s: %w", path, err)
	}
	if err := dmg.orNil(); err != nil {
		return counts, fmt.Errorf("%s: %w", path, err)
	}
	return counts, nil
}

// scanAudit calls fn for each record of one audit log file (named file in
// damage reports) and adds its damaged lines to dmg, by this file's rules.
// It returns only a read error.
func scanAudit(r io.Reader, file string, fn func(AuditRecord), dmg *AuditDamageError) error {
	br := bufio.NewReaderSize(r, maxAuditLine)
	for n := 1; ; n++ {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// Too long for a record: skip to the end of the line without
			// holding it (each ReadSlice consumes a full buffer, so this
			// ends at the input's end).
			for err == bufio.ErrBufferFull {
				_, err = br.ReadSlice('\n')
			}
			if err == io.EOF {
				return nil // torn last line
			}
			if err != nil {
				return fmt.Errorf("read audit log: %w", err)
			}
			dmg.add(AuditDamage{File: file, Line: n, Why: fmt.Sprintf("longer than %d bytes", maxAuditLine)})
			continue
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("read audit log: %w", err)
		}
		last := err == io.EOF
		if t := bytes.TrimSpace(line); len(t) > 0 {
			var rec AuditRecord
			perr := error(nil)
			if t[0] != '{' {
				perr = errors.New("not a JSON object")
			} else {
				perr = json.Unmarshal(t, &rec)
			}
			switch {
			case perr == nil:
				fn(rec)
			case !last:
				dmg.add(AuditDamage{File: file, Line: n, Why: perr.Error()})
			}
		}
		if last {
			return nil
		}
	}
}
