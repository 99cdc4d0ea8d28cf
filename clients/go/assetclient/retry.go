package assetclient

import (
	"encoding/json"
	"fmt"
)

// The service whose methods the retry policy names.
const serviceName = "asset.v1.AssetService"

// retriedMethods are the calls the connection repeats by itself after
// UNAVAILABLE (the server was unreachable, restarting or shutting down), with
// why repeating each is safe. gRPC retries a call only while no response has
// arrived, so a stream is re-tried only until its first message; after that,
// Watch and Download resume it themselves from where it broke.
var retriedMethods = map[string]string{
	"GetAsset":       "reads",
	"BatchGetAssets": "reads",
	"ListAssets":     "reads",
	"WatchAsset":     "reads; Watch resumes a broken stream from the last revision",
	"ReadAsset":      "reads; Download resumes a broken stream from the last byte",
	"GetManifest":    "writes the same input_data.json again from the same inputs (and waits again with wait)",
	"RenewLease":     "sets the lease's end to now + lease: a repeat only moves it a little later",
	"MintTaskToken":  "the server keeps no state for a token: a repeat mints another, the lost one expires unused",
	"FulfillAsset":   "the server answers an identical fulfilment (same value, same bytes, the file it moved) with the same asset",
	"FailAsset":      "the server answers an identical failure (same reason) with the same asset",
	"ScrubAssets":    "checks the same stored bytes again and comes to the same marks",
	"QueryUpload":    "reads",
	"SetExpiry":      "sets the same expiry again (ttl from the repeat's now), or never again",
	"PlaceHold":      "places the same owner's hold again, replacing it",
	"GetUsage":       "reads",
}

// notRetriedMethods are the calls that create or delete an asset, and why a
// repeat after UNAVAILABLE could do harm: the first attempt may have been
// applied before the connection broke.
var notRetriedMethods = map[string]string{
	"UploadAsset":             "a client stream: its bytes are gone once sent (UploadResumable continues from QueryUpload's committed_bytes instead)",
	"RegisterFile":            "creates an asset: a repeat makes a second one (or, with move, finds the file gone)",
	"CreateValueAsset":        "creates an asset: a repeat makes a second one",
	"CreatePendingAsset":      "creates a promise: a repeat makes a second one",
	"GetOrCreatePendingAsset": "a repeat of a PRODUCE whose answer was lost would say JOIN, and nobody would produce",
	"DeleteAsset":             "a repeat of an applied one answers NOT_FOUND for a delete that succeeded",
	"ReleaseHold":             "a repeat of an applied one answers NOT_FOUND for a release that succeeded",
}

// The retry policy of retriedMethods: up to 5 attempts (grpc's ceiling), the
// waits before attempts 2 to 5 about 0.5, 1.25, 3.1 and 7.8 s (±20%): a call
// keeps trying for about 12 s, which carries it over a server restart, and
// fits in DefaultCallTimeout.
const (
	retryMaxAttempts       = 5
	retryInitialBackoff    = "0.5s"
	retryMaxBackoff        = "8s"
	retryBackoffMultiplier = 2.5
)

// ServiceConfig is the gRPC service config (JSON) every Dial uses unless
// WithoutRetries: a retryPolicy on UNAVAILABLE for the safe calls only (the
// table in README.md). Pass it to grpc.WithDefaultServiceConfig for a
// connection of your own.
func ServiceConfig() string { return serviceConfig }

var serviceConfig = buildServiceConfig()

func buildServiceConfig() string {
	type name struct {
		Service string `json:"service"`
		Method  string `json:"method"`
	}
	type retryPolicy struct {
		MaxAttempts          int      `json:"maxAttempts"`
		InitialBackoff       string   `json:"initialBackoff"`
		MaxBackoff           string   `json:"maxBackoff"`
		BackoffMultiplier    float64  `json:"backoffMultiplier"`
		RetryableStatusCodes []string `json:"retryableStatusCodes"`
	}
	type methodConfig struct {
		Name        []name      `json:"name"`
		RetryPolicy retryPolicy `json:"retryPolicy"`
	}
	mc := methodConfig{RetryPolicy: retryPolicy{
		MaxAttempts:          retryMaxAttempts,
		InitialBackoff:       retryInitialBackoff,
		MaxBackoff:           retryMaxBackoff,
		BackoffMultiplier:    retryBackoffMultiplier,
		RetryableStatusCodes: []string{"UNAVAILABLE"},
	}}
	for _, m := range sortedKeys(retriedMethods) {
		mc.Name = append(mc.Name, name{Service: serviceName, Method: m})
	}
	out, err := json.Marshal(map[string]any{"methodConfig": []methodConfig{mc}})
	if err != nil {
		panic(fmt.Sprintf("service config: %v", err)) // static data: cannot happen
	}
	return string(out)
}
