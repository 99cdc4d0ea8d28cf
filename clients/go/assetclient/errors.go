package assetclient

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinels to branch on with errors.Is, one per status code the service
// answers with. Every error a Client method returns for a failed call is an
// *Error, which matches the sentinel of its code:
//
//	if errors.Is(err, assetclient.ErrNotFound) { ... }
var (
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrAborted            = errors.New("aborted")
	ErrPermissionDenied   = errors.New("permission denied")
	ErrUnauthenticated    = errors.New("unauthenticated")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrDeadlineExceeded   = errors.New("deadline exceeded")
	ErrCanceled           = errors.New("canceled")
	ErrOutOfRange         = errors.New("out of range")
	ErrDataLoss           = errors.New("data loss")
	ErrUnavailable        = errors.New("unavailable")
	ErrUnimplemented      = errors.New("unimplemented")
	ErrInternal           = errors.New("internal")
	ErrUnknown            = errors.New("unknown")
)

var sentinels = map[codes.Code]error{
	codes.InvalidArgument:    ErrInvalidArgument,
	codes.NotFound:           ErrNotFound,
	codes.AlreadyExists:      ErrAlreadyExists,
	codes.FailedPrecondition: ErrFailedPrecondition,
	codes.Aborted:            ErrAborted,
	codes.PermissionDenied:   ErrPermissionDenied,
	codes.Unauthenticated:    ErrUnauthenticated,
	codes.ResourceExhausted:  ErrResourceExhausted,
	codes.DeadlineExceeded:   ErrDeadlineExceeded,
	codes.Canceled:           ErrCanceled,
	codes.OutOfRange:         ErrOutOfRange,
	codes.DataLoss:           ErrDataLoss,
	codes.Unavailable:        ErrUnavailable,
	codes.Unimplemented:      ErrUnimplemented,
	codes.Internal:           ErrInternal,
	codes.Unknown:            ErrUnknown,
}

// Violation is one machine-readable reason of a FAILED_PRECONDITION: for a
// manifest, an input that is not AVAILABLE (Type "PENDING", "FAILED", ...;
// Subject "assets/<id>"; a last Type "MORE" says how many were left out).
type Violation struct {
	Type, Subject, Description string
}

// Error is a call the server (or the connection) failed: the gRPC status code,
// the server's message, and the details it attached. status.Code(err) and
// status.FromError(err) see the original status.
type Error struct {
	// Method is the RPC, e.g. "GetAsset".
	Method string
	Code   codes.Code
	// Message is the server's message (which asset, which state, what was expected).
	Message string
	// Violations are the status's PreconditionFailure details, if any.
	Violations []Violation
	status     *status.Status
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s: %s", e.Method, e.Code, e.Message)
}

// GRPCStatus is the status the call failed with (what status.Code reads).
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Is matches the sentinel of e's code (ErrNotFound for codes.NotFound, ...),
// and context.DeadlineExceeded / context.Canceled for those two codes.
func (e *Error) Is(target error) bool {
	switch target {
	case sentinels[e.Code]:
		return true
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	case context.Canceled:
		return e.Code == codes.Canceled
	}
	return false
}

// Temporary reports whether trying the same call again later may succeed: the
// server was unreachable or shutting down (codes.Unavailable).
func (e *Error) Temporary() bool { return e.Code == codes.Unavailable }

// wrap turns a failed call's error into an *Error naming method; nil stays nil,
// and an error that carries no status (a local one) is returned as it is.
func wrap(method string, err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			st = status.FromContextError(err)
		} else {
			return fmt.Errorf("%s: %w", method, err)
		}
	}
	e := &Error{Method: method, Code: st.Code(), Message: st.Message(), status: st}
	for _, d := range st.Details() {
		if pf, ok := d.(*errdetails.PreconditionFailure); ok {
			for _, v := range pf.GetViolations() {
				e.Violations = append(e.Violations, Violation{Type: v.GetType(), Subject: v.GetSubject(), Description: v.GetDescription()})
			}
		}
	}
	return e
}

// Code is err's gRPC status code: codes.OK for nil, the code of an *Error or
// of any error carrying a gRPC status, codes.Unknown otherwise.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return status.Code(err)
}

// DataLossError says the bytes a read received are not the asset's: their
// length or sha256 differs from its record (or, for an upload, the server's
// sha256 of what it stored differs from what was sent). It matches ErrDataLoss.
type DataLossError struct {
	AssetID string
	// What the record says (for an upload: what was sent), and what arrived
	// (for an upload: what the server stored).
	WantSize, GotSize     int64
	WantSHA256, GotSHA256 string
	// Upload says the mismatch is between an upload's bytes and the stored asset.
	Upload bool
}

func (e *DataLossError) Error() string {
	if e.Upload {
		return fmt.Sprintf("asset %s: the server stored %d bytes with sha256 %s, but %d bytes with sha256 %s were sent",
			e.AssetID, e.GotSize, e.GotSHA256, e.WantSize, e.WantSHA256)
	}
	if e.WantSize != e.GotSize {
		return fmt.Sprintf("asset %s: received %d bytes, the record says %d", e.AssetID, e.GotSize, e.WantSize)
	}
	return fmt.Sprintf("asset %s: received bytes hash to %s, the record says %s", e.AssetID, e.GotSHA256, e.WantSHA256)
}

// Is matches ErrDataLoss.
func (e *DataLossError) Is(target error) bool { return target == ErrDataLoss }

// GRPCStatus is DATA_LOSS with e's message: Code and status.Code see the code it matches.
func (e *DataLossError) GRPCStatus() *status.Status { return status.New(codes.DataLoss, e.Error()) }
