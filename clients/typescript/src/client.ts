// AssetService: a promise / async-iterator method for every RPC, over one grpc-js channel.
import { open } from "node:fs/promises";
import * as path from "node:path";
import { Readable } from "node:stream";

import * as grpc from "@grpc/grpc-js";

import { type CallOptions, Caller, rpcName } from "./calls";
import { configFromEnv } from "./env";
import {
  type Asset,
  AssetServiceClient,
  BatchGetAssetsRequest,
  CreatePendingAssetRequest,
  CreateValueAssetRequest,
  DeepPartial,
  DeleteAssetRequest,
  FailAssetRequest,
  FulfillAssetRequest,
  GetAssetRequest,
  GetManifestRequest,
  GetManifestResponse,
  type GetOrCreateOutcome,
  GetOrCreatePendingAssetRequest,
  GetUsageRequest,
  type GetUsageResponse,
  ListAssetsRequest,
  ListAssetsResponse,
  MintTaskTokenRequest,
  PlaceHoldRequest,
  QueryUploadRequest,
  type QueryUploadResponse,
  RegisterFileRequest,
  ReleaseHoldRequest,
  RenewLeaseRequest,
  ScrubAssetsRequest,
  type ScrubAssetsResponse,
  SetExpiryRequest,
  UploadHeader,
  WatchAssetRequest,
  WatchAssetResponse,
} from "./gen/asset/v1/asset_service";
import { keepaliveOptions } from "./keepalive";
import { type ReadOptions, readChunks } from "./read";
import { type ResumableOptions, resumableUpload } from "./resumable";
import { DEFAULT_RETRY_POLICY, serviceConfig } from "./retry";
import * as schemas from "./schemas";
import {
  type ClientOptions,
  DEFAULT_TIMEOUT_MS,
  type ListFilter,
  type ManifestOptions,
  type RegisterFileOptions,
  type ScrubOptions,
  type UploadOptions,
  type UploadSource,
} from "./options";
import { connection, notAnAddress } from "./security";
import type { TaskToken } from "./tokens";
import {
  ContentHash,
  DEFAULT_CHUNK_SIZE,
  RESUMABLE_BYTES,
  type Source,
  bufferSource,
  checkStored,
  fileSource,
  streamSource,
  uploadStream,
} from "./upload";
import * as v from "./validate";
import { type WatchOptions, watchEvents } from "./watch";

export type { CallOptions } from "./calls";
export { AssetServiceError, DataLossError } from "./errors";
export { KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS } from "./keepalive";
export { DEFAULT_TIMEOUT_MS } from "./options";
export type { ClientOptions, ListFilter, ManifestOptions, RegisterFileOptions, ScrubOptions, UploadOptions, UploadSource } from "./options";
export type { ReadOptions } from "./read";
export { taskTokenSource } from "./tokens";
export type { TaskToken } from "./tokens";
export type { WatchOptions } from "./watch";

/** After a server restart, connect again within seconds (grpc-js's default waits up to 120 s). */
const MAX_RECONNECT_BACKOFF_MS = 5_000;

const id = (value: unknown, name: string): string => v.string(value, name);

/**
 * A client of the Asset Service. Every method checks its arguments (a TypeError or
 * RangeError naming the wrong one, nothing sent) and rejects with an AssetServiceError
 * (`code`, `details`) when the call fails. Call `close()` when done: it closes the channel.
 */
export class AssetService {
  /** The generated client, on the same channel (no argument checks, no default deadlines). */
  readonly raw: AssetServiceClient;
  private readonly caller: Caller;

