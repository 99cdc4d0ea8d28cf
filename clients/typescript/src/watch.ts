// WatchAsset as an async iterator that picks the stream up again from the last revision.
import type { CallOptions, Caller } from "./calls";
import { type WatchAssetRequest, type WatchAssetResponse } from "./gen/asset/v1/asset_service";
import { type ResumeOptions, Resumer } from "./resume";

/** A watch is bounded by its signal only (no deadline), and resumes by default. */
export interface WatchOptions extends ResumeOptions {
  /** Aborting it ends the watch: the loop throws CANCELLED. */
  signal?: AbortSignal;
}

/**
 * The events of `request`. After UNAVAILABLE (a server restart, a dropped connection, a
 * stall) the stream is started again with `afterRevision` = the last revision delivered, so
 * nothing is missed or sent twice; assets that changed meanwhile come as SNAPSHOT events of
 * the resumed stream. Ends when the server ends the stream (every asset terminal, unless
 * `follow` or a selector), throws an AssetServiceError on any other failure.
 */
export async function* watchEvents(caller: Caller, request: WatchAssetRequest, options: WatchOptions): AsyncGenerator<WatchAssetResponse> {
  const resumer = new Resumer("WatchAsset", options, options.signal, caller.closed);
  const call: CallOptions = { signal: options.signal };
  let after = request.afterRevision;
  for (;;) {
    try {
      for await (const ev of caller.serverStream("watchAsset", { ...request, afterRevision: after }, call)) {
        after = Math.max(after, ev.revision);
        resumer.progress();
        yield ev;
      }
      return;
    } catch (err) {
      await resumer.again(err);
    }
  }
}
