package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/crypto"
	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/fs/cipherfile"
	"github.com/kmsfs/kmsfs/keymgr"
)

// statusReport is the JSON `kmsfs status --json` prints; its shape is a
// promise to scripts.
type statusReport struct {
	CipherDir    string        `json:"cipherdir"`
	FilesystemID string        `json:"filesystem_id"`
	Provider     string        `json:"provider"`
	Key          string        `json:"key"`
	KeyARN       string        `json:"key_arn"`
	Mounted      bool          `json:"mounted"`
	Source       string        `json:"source"` // "index", "mount" (the mount's index) or "headers"
	Files        int           `json:"files"`
	Keys         []keyVersions `json:"keys"`
	// RewrapEpoch and RewrapPending are kmsfs.conf's aws rewrap marker.
	RewrapEpoch   uint32 `json:"rewrap_epoch,omitempty"`
	RewrapPending bool   `json:"rewrap_pending,omitempty"`
	// KMSCalls counts the KMS calls in .kmsfs/audit.log and its rotated
	// logs (audit.log.1 ...) per op, whatever their outcome.
	KMSCalls map[string]int `json:"kms_calls"`
	// KeyStores: the mount's DEK cache and pool (mounted only).
	KeyStores *keyStores `json:"key_stores,omitempty"`

	unreadable int    // cipher files with no valid header (headers source only)
	note       string // why the counts come from the headers
	auditNote  string // the damaged audit log lines KMSCalls skips, or why it stops short
}

type keyVersions struct {
	KeyARN     string `json:"key_arn"`
	KeyVersion uint32 `json:"key_version"`
	Files      int    `json:"files"`
}

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [--json] CIPHERDIR",
		Short: "show a cipher directory's provider, key, and files per key version",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := statusOf(args[0])
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			printStatus(cmd.OutOrStdout(), r)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// counter tallies headers per (key ARN, key version).
type counter struct {
	files int
	by    map[keyVersions]int
}

func (c *counter) add(h crypto.Header) {
	if c.by == nil {
		c.by = map[keyVersions]int{}
	}
	c.files++
	for _, k := range h.Keys {
		c.by[keyVersions{KeyARN: k.KeyARN, KeyVersion: k.KeyVersion}]++
	}
}

func (c *counter) rows() []keyVersions {
	out := make([]keyVersions, 0, len(c.by))
	for k, n := range c.by {
		k.Files = n
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].KeyARN != out[j].KeyARN {
			return out[i].KeyARN < out[j].KeyARN
		}
		return out[i].KeyVersion < out[j].KeyVersion
	})
	return out
}

func statusOf(arg string) (statusReport, error) {
	dir, err := canonicalPath(arg)
	if err != nil {
		return statusReport{}, err
	}
	conf, err := loadCipherDir(dir)
	if err != nil {
		return statusReport{}, err
	}
	r := statusReport{
		CipherDir: dir, FilesystemID: conf.FilesystemID, Provider: conf.Provider,
		Key: conf.Key, KeyARN: conf.KeyARN, Source: "index",
		RewrapEpoch: conf.RewrapEpoch, RewrapPending: conf.RewrapPending,
	}
	var c counter
	ix, err := openCipherIndex(dir, keymgr.IndexOptions{ReadOnly: true})
	if err == nil {
		err = ix.ForEach(func(h crypto.Header) error { c.add(h); return nil })
		ix.Close()
		if err != nil {
			c = counter{}
			r.note = "index does not open read-only: mount once, or run kmsfs fsck --repair " + dir
		}
	} else if errors.Is(err, keymgr.ErrIndexLocked) {
		r.Mounted = true
		// The mount holds the index: ask it (control_client.go).
		if ms, cerr := mountStatusOf(dir); cerr == nil {
			err = nil
			r.Source = "mount"
			r.KeyStores = ms.KeyStores
			c = counter{files: ms.Files, by: map[keyVersions]int{}}
			for _, k := range ms.Keys {
				c.by[keyVersions{KeyARN: k.KeyARN, KeyVersion: k.KeyVersion}] = k.Files
			}
		}
	} else {
		r.note = "index does not open read-only: mount once, or run kmsfs fsck --repair " + dir
	}
	if err != nil {
		r.Source = "headers"
		c = counter{}
		if r.unreadable, err = countHeaders(dir, conf, &c); err != nil {
			return r, err
		}
	}
	r.Files = c.files
	if r.KMSCalls, err = keymgr.CountAuditOps(cipherdir.AuditPath(dir)); err != nil {
		r.auditNote = err.Error()
	}
	r.Keys = c.rows()
	return r, nil
}