  /**
   * Connects to `address` ("host:port"): plaintext with no credentials by default; with
   * `options`, over TLS and/or with a bearer token (see `connection`); or with ready-made
   * grpc-js channel credentials. The channel connects on the first call.
   */
  constructor(address: string, options: ClientOptions | grpc.ChannelCredentials = {}) {
    v.string(address, "address");
    if (!address) throw new RangeError('address must be "host:port", got an empty string');
    const wrong = notAnAddress(address);
    if (wrong) throw new RangeError(wrong);
    let credentials: grpc.ChannelCredentials;
    let settings: ClientOptions = {};
    let clientOptions: grpc.ClientOptions = {};
    if (options instanceof grpc.ChannelCredentials) {
      credentials = options;
    } else {
      settings = schemas.clientOptions(options, "options");
      ({ credentials, options: clientOptions } = connection(address, settings));
    }
    const timeout = settings.defaultTimeoutMs;
    const retry = settings.retry === false ? {} : { "grpc.service_config": serviceConfig(rpcName, { ...DEFAULT_RETRY_POLICY, ...settings.retry }) };
    this.raw = new AssetServiceClient(address, credentials, {
      ...clientOptions,
      ...retry,
      // Our retry policy is the service config: a DNS TXT record does not replace it.
      "grpc.service_config_disable_resolution": 1,
      // After a server restart, connect again within seconds (grpc-js's default waits up
      // to 120 s between attempts), so that retried calls and resumed streams find it.
      "grpc.max_reconnect_backoff_ms": MAX_RECONNECT_BACKOFF_MS,
      // Ping while a call is open, so that a watch on a silently dead connection ends.
      ...keepaliveOptions(),
      ...settings.channelOptions,
    });
    this.caller = new Caller(this.raw, timeout ?? DEFAULT_TIMEOUT_MS);
  }

  /**
   * A client configured by ASSET_SERVICE_ADDR, ASSET_SERVICE_TOKEN or ASSET_SERVICE_TOKEN_FILE,
   * ASSET_SERVICE_TLS, ASSET_SERVICE_CA_FILE, ASSET_SERVICE_CLIENT_CERT, ASSET_SERVICE_CLIENT_KEY
   * and ASSET_SERVICE_TIMEOUT (README, ENVIRONMENT); `options` add to them and win (e.g. a
   * token source function).
   */
  static fromEnv(options: ClientOptions & { env?: NodeJS.ProcessEnv; address?: string } = {}): AssetService {
    const { env, address, ...rest } = options;
    const config = configFromEnv(env ?? process.env);
    const given = Object.fromEntries(Object.entries(rest).filter(([, value]) => value !== undefined));
    const timeout = config.defaultTimeoutMs === undefined ? {} : { defaultTimeoutMs: config.defaultTimeoutMs };
    return new AssetService(address ?? config.address, { ...config.security, ...timeout, ...given });
  }

  /**
   * Ends the client: every call of its methods still running (a watch, a read, an upload,
   * a wait for a resume) ends with CANCELLED, later calls reject with CANCELLED "the client
   * was closed", and the channel closes. (Calls made on `raw` are not cancelled.)
   */
  close(): void {
    this.caller.close();
  }

  /** A new FILE asset (or a PENDING one fulfilled) from bytes or a stream of Buffers. */
  async uploadAsset(source: UploadSource, options: UploadOptions = {}): Promise<Asset> {
    const { header, chunkSize, call } = uploadArgs(options);
    let src: Source;
    if (source instanceof Uint8Array) src = bufferSource(source, chunkSize);
    else if (source !== null && typeof source === "object" && Symbol.asyncIterator in source) src = streamSource(source, chunkSize);
    else throw new TypeError(`source must be a Buffer, a Uint8Array or a stream of them, got ${v.describe(source)} (a file: uploadFile)`);
    return this.upload(header, src, call);
  }

  /** A new FILE asset from the file at `filePath` (label: the file's name unless given). */
  async uploadFile(filePath: string, options: UploadOptions = {}): Promise<Asset> {
    v.string(filePath, "filePath");
    const { header, chunkSize, call } = uploadArgs(options);
    if (!header.label && !header.pendingAssetId) header.label = path.basename(filePath);
    const fh = await open(filePath, "r");
    try {
      return await this.upload(header, fileSource(fh, (await fh.stat()).size, chunkSize), call);
    } finally {
      await fh.close();
    }
  }

  private async upload(header: UploadHeader, source: Source, options: UploadCall): Promise<Asset> {
    const byDefault = options.uploadId !== undefined || (source.replayable && (source.size ?? 0) >= RESUMABLE_BYTES);
    const { resumable = byDefault, ...rest } = options;
    if (resumable && !source.replayable) {
      throw new TypeError("options.resumable: a stream cannot be read again to resume; upload a Buffer or a file (uploadFile)");
    }
    if (resumable) return resumableUpload(this.caller, (id, o) => this.queryUpload(id, o), header, source, rest);
    if (options.uploadId !== undefined) throw new TypeError("options.uploadId needs a resumable upload");
    const hashed = new ContentHash();
    return checkStored(await uploadStream(this.caller, header, source, 0, hashed, rest, rest.onProgress), hashed);
  }

