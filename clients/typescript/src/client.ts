// A small promise-based facade over the generated @grpc/grpc-js client.
import { createHash } from "node:crypto";

import * as grpc from "@grpc/grpc-js";

import {
  Asset,
  AssetServiceClient,
  CreatePendingAssetRequest,
  CreatePendingAssetResponse,
  DeepPartial,
  FailAssetRequest,
  FailAssetResponse,
  FulfillAssetRequest,
  FulfillAssetResponse,
  GetAssetRequest,
  GetAssetResponse,
  GetManifestRequest,
  GetManifestResponse,
  MintTaskTokenRequest,
  MintTaskTokenResponse,
  ReadAssetRequest,
  RenewLeaseRequest,
  RenewLeaseResponse,
  WatchAssetRequest,
  WatchAssetResponse,
} from "./gen/asset/v1/asset_service";
import { type Security, type TokenSource, connection } from "./security";

type Callback<T> = (err: grpc.ServiceError | null, res: T) => void;

function unary<T>(invoke: (cb: Callback<T>) => grpc.ClientUnaryCall, signal?: AbortSignal): Promise<T> {
  return new Promise((resolve, reject) => {
    const cancel = (): void => call.cancel(); // the call then fails with CANCELLED
    const call = invoke((err, res) => {
      signal?.removeEventListener("abort", cancel);
      if (err) reject(err);
      else resolve(res);
    });
    if (signal?.aborted) call.cancel();
    else signal?.addEventListener("abort", cancel, { once: true });
  });
}

/** How one call may be bounded: `signal` cancels it, `deadline` fails it with DEADLINE_EXCEEDED. */
export interface CallOptions {
  signal?: AbortSignal;
  deadline?: Date;
}

/** `seconds` for a uint32 lease field; a RangeError for anything else (nothing is sent). */
function checkLeaseSeconds(seconds: number): number {
  if (!Number.isInteger(seconds) || seconds < 0 || seconds > 0xffffffff) {
    throw new RangeError(`lease ${seconds} is not a whole number of seconds from 0 to 2^32-1`);
  }
  return seconds;
}

/**
 * The bytes a whole read received are not the asset's: their length or sha256 differs from
 * its record. `code` is DATA_LOSS, like the server's own error for stored bytes that changed.
 */
export class DataLossError extends Error {
  readonly code = grpc.status.DATA_LOSS;

  constructor(
    readonly assetId: string,
    message: string,
  ) {
    super(message);
    this.name = "DataLossError";
  }
}

/** A range of an asset to read, and whether to check a whole read (the default). */
export interface ReadOptions {
  offset?: number;
  /** At most this many bytes; 0 (the default) reads to the end. */
  limit?: number;
  /** false skips the sha256 check of a whole read (it costs a GetAsset and one hash pass). */
  verify?: boolean;
}

/** A bearer token scoped to one task, as MintTaskToken returns it. */
export interface TaskToken {
  token: string;
  expiresAt: Date;
}

/** AssetService wraps the generated AssetServiceClient with promises and async iterators. */
export class AssetService {
  /** The generated client, for every RPC this facade does not wrap. */
  readonly raw: AssetServiceClient;

  /**
   * Connects to `address` ("host:port"): plaintext with no credentials by default; with
   * `security`, over TLS and/or with a bearer token (see `connection`); or with ready-made
   * grpc-js channel credentials.
   */
  constructor(address: string, security: Security | grpc.ChannelCredentials = {}) {
    if (security instanceof grpc.ChannelCredentials) {
      this.raw = new AssetServiceClient(address, security);
    } else {
      const { credentials, options } = connection(address, security);
      this.raw = new AssetServiceClient(address, credentials, options);
    }
  }

  close(): void {
    this.raw.close();
  }

  /** A PENDING asset; with `leaseSeconds` (not 0) it must be renewed (`renewLease`) or it fails. */
  async createPendingAsset(req: DeepPartial<CreatePendingAssetRequest>): Promise<Asset> {
    if (req.leaseSeconds !== undefined) checkLeaseSeconds(req.leaseSeconds);
    const res = await unary<CreatePendingAssetResponse>((cb) => this.raw.createPendingAsset(CreatePendingAssetRequest.fromPartial(req), cb));
    return required(res.asset);
  }

  async fulfillAsset(req: DeepPartial<FulfillAssetRequest>): Promise<Asset> {
    const res = await unary<FulfillAssetResponse>((cb) => this.raw.fulfillAsset(FulfillAssetRequest.fromPartial(req), cb));
    return required(res.asset);
  }

  async failAsset(assetId: string, reason: string): Promise<Asset> {
    const res = await unary<FailAssetResponse>((cb) => this.raw.failAsset(FailAssetRequest.fromPartial({ assetId, reason }), cb));
    return required(res.asset);
  }

