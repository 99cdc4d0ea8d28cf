package assetclient

import (
	"context"
	"errors"
	"io"
	"iter"

	"google.golang.org/grpc"
)

// messages runs one server-streaming call: each message in turn, then, if the
// stream failed rather than ended, its *Error (named after method) with a nil
// message. The call is cancelled once the loop over it ends, however it ends.
func messages[T any](ctx context.Context, method string, open func(context.Context) (grpc.ServerStreamingClient[T], error)) iter.Seq2[*T, error] {
	return func(yield func(*T, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := open(ctx)
		if err != nil {
			yield(nil, wrap(method, err))
			return
		}
		for {
			msg, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				yield(nil, wrap(method, err))
				return
			}
			if !yield(msg, nil) {
				return
			}
		}
	}
}
