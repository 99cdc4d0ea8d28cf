package assetclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// ChunkSize is how many bytes each UploadAsset message carries.
const ChunkSize = 1 << 20

// UploadOptions describe an upload; Label is required unless Pending is set.
type UploadOptions struct {
	Label string
	Meta
	// Pending, if set, is a PENDING FILE asset the upload fulfills.
	Pending string
	// Size, if above 0, is the number of bytes the server must receive
	// (UploadFile sets it).
	Size int64
	// SHA256, if set (hex), is the sha256 the bytes must have (UploadFile sets it).
	SHA256 string
}

func (o UploadOptions) header() *assetv1.UploadHeader {
	h := &assetv1.UploadHeader{
		Label: o.Label, MediaType: o.MediaType, Tags: o.Tags, ExpectedSha256: o.SHA256, PendingAssetId: o.Pending,
	}
	if o.Size > 0 {
		h.ExpectedSizeBytes = &o.Size
	}
	return h
}

// Upload streams r to the server as a FILE asset (or into the PENDING asset
// opts.Pending) in ChunkSize messages, and returns the stored asset. The asset
// exists only once every byte is on the server's disk; a failed upload leaves
// nothing. The sha256 the server computed is checked against the one of the
// bytes read from r: a difference is a *DataLossError (ErrDataLoss).
// Not retried (r cannot be read twice); see UploadFile.
func (c *Client) Upload(ctx context.Context, r io.Reader, opts UploadOptions) (*assetv1.Asset, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.raw.UploadAsset(ctx)
	if err != nil {
		return nil, wrap("UploadAsset", err)
	}
	if err := stream.Send(&assetv1.UploadAssetRequest{Payload: &assetv1.UploadAssetRequest_Header{Header: opts.header()}}); err != nil {
		return nil, uploadError(stream, err)
	}
	sum := sha256.New()
	sent, err := sendChunks(r, sum, func(chunk []byte) error {
		return stream.Send(&assetv1.UploadAssetRequest{Payload: &assetv1.UploadAssetRequest_Chunk{Chunk: chunk}})
	})
	if err != nil {
		if errors.Is(err, errSend) {
			return nil, uploadError(stream, err)
		}
		return nil, err // reading r failed: cancel (deferred) discards the upload
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, wrap("UploadAsset", err)
	}
	return checkStored(resp.GetAsset(), sent, hex.EncodeToString(sum.Sum(nil)))
}

// errSend marks a failed Send: the reason is in the stream's final status.
var errSend = errors.New("send failed")

// sendChunks reads r to its end in ChunkSize pieces, hashing each into sum
// before send; it returns how many bytes it sent.
func sendChunks(r io.Reader, sum hash.Hash, send func([]byte) error) (int64, error) {
	buf := make([]byte, ChunkSize)
	var sent int64
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			sum.Write(buf[:n])
			if err := send(buf[:n]); err != nil {
				return sent, fmt.Errorf("%w: %w", errSend, err)
			}
			sent += int64(n)
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, io.EOF), errors.Is(rerr, io.ErrUnexpectedEOF):
			return sent, nil
		default:
			return sent, fmt.Errorf("upload: reading the content: %w", rerr)
		}
	}
}

// uploadError is why the server stopped taking an upload: Send reports only
// io.EOF, the status comes from CloseAndRecv.
func uploadError(stream assetv1.AssetService_UploadAssetClient, sendErr error) error {
	if _, err := stream.CloseAndRecv(); err != nil {
		return wrap("UploadAsset", err)
	}
	return wrap("UploadAsset", sendErr)
}

// checkStored compares the stored record with what was sent.
func checkStored(a *assetv1.Asset, sent int64, sum string) (*assetv1.Asset, error) {
	if a.GetSizeBytes() != sent || a.GetSha256() != sum {
		return a, &DataLossError{AssetID: a.GetId(), WantSize: sent, GotSize: a.GetSizeBytes(), WantSHA256: sum, GotSHA256: a.GetSha256(), Upload: true}
	}
	return a, nil
}

// UploadFile uploads the file at path (a path on this machine). It hashes the
// file first and sends its size and sha256 in the header, so the server
// refuses bytes that differ (the file changed while it was read, for
// instance) with ErrDataLoss and stores nothing. Label defaults to the
// file's name.
func (c *Client) UploadFile(ctx context.Context, path string, opts UploadOptions) (*assetv1.Asset, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	defer f.Close()
	if opts.Label == "" && opts.Pending == "" {
		opts.Label = filepath.Base(path)
	}
	if opts.SHA256 == "" || opts.Size == 0 {
		sum := sha256.New()
		n, err := io.Copy(sum, f)
		if err != nil {
			return nil, fmt.Errorf("upload: hashing %s: %w", path, err)
		}
		opts.Size, opts.SHA256 = n, hex.EncodeToString(sum.Sum(nil))
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("upload: %w", err)
		}
	}
	return c.Upload(ctx, f, opts)
}