  /**
   * Extends a PENDING asset's lease to now + `leaseSeconds` (0: the lease it was promised
   * with). Rejects with FAILED_PRECONDITION when the asset is not PENDING, was promised
   * without a lease or its lease already ran out, INVALID_ARGUMENT past the server's
   * --max-lease-seconds. Needs the worker role, or a task token of the asset's task.
   */
  async renewLease(assetId: string, leaseSeconds = 0, options: CallOptions = {}): Promise<Asset> {
    const req = RenewLeaseRequest.fromPartial({ assetId, leaseSeconds: checkLeaseSeconds(leaseSeconds) });
    const callOptions: Partial<grpc.CallOptions> = options.deadline ? { deadline: options.deadline } : {};
    const res = await unary<RenewLeaseResponse>(
      (cb) => this.raw.renewLease(req, new grpc.Metadata(), callOptions, cb),
      options.signal,
    );
    return required(res.asset);
  }

  async getAsset(assetId: string): Promise<Asset> {
    const res = await unary<GetAssetResponse>((cb) => this.raw.getAsset(GetAssetRequest.fromPartial({ assetId }), cb));
    return required(res.asset);
  }

  /**
   * The content of an AVAILABLE asset, or a range of it (streamed by ReadAsset, collected
   * here). A whole read is checked against the record's size and sha256 unless
   * `verify: false`, and rejects with a DataLossError when they differ. (The server checks
   * every block against the checksums kept since its bytes arrived; this covers the way
   * from its disk to this process too.)
   */
  async readAsset(assetId: string, options: ReadOptions = {}): Promise<Buffer> {
    const { offset = 0, limit = 0 } = options;
    const whole = offset === 0 && limit === 0 && options.verify !== false;
    const record = whole ? await this.getAsset(assetId) : undefined;
    const hash = createHash("sha256");
    const chunks: Buffer[] = [];
    for await (const res of this.raw.readAsset(ReadAssetRequest.fromPartial({ assetId, offset, limit }))) {
      const chunk = Buffer.from((res as { chunk: Uint8Array }).chunk);
      chunks.push(chunk);
      if (whole) hash.update(chunk);
    }
    const data = Buffer.concat(chunks);
    if (record) {
      if (data.length !== record.sizeBytes) {
        throw new DataLossError(assetId, `asset ${assetId}: received ${data.length} bytes, the record says ${record.sizeBytes}`);
      }
      const sum = hash.digest("hex");
      if (record.sha256 && sum !== record.sha256) {
        throw new DataLossError(assetId, `asset ${assetId}: received bytes hash to ${sum}, the record says ${record.sha256}`);
      }
    }
    return data;
  }

  /**
   * A token that may complete `taskId`'s promised outputs and read them and `inputAssetIds`
   * (needs the orchestrator role). `ttlSeconds` 0 means the server's default, an hour.
   */
  async mintTaskToken(taskId: string, inputAssetIds: string[] = [], ttlSeconds = 0): Promise<TaskToken> {
    const req = MintTaskTokenRequest.fromPartial({ taskId, inputAssetIds, ttlSeconds });
    const res = await unary<MintTaskTokenResponse>((cb) => this.raw.mintTaskToken(req, cb));
    if (!res.expiresAt) throw new Error("MintTaskToken response carries no expiry");
    return { token: res.token, expiresAt: res.expiresAt };
  }

  getManifest(assetMappings: Record<string, string>, configParams?: Record<string, unknown>): Promise<GetManifestResponse> {
    const req = GetManifestRequest.fromPartial({ assetMappings, configParams });
    return unary<GetManifestResponse>((cb) => this.raw.getManifest(req, cb));
  }

  /**
   * Streams WatchAsset events; the iteration ends when the server closes the stream
   * (every watched asset terminal, unless `follow`) and throws a ServiceError on failure.
   * Breaking out of the loop, or aborting `signal`, cancels the call.
   */
  async *watch(req: DeepPartial<WatchAssetRequest>, signal?: AbortSignal): AsyncGenerator<WatchAssetResponse> {
    const call = this.raw.watchAsset(WatchAssetRequest.fromPartial(req));
    const cancel = (): void => call.cancel();
    signal?.addEventListener("abort", cancel, { once: true });
    try {
      for await (const ev of call) {
        yield ev as WatchAssetResponse;
      }
    } finally {
      signal?.removeEventListener("abort", cancel);
      call.cancel();
    }
  }
}

/**
 * A token source for a worker of `taskId`: it mints a task token through `minter` (a client
 * with the orchestrator role) on first use, and again once less than a fifth of the token's
 * lifetime is left. Concurrent calls share one mint.
 */
export function taskTokenSource(
  minter: Pick<AssetService, "mintTaskToken">,
  taskId: string,
  inputAssetIds: string[] = [],
  ttlSeconds = 0,
): TokenSource {
  let current: Promise<TaskToken> | undefined;
  let renewAt = 0;
  return async () => {
    if (current === undefined || Date.now() >= renewAt) {
      const minting = minter.mintTaskToken(taskId, inputAssetIds, ttlSeconds);
      current = minting;
      renewAt = Infinity; // until this mint settles
      minting.then(
        (t) => {
          const now = Date.now();
          renewAt = t.expiresAt.getTime() - (t.expiresAt.getTime() - now) / 5;
        },
        () => {
          if (current === minting) current = undefined; // the next call tries again
        },
      );
    }
    return (await current).token;
  };
}

function required(asset: Asset | undefined): Asset {
  if (asset === undefined) {
    throw new Error("response carries no asset");
  }
  return asset;
}
