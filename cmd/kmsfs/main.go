// Command kmsfs is the command-line tool of kmsfs: it creates cipher
// directories, mounts them, manages the local keyring, reports status and
// checks consistency. It holds flags, prompts, exit codes and progress
// bars; the cryptography lives in crypto, keys in keymgr, FUSE in fs.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/keymgr"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// usageError marks a command line that cannot be run as written (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// globals are the persistent flags shared by every command.
type globals struct {
	keyring        string
	passphraseFile string
	aws            awsFlags
	audit          keymgr.AuditOptions // --audit-max-size, --audit-keep
}

func main() {
	ownsEnvironment = true // harden.go: the passphrase leaves this process's environment
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line and returns the exit code. Every error is
// one line on stderr: "kmsfs: <cause>: <fix>".
func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	msg := oneLine(err.Error())
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		if !strings.Contains(msg, "usage:") {
			msg += " (see kmsfs --help)"
		}
		fmt.Fprintf(stderr, "kmsfs: %s\n", msg)
		return exitUsage
	}
	fmt.Fprintf(stderr, "kmsfs: %s\n", msg)
	return exitFail
}

// isCobraUsage recognises the errors cobra returns itself for an unknown
// command or a bad flag.
func isCobraUsage(err error) bool {
	s := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument", "invalid argument", "accepts ", "requires at least", "requires at most"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "kmsfs",
		Short: "an envelope-encrypted FUSE filesystem",
		Long: `kmsfs keeps a directory encrypted at rest with envelope encryption: every
file has its own data key, wrapped by a master key held in a KMS (the
embedded local keyring, or AWS KMS). Mount a cipher directory to see
and edit its plain view.

The local keyring's passphrase is read from --passphrase-file, else
$KMSFS_PASSPHRASE, else asked on the terminal. The keyring path is
--keyring, else $KMSFS_KEYRING, else ~/.config/kmsfs/keyring.json.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		// A bare "kmsfs" prints help; a mistyped subcommand is a usage error.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
		// Every command, not only mount: no core, not dumpable, no
		// passphrase in the environment (harden.go).
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error { return hardenProcess(slog.Default()) },
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (usage: %s)", err, cmd.UseLine())}
	})
	root.CompletionOptions.DisableDefaultCmd = true
	pf := root.PersistentFlags()
	pf.StringVar(&g.keyring, "keyring", "", "path of the local keyring (default $KMSFS_KEYRING, else ~/.config/kmsfs/keyring.json)")
	pf.StringVar(&g.passphraseFile, "passphrase-file", "", "read the keyring passphrase from this file (first line)")
	pf.StringVar(&g.aws.region, "aws-region", "", "aws provider: region (default $AWS_REGION, else kmsfs.conf, else the key ARN's)")
	pf.StringVar(&g.aws.endpoint, "aws-endpoint", "", "aws provider: KMS endpoint URL, e.g. for local-kms or LocalStack (default $AWS_ENDPOINT_URL_KMS, else kmsfs.conf)")
	pf.StringVar(&g.aws.profile, "aws-profile", "", "aws provider: shared config profile (default $AWS_PROFILE, else kmsfs.conf)")
	pf.Var((*keymgr.AuditSize)(&g.audit.MaxSize), "audit-max-size", "rotate .kmsfs/audit.log to audit.log.1 before it passes this size, in bytes or with a K, M or G suffix (default 16M)")
	pf.IntVar(&g.audit.Keep, "audit-keep", keymgr.DefaultAuditKeep, "rotated audit logs to keep, audit.log.1 (newest) to audit.log.N (1..99)")

	root.AddCommand(
		newInitCmd(g),
		newMountCmd(g),
		newUnmountCmd(g),
		newStatusCmd(g),
		newKeysCmd(g),
		newFsckCmd(g),
		newRewrapCmd(g),
		newCatCmd(g),
		newExportCmd(g),
		newVerifyCmd(g),
		newPathCmd(g),
		newIndexCmd(g),
		newTrustCmd(g),
	)
	return root
}

// exactArgs is cobra.ExactArgs with a usage error naming the arguments.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %d argument(s), got %d (usage: %s)", cmd.CommandPath(), n, len(args), cmd.UseLine())
		}
		return nil
	}
}
