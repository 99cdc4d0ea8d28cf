// Task tokens for a worker, minted by an orchestrator's client when needed.
import type { TokenSource } from "./security";

/** A bearer token scoped to one task, as MintTaskToken returns it. */
export interface TaskToken {
  token: string;
  expiresAt: Date;
}

/** Whatever can mint task tokens: an AssetService with the orchestrator role. */
export interface TaskTokenMinter {
  mintTaskToken(taskId: string, inputAssetIds?: string[], ttlSeconds?: number): Promise<TaskToken>;
}

/**
 * A token source for a worker of `taskId`: it mints a task token through `minter` (a client
 * with the orchestrator role) on first use, and again once less than a fifth of the token's
 * lifetime is left. Concurrent calls share one mint.
 */
export function taskTokenSource(
  minter: TaskTokenMinter,
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
