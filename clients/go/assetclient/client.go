package assetclient

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"time"

	"google.golang.org/grpc"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// Client calls an Asset Service: one typed method per RPC, default deadlines on
// unary calls, retries of the safe ones, resumed watches and downloads, and
// errors to branch on (*Error, ErrNotFound, ...). It is safe for concurrent use.
type Client struct {
	raw         assetv1.AssetServiceClient
	conn        *grpc.ClientConn // nil for Wrap
	callTimeout time.Duration
}

func newClient(raw grpc.ClientConnInterface, s *settings) *Client {
	return &Client{raw: assetv1.NewAssetServiceClient(raw), callTimeout: s.callTimeout}
}

// Wrap gives the typed methods to a stub of your own (a connection made with
// grpc.NewClient, or a fake in a test). Of the options only WithCallTimeout
// applies; the connection's own settings decide about TLS, tokens and retries
// (ServiceConfig gives the retry policy).
func Wrap(raw assetv1.AssetServiceClient, opts ...Option) (*Client, error) {
	s := defaults()
	if err := s.apply(opts); err != nil {
		return nil, err
	}
	return &Client{raw: raw, callTimeout: s.callTimeout}, nil
}

// Raw is the generated stub, for what the typed methods do not cover.
func (c *Client) Raw() assetv1.AssetServiceClient { return c.raw }

// Conn is the connection Dial opened (nil for a Client made by Wrap).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection Dial opened; a Client made by Wrap has none.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// callContext gives ctx the default deadline unless it has one already.
func (c *Client) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || c.callTimeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.callTimeout)
}

// unary runs one unary call with the default deadline and wraps its error.
func unary[Req, Resp any](ctx context.Context, c *Client, method string, call func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	resp, err := call(ctx, req)
	return resp, wrap(method, err)
}

// Text is a VALUE asset's content as UTF-8 text (a manifest writes it to .txt).
func Text(s string) *assetv1.Value { return &assetv1.Value{Kind: &assetv1.Value_Text{Text: s}} }

// JSON is a VALUE asset's content as a JSON document (the server validates it;
// a manifest writes it to .json).
func JSON(doc string) *assetv1.Value { return &assetv1.Value{Kind: &assetv1.Value_Json{Json: doc}} }

// Data is a VALUE asset's content as raw bytes (a manifest writes them to .bin).
func Data(b []byte) *assetv1.Value { return &assetv1.Value{Kind: &assetv1.Value_Data{Data: b}} }

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	return slices.Sorted(maps.Keys(m))
}