  /**
   * How much of a resumable upload the server holds durably (`committedBytes`), its asset
   * once it completed, and when it expires unfinished. `uploadAsset` and `uploadFile` ask it
   * themselves after a cut.
   */
  async queryUpload(uploadId: string, options: CallOptions = {}): Promise<QueryUploadResponse> {
    const request = QueryUploadRequest.fromPartial({ uploadId: v.string(uploadId, "uploadId") });
    return this.caller.unary("queryUpload", request, checkCall(options));
  }

  /** Adopts a file already on the server, under one of its --import-root folders. */
  async registerFile(filePath: string, options: RegisterFileOptions = {}): Promise<Asset> {
    v.string(filePath, "filePath");
    const { signal, deadline, timeoutMs, ...fields } = options;
    const req = RegisterFileRequest.fromPartial({ path: filePath, ...schemas.registerFile(fields, "options") });
    const res = await this.caller.unary("registerFile", req, checkCall({ signal, deadline, timeoutMs }));
    return required(res.asset);
  }

  /** An AVAILABLE VALUE asset (`value`: textValue, jsonValue or bytesValue). */
  async createValueAsset(req: DeepPartial<CreateValueAssetRequest>, options: CallOptions = {}): Promise<Asset> {
    const request = CreateValueAssetRequest.fromPartial(schemas.createValue(req, "request"));
    return required((await this.caller.unary("createValueAsset", request, checkCall(options))).asset);
  }

  /** A PENDING asset; with `leaseSeconds` (not 0) it must be renewed (`renewLease`) or it fails. */
  async createPendingAsset(req: DeepPartial<CreatePendingAssetRequest>, options: CallOptions = {}): Promise<Asset> {
    const request = CreatePendingAssetRequest.fromPartial(schemas.createPending(req, "request"));
    return required((await this.caller.unary("createPendingAsset", request, checkCall(options))).asset);
  }

  /**
   * The asset for `key` (e.g. a hash of the task's code and inputs), made at most once: HIT (the key's AVAILABLE
   * asset), JOIN (another caller's live promise: watch it) or PRODUCE (a new promise, `promise` as
   * createPendingAsset takes it, that this caller alone must produce). Not retried: a lost PRODUCE would come back
   * as JOIN, so give the promise a lease (it is taken over once that runs out).
   */
  async getOrCreatePendingAsset(
    key: string,
    promise: DeepPartial<CreatePendingAssetRequest>,
    options: CallOptions = {},
  ): Promise<{ outcome: GetOrCreateOutcome; asset: Asset }> {
    const request = GetOrCreatePendingAssetRequest.fromPartial({
      key: v.string(key, "key"),
      promise: schemas.createPending(promise, "promise"),
    });
    const res = await this.caller.unary("getOrCreatePendingAsset", request, checkCall(options));
    return { outcome: res.outcome, asset: required(res.asset) };
  }

  /** Turns a PENDING asset AVAILABLE: `content` is a value, or a file under an import root. */
  async fulfillAsset(req: DeepPartial<FulfillAssetRequest>, options: CallOptions = {}): Promise<Asset> {
    const request = FulfillAssetRequest.fromPartial(schemas.fulfill(req, "request"));
    return required((await this.caller.unary("fulfillAsset", request, checkCall(options))).asset);
  }

  /** Turns a PENDING asset FAILED; every watcher sees `reason`. */
  async failAsset(assetId: string, reason: string, options: CallOptions = {}): Promise<Asset> {
    const request = FailAssetRequest.fromPartial({ assetId: id(assetId, "assetId"), reason: v.string(reason, "reason") });
    return required((await this.caller.unary("failAsset", request, checkCall(options))).asset);
  }

  /**
   * Extends a PENDING asset's lease to now + `leaseSeconds` (0: the lease it was promised
   * with). Rejects with FAILED_PRECONDITION when the asset is not PENDING, was promised
   * without a lease or its lease already ran out, INVALID_ARGUMENT past the server's
   * --max-lease-seconds. Needs the worker role, or a task token of the asset's task.
   */
  async renewLease(assetId: string, leaseSeconds = 0, options: CallOptions = {}): Promise<Asset> {
    const request = RenewLeaseRequest.fromPartial({ assetId: id(assetId, "assetId"), leaseSeconds: v.uint32(leaseSeconds, "leaseSeconds") });
    return required((await this.caller.unary("renewLease", request, checkCall(options))).asset);
  }

