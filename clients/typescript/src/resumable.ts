// A resumable upload: cut streams continue from what the server holds (QueryUpload).
import { randomUUID } from "node:crypto";

import type { CallOptions, Caller } from "./calls";
import { AssetServiceError, Status } from "./errors";
import type { Asset, QueryUploadResponse, UploadHeader } from "./gen/asset/v1/asset_service";
import { type ResumeOptions, Resumer } from "./resume";
import { ContentHash, type Source, checkStored, uploadStream } from "./upload";

export interface ResumableOptions extends CallOptions, ResumeOptions {
  /** The upload's id on every stream (default: a new UUID); give one to continue an upload an earlier process began. */
  uploadId?: string;
  onProgress?: (sentBytes: number) => void;
}

type Query = (uploadId: string, options: CallOptions) => Promise<QueryUploadResponse>;

/**
 * Failures after which the upload goes on (those of the Python client): the stream was cut
 * (UNAVAILABLE; CANCELLED by the server or a proxy — one this client cancelled is not
 * resumed), the upload's previous stream still holds it (ABORTED), or the server made more
 * durable since QueryUpload answered (FAILED_PRECONDITION "resume at committed_bytes=N").
 */
function worthResuming(err: AssetServiceError): boolean {
  return (
    err.code === Status.UNAVAILABLE ||
    err.code === Status.CANCELLED ||
    err.code === Status.ABORTED ||
    (err.code === Status.FAILED_PRECONDITION && err.details.includes("resume at committed_bytes="))
  );
}

/**
 * Uploads `source` (readable again from any offset) with an upload_id. After a failure
 * worth resuming it asks QueryUpload how much the server holds and sends the rest from
 * there, within `resumeWithinMs` of no progress; an upload the server lost or let expire
 * (NOT_FOUND) starts again from 0 under a new id. The answer is checked against the whole
 * content's size and sha256.
 */
export async function resumableUpload(
  caller: Caller,
  query: Query,
  header: UploadHeader,
  source: Source,
  options: ResumableOptions,
): Promise<Asset> {
  const { signal, onProgress } = options;
  const call: CallOptions = { signal, deadline: options.deadline, timeoutMs: options.timeoutMs };
  const resumer = new Resumer("UploadAsset", options, signal, caller.closed, worthResuming);
  let uploadId = options.uploadId ?? randomUUID();
  let hashed = new ContentHash();
  let from = 0;
  if (options.uploadId !== undefined) {
    const state = await where(query, uploadId, signal, resumer);
    if (state?.asset) return finished(state.asset, source, hashed);
    from = state?.committedBytes ?? 0;
  }
  for (;;) {
    try {
      await hashed.catchUp(source, from);
      const asset = await uploadStream(caller, { ...header, uploadId, writeOffset: from }, source, from, hashed, call, onProgress);
      return checkStored(asset, hashed);
    } catch (err) {
      await resumer.again(err);
    }
    const state = await where(query, uploadId, signal, resumer);
    if (state?.asset) return finished(state.asset, source, hashed);
    if (state === undefined) {
      uploadId = randomUUID(); // the server has no such upload (lost, expired): start again
      hashed = new ContentHash();
      from = 0;
      continue;
    }
    if (state.committedBytes > from) resumer.progress();
    from = state.committedBytes;
  }
}

/** QueryUpload, asked again while the server is unreachable; undefined for NOT_FOUND. */
async function where(query: Query, uploadId: string, signal: AbortSignal | undefined, resumer: Resumer): Promise<QueryUploadResponse | undefined> {
  for (;;) {
    try {
      return await query(uploadId, { signal });
    } catch (err) {
      if (err instanceof AssetServiceError && err.code === Status.NOT_FOUND) return undefined;
      await resumer.again(err);
    }
  }
}

/** The upload had completed (its answer was lost): the asset, checked against all of `source`. */
async function finished(asset: Asset, source: Source, hashed: ContentHash): Promise<Asset> {
  await hashed.catchUp(source, Infinity);
  return checkStored(asset, hashed);
}
