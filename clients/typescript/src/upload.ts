// UploadAsset from a Buffer, a stream or a file: chunked, with backpressure, checked end to end.
import { createHash, type Hash } from "node:crypto";
import type { FileHandle } from "node:fs/promises";

import type { CallOptions, Caller } from "./calls";
import { DataLossError } from "./errors";
import { type Asset, UploadAssetRequest, type UploadHeader } from "./gen/asset/v1/asset_service";
import { asBuffer } from "./validate";

/** Where an upload's bytes come from, readable again from an offset when `replayable`. */
export interface Source {
  replayable: boolean;
  /** Bytes in all, when known beforehand. */
  size?: number;
  chunks(from: number): AsyncIterable<Uint8Array>;
}

export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
/**
 * Sources this big or bigger upload resumably by default (as with the Python client): below
 * one object-store part a cut stream keeps nothing there anyway, and sending them again
 * costs under a second.
 */
export const RESUMABLE_BYTES = 8 * 1024 * 1024;
/** The contract's largest chunk ("up to 4 MiB a message"). */
export const MAX_CHUNK_SIZE = 4 * 1024 * 1024;

export function bufferSource(data: Uint8Array, chunkSize: number): Source {
  return {
    replayable: true,
    size: data.length,
    async *chunks(from) {
      for (let at = from; at < data.length; at += chunkSize) yield data.subarray(at, at + chunkSize);
    },
  };
}

/** A file of `size` bytes, read with positioned reads: resumable from any offset. */
export function fileSource(fh: FileHandle, size: number, chunkSize: number): Source {
  return {
    replayable: true,
    size,
    async *chunks(from) {
      for (let at = from; ; ) {
        const buf = Buffer.allocUnsafe(chunkSize);
        const { bytesRead } = await fh.read(buf, 0, chunkSize, at);
        if (bytesRead === 0) return;
        at += bytesRead;
        yield buf.subarray(0, bytesRead);
      }
    },
  };
}

/** A stream or async iterable of bytes: read once; pieces above `chunkSize` are split. */
export function streamSource(stream: AsyncIterable<unknown>, chunkSize: number): Source {
  let used = false;
  return {
    replayable: false,
    async *chunks(from) {
      if (used || from !== 0) throw new Error("a stream source cannot be read twice");
      used = true;
      let index = 0;
      for await (const piece of stream) {
        if (!(piece instanceof Uint8Array)) {
          throw new TypeError(
            `the upload source yielded ${typeof piece === "string" ? "a string" : typeof piece} at piece ${index}: ` +
              "it must yield Buffers or Uint8Arrays (a stream read without an encoding)",
          );
        }
        index += 1;
        for (let at = 0; at < piece.length; at += chunkSize) yield piece.subarray(at, at + chunkSize);
      }
    },
  };
}

/**
 * The sha256 and size of the whole content, fed by streams that may start again from an
 * earlier offset: each byte is hashed once, in order (the resent ones are not hashed again).
 */
export class ContentHash {
  private readonly hash: Hash = createHash("sha256");
  size = 0;

  add(offset: number, chunk: Uint8Array): void {
    const end = offset + chunk.length;
    if (end <= this.size) return;
    if (offset > this.size) throw new Error(`bytes from ${offset} but only ${this.size} were hashed`);
    this.hash.update(chunk.subarray(this.size - offset));
    this.size = end;
  }

  /** Hashes `source` up to `until` (a resumed upload that this process did not start). */
  async catchUp(source: Source, until: number): Promise<void> {
    if (this.size >= until) return;
    for await (const chunk of source.chunks(this.size)) {
      const at = this.size;
      this.add(at, chunk.subarray(0, Math.max(0, until - at)));
      if (this.size >= until) return;
    }
  }

  digest(): string {
    return this.hash.digest("hex");
  }
}

/**
 * One UploadAsset stream: `header`, then `source` from `from`. Resolves with the stored
 * asset; a failure of the source cancels the call and rejects with the source's error.
 */
export async function uploadStream(
  caller: Caller,
  header: UploadHeader,
  source: Source,
  from: number,
  hashed: ContentHash,
  options: CallOptions,
  onProgress?: (sentBytes: number) => void,
): Promise<Asset> {
  const stream = caller.clientStream("uploadAsset", options);
  try {
    await stream.send(UploadAssetRequest.fromPartial({ payload: { $case: "header", value: header } }));
    let offset = from;
    for await (const chunk of source.chunks(from)) {
      hashed.add(offset, chunk);
      offset += chunk.length;
      await stream.send({ payload: { $case: "chunk", value: asBuffer(chunk) } });
      onProgress?.(offset);
    }
  } catch (err) {
    await stream.cancel();
    throw err;
  }
  const res = await stream.finish();
  if (!res.asset) throw new Error("UploadAsset answered without an asset");
  return res.asset;
}

/** The stored asset is what was sent: same size and sha256, or a DataLossError. */
export function checkStored(asset: Asset, hashed: ContentHash): Asset {
  const sum = hashed.digest();
  if (asset.sizeBytes !== hashed.size || asset.sha256 !== sum) {
    throw new DataLossError(
      "UploadAsset",
      asset.id,
      `asset ${asset.id}: sent ${hashed.size} bytes with sha256 ${sum}, the server stored ${asset.sizeBytes} with ${asset.sha256}`,
    );
  }
  return asset;
}
