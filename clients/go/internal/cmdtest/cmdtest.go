// Package cmdtest runs a command's main in its own test binary, re-executed as
// the command, so that a test sees its exit code and output.
package cmdtest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

const argsVar = "CMDTEST_RUN_AS_COMMAND"

// Main is a command's TestMain: when a test re-executes the binary (Run), it
// runs main with the arguments given instead of the tests.
func Main(m *testing.M, name string, main func()) {
	if args, ok := os.LookupEnv(argsVar); ok {
		os.Args = append([]string{name}, strings.Fields(args)...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Run runs the command with args (split at spaces) and env added to the
// test's environment: its exit code and what it printed.
func Run(t *testing.T, args string, env ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), argsVar+"="+args), env...)
	out, err := cmd.CombinedOutput()
	if exit, ok := err.(*exec.ExitError); ok {
		return exit.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("running the command: %v", err)
	}
	return 0, string(out)
}

// RefusesAStrayArgument checks that the command refuses an argument it does
// not take (a mistyped option, an address without -addr) with exit 2, naming
// it, before anything is dialled.
func RefusesAStrayArgument(t *testing.T) {
	t.Helper()
	code, out := Run(t, "127.0.0.1:1", "ASSET_SERVICE_ADDR=127.0.0.1:1")
	if code != 2 || !strings.Contains(out, `unexpected argument "127.0.0.1:1"`) {
		t.Fatalf("the command with a stray argument 127.0.0.1:1: exit %d\n%s", code, out)
	}
}