// countHeaders walks the cipher tree and reads each file's header mirror.
func countHeaders(dir string, conf cipherdir.Config, c *counter) (unreadable int, err error) {
	l := conf.Layout()
	err = eachCipherFile(dir, conf, func(f *os.File, _ string, err error) error {
		if err != nil {
			unreadable++
			return nil
		}
		h, _, err := cipherfile.ReadHeader(f, l)
		if err != nil {
			unreadable++
			return nil
		}
		c.add(h)
		return nil
	})
	return unreadable, err
}

func printStatus(w io.Writer, r statusReport) {
	yesNo := map[bool]string{true: "yes", false: "no"}
	fmt.Fprintf(w, "cipherdir: %s\n", r.CipherDir)
	fmt.Fprintf(w, "filesystem_id: %s\n", r.FilesystemID)
	fmt.Fprintf(w, "provider: %s\n", r.Provider)
	fmt.Fprintf(w, "key: %s\n", r.Key)
	fmt.Fprintf(w, "key_arn: %s\n", r.KeyARN)
	fmt.Fprintf(w, "mounted: %s\n", yesNo[r.Mounted])
	if r.RewrapEpoch > 0 || r.RewrapPending {
		pending := ""
		if r.RewrapPending {
			pending = " (unfinished: run kmsfs rewrap to finish it)"
		}
		fmt.Fprintf(w, "rewrap epoch: %d%s\n", r.RewrapEpoch, pending)
	}
	switch {
	case r.Source == "index":
		fmt.Fprintf(w, "counted from: index\n")
	case r.Source == "mount":
		fmt.Fprintf(w, "counted from: index (asked the mount)\n")
	case r.Mounted:
		fmt.Fprintf(w, "counted from: file headers (mounted)\n")
	default:
		fmt.Fprintf(w, "counted from: file headers (%s)\n", r.note)
	}
	fmt.Fprintf(w, "files: %d\n", r.Files)
	fmt.Fprintf(w, "kms calls: GenerateDataKey %d, Decrypt %d, ReEncrypt %d, DescribeKey %d (from the audit log)\n",
		r.KMSCalls[keymgr.AuditGenerateDataKey], r.KMSCalls[keymgr.AuditDecrypt], r.KMSCalls[keymgr.AuditReEncrypt], r.KMSCalls[keymgr.AuditDescribeKey])
	if r.auditNote != "" {
		fmt.Fprintf(w, "kms calls not all counted: %s\n", r.auditNote)
	}
	if r.unreadable > 0 {
		fmt.Fprintf(w, "unreadable: %d (no valid header: run kmsfs fsck)\n", r.unreadable)
	}
	if k := r.KeyStores; k != nil {
		fmt.Fprintf(w, "dek cache: %d of %d keys, %d bytes locked; %d hits, %d misses\n",
			k.CacheEntries, k.CacheCapacity, k.CacheLockedBytes, k.CacheHits, k.CacheMisses)
		fmt.Fprintf(w, "dek pool: %d ready, target %d (at most %d); %d taken, %d waited for a refill, %d generated synchronously, %d refill errors\n",
			k.PoolReady, k.PoolTarget, k.PoolSize, k.PoolTaken, k.PoolWaits, k.PoolSyncFallbacks, k.PoolRefillErrors)
		if k.ProcessLocked {
			fmt.Fprintf(w, "process memory: locked (mlockall)\n")
		} else {
			fmt.Fprintf(w, "process memory: not locked, only the dek cache and pool (run the mount as root or with an unlimited RLIMIT_MEMLOCK)\n")
		}
	}
	if len(r.Keys) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY ARN\tVERSION\tFILES")
	for _, k := range r.Keys {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", k.KeyARN, k.KeyVersion, k.Files)
	}
	tw.Flush()
}
