// A small promise-based facade over the generated @grpc/grpc-js client.
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
  WatchAssetRequest,
  WatchAssetResponse,
} from "./gen/asset/v1/asset_service";

type Callback<T> = (err: grpc.ServiceError | null, res: T) => void;

function unary<T>(invoke: (cb: Callback<T>) => unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    invoke((err, res) => (err ? reject(err) : resolve(res)));
  });
}

/** AssetService wraps the generated AssetServiceClient with promises and async iterators. */
export class AssetService {
  /** The generated client, for every RPC this facade does not wrap. */
  readonly raw: AssetServiceClient;

  constructor(address: string, credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure()) {
    this.raw = new AssetServiceClient(address, credentials);
  }

  close(): void {
    this.raw.close();
  }

  async createPendingAsset(req: DeepPartial<CreatePendingAssetRequest>): Promise<Asset> {
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

  async getAsset(assetId: string): Promise<Asset> {
    const res = await unary<GetAssetResponse>((cb) => this.raw.getAsset(GetAssetRequest.fromPartial({ assetId }), cb));
    return required(res.asset);
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

function required(asset: Asset | undefined): Asset {
  if (asset === undefined) {
    throw new Error("response carries no asset");
  }
  return asset;
}
