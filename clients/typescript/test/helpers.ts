// Small helpers shared by the test files.
import assert from "node:assert/strict";

import { AssetServiceError, Status } from "../src/errors";

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** `p`, or a rejection once `ms` have passed (the timer is cleared either way). */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

export function taskId(name: string): string {
  return `ts-${name}-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
}

/** `p` rejects with an AssetServiceError of `code` whose details include `includes`. */
export async function failsWith(p: Promise<unknown>, code: Status, includes?: string): Promise<AssetServiceError> {
  let caught: unknown;
  await assert.rejects(p, (err: unknown) => {
    caught = err;
    return true;
  });
  assert.ok(caught instanceof AssetServiceError, `${String(caught)} is not an AssetServiceError`);
  assert.equal(caught.code, code, `code ${caught.codeName} (${caught.details}), want ${Status[code]}`);
  if (includes) assert.ok(caught.details.includes(includes), `${caught.details} names ${includes}`);
  return caught;
}

/** Collects an async iterable, at most `max` items. */
export async function collect<T>(items: AsyncIterable<T>, max = Infinity): Promise<T[]> {
  const out: T[] = [];
  for await (const x of items) {
    out.push(x);
    if (out.length >= max) break;
  }
  return out;
}
