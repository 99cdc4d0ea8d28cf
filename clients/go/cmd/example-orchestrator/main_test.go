package main

import (
	"testing"

	"github.com/asset-service/asset-service/clients/go/internal/cmdtest"
)

func TestMain(m *testing.M) { cmdtest.Main(m, "example-orchestrator", main) }

func TestAStrayArgumentIsRefused(t *testing.T) { cmdtest.RefusesAStrayArgument(t) }
