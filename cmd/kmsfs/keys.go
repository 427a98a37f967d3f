package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/kmsfs/kmsfs/fs/cipherdir"
	"github.com/kmsfs/kmsfs/keymgr"
)

func newKeysCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "manage the master keys of the local keyring",
		Long: `keys manages the master keys (CMKs) of the local keyring. REF is a key ID,
a key ARN, an alias (alias/NAME) or an alias ARN. Every change is saved to
the keyring at once; the key's metadata is printed.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown keys command %q (usage: kmsfs keys list|create|rotate|disable|enable|alias)", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	var listJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "list the keys: id, aliases, state, current version, description",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withKeyring(g, false, func(k *keymgr.Keyring) error {
				keys := k.Keys()
				if listJSON {
					return printKeysJSON(cmd.OutOrStdout(), keys)
				}
				printKeys(cmd.OutOrStdout(), keys)
				return nil
			})
		},
	}
	list.Flags().BoolVar(&listJSON, "json", false, "print JSON")

	var alias, desc string
	create := &cobra.Command{
		Use:   "create [--alias NAME] [--description D]",
		Short: "create a key (and the keyring, when it does not exist yet)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if alias != "" {
				name = aliasName(alias)
			}
			return withKeyring(g, true, func(k *keymgr.Keyring) error {
				md, err := k.CreateKey(desc, name)
				if err != nil {
					return err
				}
				if err := saveKeyring(k); err != nil {
					return err
				}
				printKeys(cmd.OutOrStdout(), []keymgr.KeyMetadata{md})
				return nil
			})
		},
	}
	create.Flags().StringVar(&alias, "alias", "", "alias for the key (alias/NAME; the alias/ prefix may be left out)")
	create.Flags().StringVar(&desc, "description", "", "description of the key")

	change := func(use, short string, act func(k *keymgr.Keyring, ref string) (keymgr.KeyMetadata, error)) *cobra.Command {
		return &cobra.Command{
			Use:   use + " REF",
			Short: short,
			Args:  exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				ref := args[0]
				return withKeyring(g, false, func(k *keymgr.Keyring) error {
					md, err := act(k, ref)
					if err != nil {
						return keyRefError(ref, k, err)
					}
					if err := saveKeyring(k); err != nil {
						return err
					}
					printKeys(cmd.OutOrStdout(), []keymgr.KeyMetadata{md})
					return nil
				})
			},
		}
	}
	rotate := change("rotate", "add a new version to a key: new files use it, old versions still decrypt",
		func(k *keymgr.Keyring, ref string) (keymgr.KeyMetadata, error) { return k.Rotate(ref) })
	// Running mounts refill their DEK pools under the new version at once.
	rotate.PostRun = func(*cobra.Command, []string) { notifyKeyChanged() }
	disable := change("disable", "disable a key: it neither wraps nor unwraps until enabled",
		func(k *keymgr.Keyring, ref string) (keymgr.KeyMetadata, error) { return k.SetEnabled(ref, false) })
	enable := change("enable", "enable a disabled key",
		func(k *keymgr.Keyring, ref string) (keymgr.KeyMetadata, error) { return k.SetEnabled(ref, true) })
	// A disabled key stops new files at once: running mounts drop the
	// data keys their pools generated ahead under it (and refill them
	// once it is enabled again). Files whose keys are cached stay open.
	disable.PostRun = func(*cobra.Command, []string) { notifyKeyChanged() }
	enable.PostRun = func(*cobra.Command, []string) { notifyKeyChanged() }
	aliasCmd := &cobra.Command{
		Use:   "alias NAME REF",
		Short: "point alias NAME (alias/NAME) at a key, creating or moving it",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, ref := aliasName(args[0]), args[1]
			return withKeyring(g, false, func(k *keymgr.Keyring) error {
				if err := k.SetAlias(name, ref); err != nil {
					return keyRefError(ref, k, err)
				}
				if err := saveKeyring(k); err != nil {
					return err
				}
				md, err := k.Resolve(name)
				if err != nil {
					return keyRefError(name, k, err)
				}
				printKeys(cmd.OutOrStdout(), []keymgr.KeyMetadata{md})
				return nil
			})
		},
	}
	cmd.AddCommand(list, create, rotate, disable, enable, aliasCmd)
	return cmd
}

// aliasName accepts NAME or alias/NAME.
func aliasName(s string) string {
	if strings.HasPrefix(s, "alias/") {
		return s
	}
	return "alias/" + s
}

// withKeyring opens the keyring (creating it when create is set and it is
// missing), runs fn and closes it, zeroing its keys.
func withKeyring(g *globals, create bool, fn func(k *keymgr.Keyring) error) (err error) {
	path, err := keyringPath(g)
	if err != nil {
		return err
	}
	p, err := openProvider(providerSpec{kind: cipherdir.ProviderLocal, keyringPath: path, create: create}, newPassSource(g))
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			p.discard() // only a keyring this call created
		}
		p.Close()
	}()
	return fn(p.keyring)
}

func saveKeyring(k *keymgr.Keyring) error {
	if err := k.Save(); err != nil {
		return fmt.Errorf("save keyring %s: %w", k.Path(), err)
	}
	return nil
}

func keyRefError(ref string, k *keymgr.Keyring, err error) error {
	if errors.Is(err, keymgr.ErrKeyNotFound) {
		return fmt.Errorf("key %s not found in keyring %s: see kmsfs keys list", ref, k.Path())
	}
	return err
}

func printKeys(w io.Writer, keys []keymgr.KeyMetadata) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY ID\tALIASES\tSTATE\tVERSION\tDESCRIPTION")
	for _, k := range keys {
		aliases := strings.Join(k.Aliases, ",")
		if aliases == "" {
			aliases = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", k.KeyID, aliases, k.State, k.CurrentVersion, k.Description)
	}
	tw.Flush()
	if len(keys) == 1 {
		fmt.Fprintf(w, "arn: %s\n", keys[0].ARN)
	}
}

type keyJSON struct {
	KeyID          string   `json:"key_id"`
	ARN            string   `json:"arn"`
	Aliases        []string `json:"aliases"`
	State          string   `json:"state"`
	CurrentVersion uint32   `json:"current_version"`
	Description    string   `json:"description"`
}

func printKeysJSON(w io.Writer, keys []keymgr.KeyMetadata) error {
	out := make([]keyJSON, 0, len(keys))
	for _, k := range keys {
		a := k.Aliases
		if a == nil {
			a = []string{}
		}
		out = append(out, keyJSON{KeyID: k.KeyID, ARN: k.ARN, Aliases: a, State: string(k.State), CurrentVersion: k.CurrentVersion, Description: k.Description})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
