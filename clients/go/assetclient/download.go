package assetclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// readResumes is how many times in a row a download re-opens a stream that
// broke (UNAVAILABLE) without delivering a byte, waiting 0.1 s, 0.2 s, ...
// between (each attempt to open is retried by the service config as well)
const readResumes = 6

// Download streams an AVAILABLE asset's bytes into w and returns its record
// (read first). The bytes are checked against the record's size and sha256:
// a mismatch is a *DataLossError (ErrDataLoss), and w has then received bytes
// that must not be used. A stream that breaks is re-opened where it stopped.
func (c *Client) Download(ctx context.Context, id string, w io.Writer) (*assetv1.Asset, error) {
	asset, err := c.GetAsset(ctx, id)
	if err != nil {
		return nil, err
	}
	sum := sha256.New()
	received, err := c.read(ctx, id, 0, 0, io.MultiWriter(sum, w))
	if err != nil {
		return nil, err
	}
	got := hex.EncodeToString(sum.Sum(nil))
	if received != asset.GetSizeBytes() || (asset.GetSha256() != "" && got != asset.GetSha256()) {
		return nil, &DataLossError{AssetID: id, WantSize: asset.GetSizeBytes(), GotSize: received, WantSHA256: asset.GetSha256(), GotSHA256: got}
	}
	return asset, nil
}

// ReadRange streams limit bytes (0: to the end) of an asset from offset into
// w and returns how many it wrote. A range is not checked against the
// record's sha256 (the server checks its stored blocks before sending them).
func (c *Client) ReadRange(ctx context.Context, id string, offset, limit int64, w io.Writer) (int64, error) {
	return c.read(ctx, id, offset, limit, w)
}

// DownloadFile downloads an asset into the file at path, atomically: it
// writes a temporary file in the same folder, checks it (Download), syncs it
// and renames it into place; on any error nothing is left at path.
func (c *Client) DownloadFile(ctx context.Context, id, path string) (*assetv1.Asset, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".part-*")
	if err != nil {
		return nil, fmt.Errorf("download: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	asset, err := c.Download(ctx, id, tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return nil, err
	}
	return asset, nil
}

// read copies [offset, offset+limit) into w, re-opening the stream after
// UNAVAILABLE at the first byte not yet written.
func (c *Client) read(ctx context.Context, id string, offset, limit int64, w io.Writer) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var written int64
	failures := 0
	for {
		req := &assetv1.ReadAssetRequest{AssetId: id, Offset: offset + written}
		if limit > 0 {
			req.Limit = limit - written
		}
		before := written
		err := c.readOnce(ctx, req, w, &written)
		if err == nil {
			return written, nil
		}
		if written > before {
			failures = 0
		}
		if failures++; Code(err) != codes.Unavailable || failures > readResumes || ctx.Err() != nil {
			return written, err
		}
		if err := sleep(ctx, time.Duration(failures)*100*time.Millisecond); err != nil {
			return written, wrap("ReadAsset", err)
		}
	}
}

func (c *Client) readOnce(ctx context.Context, req *assetv1.ReadAssetRequest, w io.Writer, written *int64) error {
	open := func(ctx context.Context) (grpc.ServerStreamingClient[assetv1.ReadAssetResponse], error) {
		return c.raw.ReadAsset(ctx, req)
	}
	next := req.GetOffset() // where the next chunk must start
	for msg, err := range messages(ctx, "ReadAsset", open) {
		if err != nil {
			return err
		}
		if msg.GetOffset() != next {
			return fmt.Errorf("download of %s: a chunk at offset %d, expected %d", req.GetAssetId(), msg.GetOffset(), next)
		}
		if _, err := w.Write(msg.GetChunk()); err != nil {
			return fmt.Errorf("download of %s: writing: %w", req.GetAssetId(), err)
		}
		next += int64(len(msg.GetChunk()))
		*written += int64(len(msg.GetChunk()))
	}
	return nil
}
