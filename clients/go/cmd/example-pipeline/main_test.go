package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestMain runs main itself when a test re-executes this binary as the command.
func TestMain(m *testing.M) {
	if args, ok := os.LookupEnv("RUN_AS_COMMAND"); ok {
		os.Args = append([]string{"example-pipeline"}, strings.Fields(args)...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A stray argument (a mistyped option, an address without -addr) is refused
// with exit 2 before anything is dialled, not ignored.
func TestAStrayArgumentIsRefused(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "RUN_AS_COMMAND=127.0.0.1:1", "ASSET_SERVICE_ADDR=127.0.0.1:1")
	out, err := cmd.CombinedOutput()
	exit, ok := err.(*exec.ExitError)
	if !ok || exit.ExitCode() != 2 || !strings.Contains(string(out), `unexpected argument "127.0.0.1:1"`) {
		t.Fatalf("example-pipeline 127.0.0.1:1: %v\n%s", err, out)
	}
}
