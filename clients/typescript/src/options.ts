// The options of AssetService and of its methods.
import type * as grpc from "@grpc/grpc-js";

import type { CallOptions } from "./calls";
import type { DeepPartial, ListAssetsRequest } from "./gen/asset/v1/asset_service";
import type { RetryPolicy } from "./retry";
import type { Security } from "./security";

/** How to reach the server (Security: TLS, client certificate, token) and how calls behave. */
export interface ClientOptions extends Security {
  /** The deadline of a unary call that sets none, in ms (default 30_000; Infinity: none). */
  defaultTimeoutMs?: number;
  /** How safe calls are retried on UNAVAILABLE (README, "Retries"); false: never. */
  retry?: Partial<RetryPolicy> | false;
  /** More grpc-js channel options (e.g. "grpc.max_receive_message_length"). */
  channelOptions?: grpc.ChannelOptions;
}

export const DEFAULT_TIMEOUT_MS = 30_000;

/** The metadata of an upload; the bytes come from the source. */
export interface UploadOptions extends CallOptions {
  /** Required unless `pendingAssetId` is set (`uploadFile` defaults it to the file's name). */
  label?: string;
  mediaType?: string;
  tags?: string[];
  /** The upload fails (DATA_LOSS) unless exactly this many bytes arrive. */
  expectedSizeBytes?: number;
  /** Lower-case hex: the upload fails (DATA_LOSS) unless the content has this sha256. */
  expectedSha256?: string;
  /** Fulfills this PENDING FILE asset instead of making a new one. */
  pendingAssetId?: string;
  /** Bytes a message (default 1 MiB, at most 4 MiB). */
  chunkSize?: number;
  /**
   * Resume after a cut (default: for bytes and files of 8 MiB or more; a stream cannot be
   * read again, so it never is): the upload carries an upload_id, and after a cut the rest
   * is sent from QueryUpload's committed_bytes.
   */
  resumable?: boolean;
  /** The upload_id (8 to 64 of A-Z a-z 0-9 _ -; default a new UUID): continue an upload an earlier process began (implies `resumable`). */
  uploadId?: string;
  /** Give up resuming after this long without progress (default 60_000 ms). */
  resumeWithinMs?: number;
  /** Called after each chunk with the bytes sent so far (it goes back when a cut upload resumes). */
  onProgress?: (sentBytes: number) => void;
}

/** What an upload reads: bytes, or a stream / async iterable of Buffers. */
export type UploadSource = Uint8Array | AsyncIterable<Uint8Array>;

export interface RegisterFileOptions extends CallOptions {
  label?: string;
  mediaType?: string;
  tags?: string[];
  /** Move the file into the store instead of copying it. */
  move?: boolean;
}

/** The filters of ListAssets (every one set must match), and where a page starts. */
export type ListFilter = DeepPartial<Omit<ListAssetsRequest, "pageToken" | "pageSize">> & { pageSize?: number; pageToken?: string };

export interface ManifestOptions extends CallOptions {
  /** Wait until no input is PENDING (no default deadline then: give one to bound the wait). */
  wait?: boolean;
}

export interface ScrubOptions extends CallOptions {
  /** Read at most this many MiB per second (default 0: as fast as storage answers). */
  rateMibPerSecond?: number;
}
