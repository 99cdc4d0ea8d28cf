// Package assetclient is the Go client of the Asset Service: typed methods for
// every RPC, the address and credentials from options or the environment,
// default deadlines, retries of the safe calls, watches and downloads that
// resume after the server restarts, and errors to branch on.
//
//	c, err := assetclient.DialEnv() // ASSET_SERVICE_ADDR, ASSET_SERVICE_TOKEN, ...
//	if err != nil { ... }
//	defer c.Close()
//	p, err := c.CreatePendingAsset(ctx, assetclient.Promise{TaskID: "t-1", Label: "out.txt"})
//	for ev, err := range c.Watch(ctx, []string{p.GetId()}, assetclient.WatchOptions{}) { ... }
//	a, err := c.GetAsset(ctx, id)
//	if errors.Is(err, assetclient.ErrNotFound) { ... }
//
// Unary calls get DefaultCallTimeout when their context has no deadline
// (WithCallTimeout). The connection retries the calls a repeat cannot harm
// (reads, GetManifest, FulfillAsset, FailAsset, RenewLease, MintTaskToken, ...)
// after UNAVAILABLE through gRPC's service config (ServiceConfig), never one
// that creates or deletes an asset. Failed calls
// return an *Error: its Code, the server's Message and the Violations of a
// FAILED_PRECONDITION; errors.Is matches it against ErrNotFound,
// ErrFailedPrecondition, ... by code.
package assetclient
