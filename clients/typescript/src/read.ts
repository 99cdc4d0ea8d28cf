// ReadAsset: chunks from an offset, a whole read checked against the record, resumed after a cut.
import { createHash } from "node:crypto";

import type { CallOptions, Caller } from "./calls";
import { DataLossError } from "./errors";
import { type Asset, ReadAssetRequest } from "./gen/asset/v1/asset_service";
import { type ResumeOptions, Resumer } from "./resume";

/** A range of an asset to read, whether to check a whole read, and how to resume. */
export interface ReadOptions extends CallOptions, ResumeOptions {
  /** Start at this byte (default 0). */
  offset?: number;
  /** At most this many bytes; 0 (the default) reads to the end. */
  limit?: number;
  /** false skips the check of a whole read against its record (a GetAsset and one hash pass). */
  verify?: boolean;
}

/**
 * The content of `assetId` in chunks. A whole read (no offset, no limit) is checked against
 * the record's size and sha256 unless `verify: false`, and ends with a DataLossError when
 * they differ. A stream cut by UNAVAILABLE (a server restart) goes on from the byte reached.
 */
export async function* readChunks(
  caller: Caller,
  getAsset: (id: string, options: CallOptions) => Promise<Asset>,
  assetId: string,
  options: ReadOptions,
): AsyncGenerator<Buffer> {
  const { offset = 0, limit = 0, signal } = options;
  const whole = offset === 0 && limit === 0 && options.verify !== false;
  const record = whole ? await getAsset(assetId, { signal, deadline: options.deadline, timeoutMs: options.timeoutMs }) : undefined;
  const hash = createHash("sha256");
  const resumer = new Resumer("ReadAsset", options, signal, caller.closed);
  let received = 0;
  for (;;) {
    const request = ReadAssetRequest.fromPartial({
      assetId,
      offset: offset + received,
      limit: limit === 0 ? 0 : limit - received,
    });
    try {
      for await (const res of caller.serverStream("readAsset", request, options)) {
        const chunk = Buffer.from(res.chunk.buffer, res.chunk.byteOffset, res.chunk.byteLength);
        received += chunk.length;
        if (record) hash.update(chunk);
        resumer.progress();
        yield chunk;
      }
      break;
    } catch (err) {
      await resumer.again(err);
      if (limit !== 0 && received >= limit) break;
    }
  }
  if (record) {
    if (received !== record.sizeBytes) {
      throw new DataLossError("ReadAsset", assetId, `asset ${assetId}: received ${received} bytes, the record says ${record.sizeBytes}`);
    }
    const sum = hash.digest("hex");
    if (record.sha256 && sum !== record.sha256) {
      throw new DataLossError("ReadAsset", assetId, `asset ${assetId}: received bytes hash to ${sum}, the record says ${record.sha256}`);
    }
  }
}