  async getAsset(assetId: string, options: CallOptions = {}): Promise<Asset> {
    const request = GetAssetRequest.fromPartial({ assetId: id(assetId, "assetId") });
    return required((await this.caller.unary("getAsset", request, checkCall(options))).asset);
  }

  /** Up to 1000 assets, in the order asked for (NOT_FOUND if one is missing). */
  async batchGetAssets(assetIds: string[], options: CallOptions = {}): Promise<Asset[]> {
    const request = BatchGetAssetsRequest.fromPartial({ assetIds: v.strings(assetIds, "assetIds") });
    return (await this.caller.unary("batchGetAssets", request, checkCall(options))).assets;
  }

  /** One page of the assets matching every filter set, oldest first, with the revision it was read at. */
  async listAssets(filter: ListFilter = {}, options: CallOptions = {}): Promise<ListAssetsResponse> {
    const request = ListAssetsRequest.fromPartial(schemas.listFilter(filter, "filter"));
    return this.caller.unary("listAssets", request, checkCall(options));
  }

  /** Every asset matching `filter`, page after page (each page one call with `options`). */
  async *listAllAssets(filter: ListFilter = {}, options: CallOptions = {}): AsyncGenerator<Asset> {
    let page = await this.listAssets(filter, options);
    for (;;) {
      yield* page.assets;
      if (!page.nextPageToken) return;
      page = await this.listAssets({ ...filter, pageToken: page.nextPageToken }, options);
    }
  }

  /**
   * Streams WatchAsset events; the loop ends when the server ends the stream (every watched
   * asset terminal, unless `follow` or a selector). After UNAVAILABLE it resumes from the
   * last revision delivered (see WatchOptions). Breaking out of the loop, or aborting
   * `signal`, cancels the call.
   */
  async *watch(req: DeepPartial<WatchAssetRequest>, options: WatchOptions = {}): AsyncGenerator<WatchAssetResponse> {
    const request = WatchAssetRequest.fromPartial(schemas.watchRequest(req, "request"));
    yield* watchEvents(this.caller, request, schemas.watchOptions(options, "options"));
  }

