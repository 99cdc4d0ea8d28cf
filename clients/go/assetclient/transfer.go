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
	"time"

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
	// UploadID makes the upload resumable: 8 to 64 of [A-Za-z0-9_-], the same
	// on every stream. UploadResumable and UploadFile choose a random one when
	// it is empty; Upload sends it as given.
	UploadID string
	// ResumeFor is how long a resumable upload keeps trying without progress
	// (DefaultResumeFor when 0; negative: never resume).
	ResumeFor time.Duration
	// OnResume, if set, is told each time a resumable upload sends another
	// stream: from which byte, and the error that ended the last one.
	OnResume func(offset int64, cause error)
}

func (o UploadOptions) header() *assetv1.UploadHeader {
	h := &assetv1.UploadHeader{
		Label: o.Label, MediaType: o.MediaType, Tags: o.Tags, ExpectedSha256: o.SHA256, PendingAssetId: o.Pending,
		UploadId: o.UploadID,
	}
	if o.Size > 0 {
		h.ExpectedSizeBytes = &o.Size
	}
	return h
}

// Upload streams r to the server as a FILE asset (or into the PENDING asset
// opts.Pending) in ChunkSize messages, and returns the stored asset. The asset
// exists only once every byte is on the server's disk; a failed upload leaves
// nothing (unless opts.UploadID makes it resumable). The sha256 the server
// computed is checked against the one of the bytes read from r: a difference
// is a *DataLossError (ErrDataLoss). A stream that breaks is not sent again (r
// cannot be read twice): UploadFile and UploadResumable resume.
func (c *Client) Upload(ctx context.Context, r io.Reader, opts UploadOptions) (*assetv1.Asset, error) {
	asset, sent, sum, err := c.send(ctx, opts.header(), r)
	if err != nil {
		return nil, err
	}
	if sum == "" { // answered before every byte was sent: an UploadID that had completed
		return asset, nil
	}
	return checkStored(asset, sent, sum)
}

// send runs one UploadAsset stream: the header, then r to its end. It returns
// the stored asset, and how many bytes it sent with their sha256 (none when
// the server answered before every byte was sent).
func (c *Client) send(ctx context.Context, h *assetv1.UploadHeader, r io.Reader) (*assetv1.Asset, int64, string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.raw.UploadAsset(ctx)
	if err != nil {
		return nil, 0, "", wrap("UploadAsset", err)
	}
	if err := stream.Send(&assetv1.UploadAssetRequest{Payload: &assetv1.UploadAssetRequest_Header{Header: h}}); err != nil {
		asset, err := answerAfterSend(stream, err)
		return asset, 0, "", err
	}
	sum := sha256.New()
	sent, err := sendChunks(r, sum, func(chunk []byte) error {
		return stream.Send(&assetv1.UploadAssetRequest{Payload: &assetv1.UploadAssetRequest_Chunk{Chunk: chunk}})
	})
	if err != nil {
		if errors.Is(err, errSend) {
			asset, err := answerAfterSend(stream, err)
			return asset, sent, "", err
		}
		return nil, 0, "", err // reading r failed: cancel (deferred) ends the stream
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, 0, "", wrap("UploadAsset", err)
	}
	return resp.GetAsset(), sent, hex.EncodeToString(sum.Sum(nil)), nil
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

// answerAfterSend is the server's answer once it stopped taking a stream
// (Send reports only io.EOF): its error, or, for a resumable upload that had
// completed before, the asset it answers at once.
func answerAfterSend(stream assetv1.AssetService_UploadAssetClient, sendErr error) (*assetv1.Asset, error) {
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, wrap("UploadAsset", err)
	}
	if resp.GetAsset() == nil {
		return nil, wrap("UploadAsset", sendErr)
	}
	return resp.GetAsset(), nil
}

// checkStored compares the stored record with what was sent.
func checkStored(a *assetv1.Asset, sent int64, sum string) (*assetv1.Asset, error) {
	if a.GetSizeBytes() != sent || a.GetSha256() != sum {
		return a, &DataLossError{AssetID: a.GetId(), WantSize: sent, GotSize: a.GetSizeBytes(), WantSHA256: sum, GotSHA256: a.GetSha256(), Upload: true}
	}
	return a, nil
}

// UploadFile uploads the file at path (a path on this machine) with
// UploadResumable: it hashes the file first and sends its size and sha256, so
// the server refuses bytes that differ (the file changed while it was read,
// for instance) with ErrDataLoss and stores nothing, and a cut upload
// continues where the server's durable bytes end. Label defaults to the
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
	return c.UploadResumable(ctx, f, opts)
}
