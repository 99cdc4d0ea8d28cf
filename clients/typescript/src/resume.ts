// Picking a broken stream up again: how long to keep trying, and the waits in between.
import { AssetServiceError, Status } from "./errors";

/** How a stream that broke with UNAVAILABLE is picked up again (watch, reads, resumable uploads). */
export interface ResumeOptions {
  /** false: a broken stream throws its UNAVAILABLE at once. Default true. */
  resume?: boolean;
  /**
   * Give up once the stream has been broken this long without delivering anything new
   * (default 60_000 ms): the UNAVAILABLE is thrown then.
   */
  resumeWithinMs?: number;
}

export const DEFAULT_RESUME_WITHIN_MS = 60_000;
const FIRST_WAIT_MS = 100;
const LONGEST_WAIT_MS = 2_000;

/** One stream's resumption state: call `progress()` on every message, `again(err)` on a failure. */
export class Resumer {
  private brokenSince: number | undefined;
  private waitMs = FIRST_WAIT_MS;

  constructor(
    private readonly rpc: string,
    private readonly options: ResumeOptions,
    private readonly signal: AbortSignal | undefined,
    /** The client's `closed`: it ends a wait too. */
    private readonly closed: AbortSignal,
    /** Which failures are worth another stream (default: UNAVAILABLE). */
    private readonly worthResuming: (err: AssetServiceError) => boolean = (err) => err.code === Status.UNAVAILABLE,
  ) {}

  progress(): void {
    this.brokenSince = undefined;
    this.waitMs = FIRST_WAIT_MS;
  }

  /**
   * Resolves (after a wait) when the stream should be started again after `err`; rethrows
   * `err` when it is not worth resuming (not UNAVAILABLE), resuming is off, or the budget
   * is spent.
   */
  async again(err: unknown): Promise<void> {
    const within = this.options.resumeWithinMs ?? DEFAULT_RESUME_WITHIN_MS;
    const worth = err instanceof AssetServiceError && this.worthResuming(err);
    if (!worth || this.options.resume === false || this.signal?.aborted || this.closed.aborted) throw err;
    const now = Date.now();
    this.brokenSince ??= now;
    if (now - this.brokenSince >= within) throw err;
    const wait = Math.min(this.waitMs, this.brokenSince + within - now);
    this.waitMs = Math.min(this.waitMs * 2, LONGEST_WAIT_MS);
    await pause(wait, [this.signal, this.closed], this.rpc);
  }
}

/**
 * Resolves after `ms`; rejects with CANCELLED if one of `signals` aborts first. The timer
 * keeps Node running: someone awaits it (a bounded wait).
 */
function pause(ms: number, signals: (AbortSignal | undefined)[], rpc: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      for (const s of signals) s?.removeEventListener("abort", aborted);
      resolve();
    }, ms);
    function aborted(): void {
      clearTimeout(timer);
      for (const s of signals) s?.removeEventListener("abort", aborted);
      reject(new AssetServiceError(rpc, Status.CANCELLED, "cancelled while waiting to resume the stream"));
    }
    for (const s of signals) s?.addEventListener("abort", aborted, { once: true });
  });
}
