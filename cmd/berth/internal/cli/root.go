// Package cli builds the berth command tree. Every command is registered explicitly in
// NewRoot, in the order `berth --help` lists them.
package cli

import (
	"github.com/spf13/cobra"
)

// ExitError carries the exit code a command wants; main prints Err (when set) and exits
// with Code.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return "exit status"
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// NewRoot returns the root command with every subcommand registered.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "berth",
		Short:         "Berth deploys services to a fleet of hosts",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	useContexts(root)
	root.AddCommand(
		newVersionCmd(),
		newStatusCmd(),
		newContextCmd(),
		newCompletionCmd(),
		newDevCmd(),
		newEventsCmd(),
		newInstancesCmd(),
		newResolveCmd(),
		newWatchCmd(),
		newTrafficCmd(),
		newCoordCmd(),
		newDeployCmd(),
		newDeploymentsCmd(),
		newRunCmd(),
		newTreeCmd(),
		newHostsCmd(),
		newAgentCmd(),
		newImagesCmd(),
		newCertsCmd(),
		newTokenCmd(),
	)
	return root
}
