package assetclient

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"

	assetv1 "github.com/asset-service/asset-service/clients/go/gen/asset/v1"
)

// The waits between the streams of a resumable upload: doubling from the
// first, up to the last.
const (
	uploadFirstWait = 500 * time.Millisecond
	uploadMaxWait   = 8 * time.Second
)

// QueryUpload says how much of a resumable upload the server holds durably
// (CommittedBytes: where the next stream starts), the asset once it completed,
// and when an unfinished one expires. An unknown or expired upload id (or
// another principal's) is ErrNotFound.
func (c *Client) QueryUpload(ctx context.Context, uploadID string) (*assetv1.QueryUploadResponse, error) {
	return unary(ctx, c, "QueryUpload", c.raw.QueryUpload, &assetv1.QueryUploadRequest{UploadId: uploadID})
}

// NewUploadID returns a random upload id (32 hex digits) for UploadOptions.UploadID.
func NewUploadID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on supported platforms
	}
	return hex.EncodeToString(b)
}

// UploadResumable uploads all of r (from its start) and survives cuts: when a
// stream breaks (UNAVAILABLE: the connection dropped or the server restarted;
// ABORTED: the server still holds the previous stream; a stream cancelled or
// timed out by the server) it asks QueryUpload how many bytes the server holds
// durably and sends the rest from there, until the upload completes or it has
// made no progress for opts.ResumeFor (DefaultResumeFor when 0; negative:
// never resume). The whole file's size and sha256 are computed first (unless
// opts gives them) and sent, so the server checks every byte of every stream
// together; an upload that completed while its answer was lost is answered by
// QueryUpload, never stored twice. opts.UploadID names the upload (a random
// one, NewUploadID, when empty); giving the id of a cut upload continues it.
func (c *Client) UploadResumable(ctx context.Context, r io.ReadSeeker, opts UploadOptions) (*assetv1.Asset, error) {
	if opts.SHA256 == "" || opts.Size <= 0 {
		size, sum, err := hashFrom(r)
		if err != nil {
			return nil, err
		}
		opts.Size, opts.SHA256 = size, sum
	}
	if opts.UploadID == "" {
		opts.UploadID = NewUploadID()
	}
	resumeFor := opts.ResumeFor
	if resumeFor == 0 {
		resumeFor = DefaultResumeFor
	}
	var offset int64
	progressAt := time.Now()
	wait := uploadFirstWait
	for {
		asset, err := c.uploadFrom(ctx, r, offset, opts)
		if err == nil {
			return checkStored(asset, opts.Size, opts.SHA256)
		}
		if !c.resumableUpload(ctx, err) || resumeFor < 0 {
			return nil, err
		}
		q, qerr := c.QueryUpload(ctx, opts.UploadID)
		switch {
		case qerr == nil && q.GetAsset() != nil: // it completed; the answer was lost
			return checkStored(q.GetAsset(), opts.Size, opts.SHA256)
		case qerr == nil:
			if q.GetCommittedBytes() > offset {
				progressAt, wait = time.Now(), uploadFirstWait
			}
			offset = q.GetCommittedBytes()
		case errors.Is(qerr, ErrNotFound): // never started, or expired: from the start
			offset = 0
		case errors.Is(qerr, ErrUnavailable): // still down: try the stream again later
		default:
			return nil, qerr
		}
		if time.Since(progressAt)+wait > resumeFor {
			return nil, err
		}
		if opts.OnResume != nil {
			opts.OnResume(offset, err)
		}
		if serr := sleep(ctx, wait); serr != nil {
			return nil, wrap("UploadAsset", serr)
		}
		wait = min(2*wait, uploadMaxWait)
	}
}

// hashFrom reads r from its start: its size and sha256.
func hashFrom(r io.ReadSeeker) (int64, string, error) {
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return 0, "", fmt.Errorf("upload: %w", err)
	}
	sum := sha256.New()
	n, err := io.Copy(sum, r)
	if err != nil {
		return 0, "", fmt.Errorf("upload: hashing the content: %w", err)
	}
	return n, hex.EncodeToString(sum.Sum(nil)), nil
}

// uploadFrom sends one stream of a resumable upload: r from offset to its end.
func (c *Client) uploadFrom(ctx context.Context, r io.ReadSeeker, offset int64, opts UploadOptions) (*assetv1.Asset, error) {
	if _, err := r.Seek(offset, io.SeekStart); err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	h := opts.header()
	h.WriteOffset = offset
	asset, _, _, err := c.send(ctx, h, r)
	return asset, err
}

// resumableUpload reports whether a stream of a resumable upload that failed
// with err may be followed by another.
func (c *Client) resumableUpload(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case codes.Unavailable, codes.Aborted, codes.DeadlineExceeded:
		return true
	case codes.Canceled: // by the server or a proxy, unless the connection was closed
		return c.conn != nil && c.conn.GetState() != connectivity.Shutdown
	case codes.FailedPrecondition: // more became durable after QueryUpload answered
		return strings.Contains(e.Message, "resume at committed_bytes=")
	}
	return false
}
