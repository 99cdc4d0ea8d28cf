// The shape of each method's arguments, checked before anything is sent (see validate.ts).
import type { CallOptions } from "./calls";
import type { ClientOptions, ListFilter, ManifestOptions, RegisterFileOptions, ScrubOptions, UploadOptions } from "./options";
import {
  AssetStatus,
  AssetType,
  type CreatePendingAssetRequest,
  type CreateValueAssetRequest,
  type DeepPartial,
  type FulfillAssetRequest,
  type WatchAssetRequest,
} from "./gen/asset/v1/asset_service";
import type { ReadOptions } from "./read";
import type { WatchOptions } from "./watch";
import * as v from "./validate";

const assetType = v.enumOf(AssetType, "AssetType");
const assetStatus = v.enumOf(AssetStatus, "AssetStatus");

export const value = v.object({
  kind: v.oneof({ text: v.string, json: v.string, data: v.bytes }),
});

export const createPending = v.object<DeepPartial<CreatePendingAssetRequest>>({
  taskId: v.string,
  label: v.string,
  mediaType: v.string,
  type: assetType,
  tags: v.strings,
  leaseSeconds: v.uint32,
});

export const fulfill = v.object<DeepPartial<FulfillAssetRequest>>({
  assetId: v.string,
  content: v.oneof({ sourcePath: v.string, value }),
  expectedSha256: v.string,
});

export const createValue = v.object<DeepPartial<CreateValueAssetRequest>>({
  label: v.string,
  mediaType: v.string,
  value,
  tags: v.strings,
});

export const registerFile = v.object<Omit<RegisterFileOptions, keyof CallOptions>>({
  label: v.string,
  mediaType: v.string,
  tags: v.strings,
  move: v.boolean,
});

/** CallOptions: a signal, an absolute deadline or a timeout (Infinity: none). */
export const call = { signal: v.abortSignal, deadline: v.date, timeoutMs: v.positiveMs(true) };
export const callOptions = v.object<CallOptions>(call);
const resume = { resume: v.boolean, resumeWithinMs: v.positiveMs(true) };

export const upload = v.object<UploadOptions>({
  ...call,
  label: v.string,
  mediaType: v.string,
  tags: v.strings,
  expectedSizeBytes: v.nonNegativeInt64,
  expectedSha256: v.string,
  pendingAssetId: v.string,
  chunkSize: v.integer(1, 4 * 1024 * 1024),
  resumable: v.boolean,
  uploadId: (x, path) => {
    if (!/^[A-Za-z0-9_-]{8,64}$/.test(v.string(x, path))) {
      throw new RangeError(`${path} must be 8 to 64 of A-Z a-z 0-9 _ -, got ${JSON.stringify(x)}`);
    }
    return x;
  },
  resumeWithinMs: v.positiveMs(true),
  onProgress: (x, path) => {
    if (typeof x !== "function") throw new TypeError(`${path} must be a function, got ${v.describe(x)}`);
    return x;
  },
});

export const listFilter = v.object<ListFilter>({
  status: assetStatus,
  type: assetType,
  tags: v.strings,
  createdByTask: v.string,
  label: v.string,
  key: v.string,
  sha256: v.string,
  pageSize: v.integer(0, 1000),
  pageToken: v.string,
});

export const watchRequest = v.object<DeepPartial<WatchAssetRequest>>({
  assetIds: v.strings,
  afterRevision: v.nonNegativeInt64,
  follow: v.boolean,
  selector: v.object({
    taskId: v.string,
    tags: v.strings,
    status: assetStatus,
    type: assetType,
    label: v.string,
    key: v.string,
  }),
});

export const watchOptions = v.object<WatchOptions>({ signal: call.signal, ...resume });

export const readOptions = v.object<ReadOptions>({
  ...call,
  ...resume,
  offset: v.nonNegativeInt64,
  limit: v.nonNegativeInt64,
  verify: v.boolean,
});

export const manifestOptions = v.object<ManifestOptions>({ ...call, wait: v.boolean });

export const scrubOptions = v.object<ScrubOptions>({
  ...call,
  rateMibPerSecond: (x, path) => {
    if (v.finite(x, path) < 0) throw new RangeError(`${path} must be 0 (no limit) or above, got ${String(x)}`);
    return x;
  },
});

/** The client's options: Security, then how calls behave (serviceConfig checks the retry numbers). */
export const clientOptions = v.object<ClientOptions>({
  tls: v.boolean,
  rootCerts: v.bytes,
  certChain: v.bytes,
  privateKey: v.bytes,
  token: (x, path) => {
    if (typeof x !== "string" && typeof x !== "function") throw new TypeError(`${path} must be a string or a function, got ${v.describe(x)}`);
    return x;
  },
  defaultTimeoutMs: v.positiveMs(true),
  retry: (x, path) =>
    x === false
      ? x
      : v.object({ maxAttempts: v.finite, initialBackoffSeconds: v.finite, maxBackoffSeconds: v.finite, backoffMultiplier: v.finite })(x, path),
  channelOptions: v.plainObject,
});
