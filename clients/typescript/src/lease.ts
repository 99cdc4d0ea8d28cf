// Keeping a promise's lease: renew it on a timer while the producing task works.
import { status } from "@grpc/grpc-js";

import type { AssetService } from "./client";

/** A running renewal of one promise's lease; see `keepLease`. */
export interface LeaseKeeper {
  /**
   * Stops renewing: clears the timer, cancels a renewal in flight and waits for it.
   * Rejects with the error that had ended the keeping, if one did; resolves when it was
   * still renewing (or the signal had ended it). Calling it again settles the same way.
   */
  stop(): Promise<void>;
  /**
   * Settles once the keeper has stopped renewing (after `stop`, the signal, or an error
   * that ended it): with that error, or `undefined`. It never rejects.
   */
  readonly done: Promise<Error | undefined>;
}

/** Failures worth another renewal at the next tick. */
const TRANSIENT: ReadonlySet<number> = new Set([status.UNAVAILABLE, status.DEADLINE_EXCEEDED]);

function isTransient(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "number" && TRANSIENT.has(code);
}

/**
 * Renews `assetId`'s lease (`renewLease` with 0: the lease it was promised with) every
 * `everyMs` milliseconds, until `stop()` is called, `signal` aborts, or a renewal fails for
 * good. Choose `everyMs` well below the lease (a third of it, say): a renewal that fails
 * with UNAVAILABLE or DEADLINE_EXCEEDED (each call may take at most `everyMs`) is tried
 * again at the next tick; any other error (the asset is no longer PENDING, its lease ran
 * out, permission denied, ...) ends the keeping, and `done` and `stop()` report it. The
 * first renewal is `everyMs` after the call. The timer does not keep Node running by itself.
 */
export function keepLease(
  svc: Pick<AssetService, "renewLease">,
  assetId: string,
  everyMs: number,
  signal?: AbortSignal,
): LeaseKeeper {
  const abort = new AbortController();
  const onAbort = (): void => abort.abort();
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) abort.abort();

  async function run(): Promise<Error | undefined> {
    if (!(Number.isFinite(everyMs) && everyMs > 0)) {
      return new RangeError(`keep lease of ${assetId}: the interval ${everyMs} ms is not positive`);
    }
    let next = Date.now();
    while (!abort.signal.aborted) {
      next += everyMs;
      const now = Date.now();
      // Ticks a slow renewal missed are skipped, not made up in a burst.
      if (next <= now) next += Math.floor((now - next) / everyMs + 1) * everyMs;
      await tick(next - now, abort.signal);
      if (abort.signal.aborted) break;
      try {
        await svc.renewLease(assetId, 0, { signal: abort.signal, deadline: new Date(Date.now() + everyMs) });
      } catch (err) {
        if (abort.signal.aborted || isTransient(err)) continue; // stopped (CANCELLED), or try again
        return asError(err); // the ServiceError as it came: its details name the asset
      }
    }
    return undefined;
  }

  const done = run()
    .catch(asError)
    .finally(() => {
      abort.abort(); // a keeper that ended on an error is stopped too
      signal?.removeEventListener("abort", onAbort);
    });

  return {
    done,
    async stop() {
      abort.abort();
      const err = await done;
      if (err) throw err;
    },
  };
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/** Resolves after `ms` (at once when aborted); the timer is cleared on abort. */
function tick(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", cleared);
      resolve();
    }, Math.max(0, ms));
    timer.unref();
    function cleared(): void {
      clearTimeout(timer);
      resolve();
    }
    signal.addEventListener("abort", cleared, { once: true });
  });
}