  /**
   * The content of an AVAILABLE asset, or a range of it, collected into a Buffer. A whole
   * read is checked against the record's size and sha256 unless `verify: false` (a
   * DataLossError when they differ); a read cut by UNAVAILABLE goes on from where it was.
   */
  async readAsset(assetId: string, options: ReadOptions = {}): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const chunk of this.readChunks(assetId, options)) chunks.push(chunk);
    return Buffer.concat(chunks);
  }

  /**
   * The same bytes as `readAsset`, as a Readable (e.g. for `stream.pipeline` to a file); a
   * failed check ends it with a DataLossError. Destroying it cancels the call.
   */
  readAssetStream(assetId: string, options: ReadOptions = {}): Readable {
    return Readable.from(this.readChunks(assetId, options), { objectMode: false });
  }

  private readChunks(assetId: string, options: ReadOptions): AsyncGenerator<Buffer> {
    id(assetId, "assetId");
    const checked = schemas.readOptions(options, "options");
    return readChunks(this.caller, (assetId, o) => this.getAsset(assetId, o), assetId, checked);
  }

  /**
   * Writes input_data.json for a task (`assetMappings`: input key → asset id) and returns its
   * path on the server. With `wait`, waits until no input is PENDING (bounded by a deadline
   * only if you give one).
   */
  async getManifest(
    assetMappings: Record<string, string>,
    configParams?: Record<string, unknown>,
    options: ManifestOptions = {},
  ): Promise<GetManifestResponse> {
    const { wait = false, ...call } = schemas.manifestOptions(options, "options");
    const request = GetManifestRequest.fromPartial({
      assetMappings: v.stringMap(assetMappings, "assetMappings"),
      configParams: v.optional(v.jsonObject)(configParams, "configParams"),
      wait,
    });
    return this.caller.unary("getManifest", request, call, !wait);
  }

  /** Removes an asset's record and bytes (admin role); resolves to its last state. */
  async deleteAsset(assetId: string, options: CallOptions & { force?: boolean } = {}): Promise<Asset> {
    const { force, ...call } = options;
    const request = DeleteAssetRequest.fromPartial({ assetId: id(assetId, "assetId"), force: force === true });
    return required((await this.caller.unary("deleteAsset", request, checkCall(call))).asset);
  }

  /**
   * Makes the asset expire `ttlSeconds` from now, or never with 0; the server's expiry rules
   * never replace it. An expired asset is removed once nothing holds it.
   */
  async setExpiry(assetId: string, ttlSeconds: number, options: CallOptions = {}): Promise<Asset> {
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 0) {
      throw new RangeError(`ttlSeconds must be a whole number of seconds, 0 or more (got ${ttlSeconds})`);
    }
    const request = SetExpiryRequest.fromPartial({
      assetId: id(assetId, "assetId"),
      ttlSeconds,
      clear: ttlSeconds === 0,
    });
    return required((await this.caller.unary("setExpiry", request, checkCall(options))).asset);
  }

  /** Keeps the asset from expiring (and from deleteAsset without force) until `owner` releases it. */
  async placeHold(assetId: string, owner: string, reason = "", options: CallOptions = {}): Promise<Asset> {
    const request = PlaceHoldRequest.fromPartial({ assetId: id(assetId, "assetId"), owner, reason });
    return required((await this.caller.unary("placeHold", request, checkCall(options))).asset);
  }

  /** Removes `owner`'s hold (NOT_FOUND if it has none). */
  async releaseHold(assetId: string, owner: string, options: CallOptions = {}): Promise<Asset> {
    const request = ReleaseHoldRequest.fromPartial({ assetId: id(assetId, "assetId"), owner });
    return required((await this.caller.unary("releaseHold", request, checkCall(options))).asset);
  }

  /** Assets and bytes by status and by `group` ("status", "type", "tag", "task"). */
  async getUsage(group = "status", keys: string[] = [], options: CallOptions & { limit?: number } = {}): Promise<GetUsageResponse> {
    const { limit, ...call } = options;
    const request = GetUsageRequest.fromPartial({ group, keys, limit: limit ?? 0 });
    return await this.caller.unary("getUsage", request, checkCall(call));
  }

  /**
   * Re-reads stored bytes now and checks every block against its checksum (admin role):
   * one result per asset, in order (`assetIds` empty: every AVAILABLE FILE asset). A corrupt
   * asset is marked (corruptReason) and refused with DATA_LOSS from then on.
   */
  async *scrubAssets(assetIds: string[] = [], options: ScrubOptions = {}): AsyncGenerator<ScrubAssetsResponse> {
    const { rateMibPerSecond = 0, ...call } = schemas.scrubOptions(options, "options");
    const request = ScrubAssetsRequest.fromPartial({ assetIds: v.listOf(v.string, 1000)(assetIds, "assetIds"), rateMibPerSecond });
    yield* this.caller.serverStream("scrubAssets", request, call);
  }

  /**
   * A token that may complete `taskId`'s promised outputs and read them and `inputAssetIds`
   * (needs the orchestrator role). `ttlSeconds` 0 means the server's default, an hour.
   */
  async mintTaskToken(taskId: string, inputAssetIds: string[] = [], ttlSeconds = 0, options: CallOptions = {}): Promise<TaskToken> {
    const request = MintTaskTokenRequest.fromPartial({
      taskId: v.string(taskId, "taskId"),
      inputAssetIds: v.strings(inputAssetIds, "inputAssetIds"),
      ttlSeconds: v.nonNegativeInt64(ttlSeconds, "ttlSeconds"),
    });
    const res = await this.caller.unary("mintTaskToken", request, checkCall(options));
    if (!res.expiresAt) throw new Error("MintTaskToken response carries no expiry");
    return { token: res.token, expiresAt: res.expiresAt };
  }
}

function checkCall(options: unknown): CallOptions {
  return schemas.callOptions(options ?? {}, "options");
}

/** What an upload does besides its header. */
type UploadCall = ResumableOptions & { resumable?: boolean };

function uploadArgs(options: UploadOptions): { header: UploadHeader; chunkSize: number; call: UploadCall } {
  const checked = schemas.upload(options, "options");
  const { signal, deadline, timeoutMs, chunkSize = DEFAULT_CHUNK_SIZE, resumable, uploadId, resumeWithinMs, onProgress, ...fields } = checked;
  return {
    header: UploadHeader.fromPartial(fields),
    chunkSize,
    call: { signal, deadline, timeoutMs, resumable, uploadId, resumeWithinMs, onProgress },
  };
}

function required(asset: Asset | undefined): Asset {
  if (asset === undefined) {
    throw new Error("response carries no asset");
  }
  return asset;
}
