// Which calls grpc-js retries on UNAVAILABLE, through the channel's service config.
import type { Method } from "./calls";

/**
 * Every RPC, and whether a call that failed with UNAVAILABLE may be sent again. A call is
 * retried only when sending it twice has the effect of sending it once: reads, and writes
 * the server answers the same way when repeated (an identical fulfilment or failure). A
 * creating RPC never is (a lost answer would make a second asset). The same table as the
 * Python client's (asset_client/_channel.py). The compiler insists on a row for every RPC of the contract; the README's table
 * is checked against this one by a test.
 */
export const RETRIED: Readonly<Record<Method, { retried: boolean; why: string }>> = {
  getAsset: { retried: true, why: "a read" },
  batchGetAssets: { retried: true, why: "a read" },
  listAssets: { retried: true, why: "a read (a page token stays valid)" },
  watchAsset: { retried: true, why: "a read; until its first event (then `watch` resumes from the last revision)" },
  readAsset: { retried: true, why: "a read; until its first chunk (then `readAsset` resumes from the offset reached)" },
  getManifest: { retried: true, why: "rewrites the same input_data.json; changes no asset" },
  renewLease: { retried: true, why: "a second renewal moves the lease to the same place" },
  fulfillAsset: { retried: true, why: "the server answers an identical fulfilment with the same asset" },
  failAsset: { retried: true, why: "the server answers an identical failure (same reason) with the same asset" },
  mintTaskToken: { retried: true, why: "a token is signed, not stored: a second one is as good" },
  queryUpload: { retried: true, why: "a read" },
  scrubAssets: { retried: true, why: "checks stored bytes; checking again finds the same; until its first result" },
  uploadAsset: { retried: false, why: "creates an asset; a stream cannot be replayed (a resumable upload resumes itself from QueryUpload)" },
  registerFile: { retried: false, why: "creates an asset" },
  createValueAsset: { retried: false, why: "creates an asset" },
  createPendingAsset: { retried: false, why: "creates a promise" },
  getOrCreatePendingAsset: {
    retried: false,
    why: "a repeat of a PRODUCE whose answer was lost would say JOIN, and nobody would produce",
  },
  deleteAsset: { retried: false, why: "a repeat of a delete whose answer was lost would say NOT_FOUND" },
  setExpiry: { retried: true, why: "sets the same expiry again (ttl from the repeat's now), or never again" },
  placeHold: { retried: true, why: "places the same owner's hold again, replacing it" },
  releaseHold: { retried: false, why: "a repeat of a release whose answer was lost would say NOT_FOUND" },
  getUsage: { retried: true, why: "a read" },
};

/** gRPC's retryPolicy (https://github.com/grpc/proposal/blob/master/A6-client-retries.md). */
export interface RetryPolicy {
  /** Attempts in all, the first included: 2 to 5 (gRPC caps it at 5). */
  maxAttempts: number;
  /** The wait before the first retry, in seconds; then times `backoffMultiplier`, up to `maxBackoffSeconds` (each ±20%). */
  initialBackoffSeconds: number;
  maxBackoffSeconds: number;
  backoffMultiplier: number;
}

/**
 * The default, the Python client's: 5 attempts, waiting about 1, 2, 4 and 8 s between them
 * (each jittered by ±20%), so a safe call rides out an outage of some 12 to 18 s.
 */
export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = {
  maxAttempts: 5,
  initialBackoffSeconds: 1,
  maxBackoffSeconds: 8,
  backoffMultiplier: 2,
};

export const SERVICE = "asset.v1.AssetService";

/** The `grpc.service_config` channel option: the RETRIED methods with `policy`. */
export function serviceConfig(rpcName: (m: Method) => string, policy: RetryPolicy = DEFAULT_RETRY_POLICY): string {
  const { maxAttempts, initialBackoffSeconds, maxBackoffSeconds, backoffMultiplier } = policy;
  if (!Number.isInteger(maxAttempts) || maxAttempts < 2 || maxAttempts > 5) {
    throw new RangeError(`retry.maxAttempts must be a whole number from 2 to 5, got ${maxAttempts}`);
  }
  for (const [name, value] of Object.entries({ initialBackoffSeconds, maxBackoffSeconds, backoffMultiplier })) {
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0.001) {
      throw new RangeError(`retry.${name} must be a number of at least 0.001, got ${String(value)}`);
    }
  }
  const methods = (Object.keys(RETRIED) as Method[]).filter((m) => RETRIED[m].retried);
  return JSON.stringify({
    methodConfig: [
      {
        name: methods.map((m) => ({ service: SERVICE, method: rpcName(m) })),
        retryPolicy: {
          maxAttempts,
          initialBackoff: `${initialBackoffSeconds.toFixed(3)}s`,
          maxBackoff: `${maxBackoffSeconds.toFixed(3)}s`,
          backoffMultiplier,
          retryableStatusCodes: ["UNAVAILABLE"],
        },
      },
    ],
  });
}
