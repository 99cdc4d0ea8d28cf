// Typed errors: a failed call rejects with an AssetServiceError (gRPC code, server message, details).
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { Metadata, status } from "@grpc/grpc-js";

/** The gRPC status codes (grpc-js's `status` enum): `err.code === Status.NOT_FOUND`. */
export { status as Status } from "@grpc/grpc-js";

/** One entry of google.rpc.Status.details: a packed google.protobuf.Any. */
export interface StatusDetail {
  /** e.g. "type.googleapis.com/google.rpc.PreconditionFailure" */
  typeUrl: string;
  value: Uint8Array;
}

/** The google.rpc.Status the server sent in `grpc-status-details-bin`, decoded. */
export interface RpcStatus {
  code: number;
  message: string;
  details: StatusDetail[];
}

/** One violation of a google.rpc.PreconditionFailure (GetManifest: an input not AVAILABLE). */
export interface PreconditionViolation {
  /** The input's state, e.g. "PENDING" or "FAILED" ("MORE": the list was cut). */
  type: string;
  /** "assets/<id>" */
  subject: string;
  description: string;
}

const PRECONDITION_FAILURE = "type.googleapis.com/google.rpc.PreconditionFailure";

/**
 * A call the server (or the channel) ended with a status other than OK. `code` is the gRPC
 * status (`Status.NOT_FOUND`, ...), `details` the server's message, `rpc` the method, and
 * `statusDetails` / `violations` the machine-readable details the server attached, if any.
 * `err.code` and `err.details` are where grpc-js's own ServiceError has them.
 */
export class AssetServiceError extends Error {
  readonly code: status;
  readonly details: string;
  readonly metadata: Metadata;
  /** The RPC that failed, e.g. "GetAsset". */
  readonly rpc: string;
  /** google.rpc.Status from the `grpc-status-details-bin` trailer; undefined without one. */
  readonly statusDetails: RpcStatus | undefined;

  constructor(rpc: string, code: status, details: string, metadata = new Metadata(), options?: { cause?: unknown }) {
    super(`${rpc}: ${status[code] ?? code}: ${details}`, options);
    this.name = "AssetServiceError";
    this.rpc = rpc;
    this.code = code;
    this.details = details;
    this.metadata = metadata;
    this.statusDetails = decodeStatusDetails(metadata);
  }

  /** The code's name, e.g. "NOT_FOUND". */
  get codeName(): string {
    return status[this.code] ?? String(this.code);
  }

  /** The PreconditionFailure violations in `statusDetails` (empty without any). */
  get violations(): PreconditionViolation[] {
    const found: PreconditionViolation[] = [];
    for (const d of this.statusDetails?.details ?? []) {
      if (d.typeUrl === PRECONDITION_FAILURE) found.push(...decodePreconditionFailure(d.value));
    }
    return found;
  }
}

/**
 * The bytes a read received are not the asset's: their length or sha256 differs from its
 * record (or an upload's answer says the server stored other bytes than were sent). `code` is
 * DATA_LOSS, like the server's own error for stored bytes that changed.
 */
export class DataLossError extends AssetServiceError {
  constructor(
    rpc: string,
    readonly assetId: string,
    message: string,
  ) {
    super(rpc, status.DATA_LOSS, message);
    this.name = "DataLossError";
  }
}

interface ServiceErrorLike {
  code: number;
  details?: string;
  metadata?: Metadata;
  message?: string;
}

function isServiceError(err: unknown): err is ServiceErrorLike {
  return typeof err === "object" && err !== null && typeof (err as { code?: unknown }).code === "number";
}

/**
 * `err` as an AssetServiceError of `rpc` when it is a gRPC status (a grpc-js ServiceError,
 * or one already wrapped); anything else (a TypeError of an argument check, a file that
 * could not be read) as it is.
 */
export function asCallError(rpc: string, err: unknown): unknown {
  if (err instanceof AssetServiceError || !isServiceError(err)) return err;
  const details = err.details ?? err.message ?? "";
  return new AssetServiceError(rpc, err.code as status, details, err.metadata ?? new Metadata(), { cause: err });
}

function decodeStatusDetails(metadata: Metadata): RpcStatus | undefined {
  const [raw] = metadata.get("grpc-status-details-bin");
  if (!(raw instanceof Uint8Array)) return undefined;
  try {
    return decodeRpcStatus(raw);
  } catch {
    return undefined; // malformed details do not hide the status itself
  }
}

/** google.rpc.Status: code = 1, message = 2, details = 3 (google.protobuf.Any: type_url = 1, value = 2). */
function decodeRpcStatus(bytes: Uint8Array): RpcStatus {
  const out: RpcStatus = { code: 0, message: "", details: [] };
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field === 1 && wire === WireType.Varint) out.code = r.int32();
    else if (field === 2 && wire === WireType.LengthDelimited) out.message = r.string();
    else if (field === 3 && wire === WireType.LengthDelimited) out.details.push(decodeAny(r.bytes()));
    else r.skip(wire, field);
  }
  return out;
}

function decodeAny(bytes: Uint8Array): StatusDetail {
  const out: StatusDetail = { typeUrl: "", value: new Uint8Array() };
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [field, wire] = r.tag();
    if (field === 1 && wire === WireType.LengthDelimited) out.typeUrl = r.string();
    else if (field === 2 && wire === WireType.LengthDelimited) out.value = r.bytes();
    else r.skip(wire, field);
  }
  return out;
}

/** google.rpc.PreconditionFailure: violations = 1 (type = 1, subject = 2, description = 3). */
function decodePreconditionFailure(bytes: Uint8Array): PreconditionViolation[] {
  const found: PreconditionViolation[] = [];
  try {
    const r = new BinaryReader(bytes);
    while (r.pos < r.len) {
      const [field, wire] = r.tag();
      if (field !== 1 || wire !== WireType.LengthDelimited) {
        r.skip(wire, field);
        continue;
      }
      const v: PreconditionViolation = { type: "", subject: "", description: "" };
      const inner = new BinaryReader(r.bytes());
      while (inner.pos < inner.len) {
        const [f, w] = inner.tag();
        if (w !== WireType.LengthDelimited || f < 1 || f > 3) inner.skip(w, f);
        else if (f === 1) v.type = inner.string();
        else if (f === 2) v.subject = inner.string();
        else v.description = inner.string();
      }
      found.push(v);
    }
  } catch {
    // malformed: what was decoded so far
  }
  return found;
}
