// What a task orchestrator does with the Asset Service: promise a task's outputs as
// PENDING assets, watch them until terminal, then write the next task's manifest.
import { mkdir, writeFile } from "node:fs/promises";
import * as path from "node:path";

import { AssetService } from "./client";
import {
  Asset,
  AssetStatus,
  AssetType,
  FulfillAssetRequest,
  GetManifestResponse,
  WatchAssetResponse,
  WatchEventType,
  assetStatusToJSON,
  watchEventTypeToJSON,
} from "./gen/asset/v1/asset_service";

/** One asset a task promises to produce. */
export interface Output {
  /** The name under which the next task receives the asset. */
  key: string;
  label: string;
  mediaType: string;
  type: AssetType;
  /**
   * A lease in whole seconds (0 or absent: none): unless the producing task renews it
   * (`renewLease`, `keepLease`) before it runs out, the server fails the asset.
   */
  leaseSeconds?: number;
}

/** Creates one PENDING asset per output of `taskId` (leased if it has `leaseSeconds`), by key. */
export async function promise(svc: AssetService, taskId: string, outputs: Output[]): Promise<Map<string, Asset>> {
  const promised = new Map<string, Asset>();
  for (const o of outputs) {
    const { label, mediaType, type, leaseSeconds = 0 } = o;
    promised.set(o.key, await svc.createPendingAsset({ taskId, label, mediaType, type, leaseSeconds }));
  }
  return promised;
}

/**
 * Watches `ids` until the server ends the stream (every asset terminal), calling
 * `onEvent` for each event in order; returns each asset's last state by id.
 */
export async function watch(
  svc: AssetService,
  ids: string[],
  onEvent?: (ev: WatchAssetResponse) => void | Promise<void>,
  signal?: AbortSignal,
): Promise<Map<string, Asset>> {
  const last = new Map<string, Asset>();
  for await (const ev of svc.watch({ assetIds: ids }, { signal })) {
    if (ev.asset) last.set(ev.asset.id, ev.asset);
    await onEvent?.(ev);
  }
  return last;
}

export interface Config {
  /** The task that produces the outputs. */
  taskId: string;
  /** The task that consumes them through a manifest. */
  nextTaskId: string;
  /** A server --import-root: if set, a FILE output is produced there too. */
  importRoot?: string;
  log?: (line: string) => void;
}

export interface Result {
  /** Final state of each output, by key. */
  assets: Map<string, Asset>;
  /** Every WatchAsset event, in order received. */
  events: WatchAssetResponse[];
  manifest: GetManifestResponse;
}

/**
 * One hand-off: promise the outputs of `cfg.taskId`, watch them, fulfill them
 * (standing in for the worker) once the watch reported them PENDING, wait until
 * they are AVAILABLE, then write the manifest of `cfg.nextTaskId`.
 */
export async function runExample(svc: AssetService, cfg: Config): Promise<Result> {
  const log = cfg.log ?? (() => {});
  const outputs: Output[] = [
    { key: "summary", label: "summary.txt", mediaType: "text/plain", type: AssetType.ASSET_TYPE_VALUE },
    { key: "metrics", label: "metrics.json", mediaType: "application/json", type: AssetType.ASSET_TYPE_VALUE },
  ];
  if (cfg.importRoot) {
    outputs.push({ key: "report", label: "report.txt", mediaType: "text/plain", type: AssetType.ASSET_TYPE_FILE });
  }
  const promised = await promise(svc, cfg.taskId, outputs);
  const keyOf = new Map<string, string>();
  for (const [key, a] of promised) {
    keyOf.set(a.id, key);
    log(`promised ${key} ${a.id} (${assetStatusToJSON(a.status)})`);
  }
  const ids = [...keyOf.keys()];

  const events: WatchAssetResponse[] = [];
  const abort = new AbortController();
  let worker: Promise<void> | undefined;
  let workerError: unknown;
  let snapshots = 0;
  let final = new Map<string, Asset>();
  let watchError: unknown;
  try {
    final = await watch(
      svc,
      ids,
      (ev) => {
        events.push(ev);
        const a = ev.asset;
        const state = assetStatusToJSON(a?.status ?? AssetStatus.ASSET_STATUS_UNSPECIFIED);
        log(`event ${keyOf.get(a?.id ?? "")} ${watchEventTypeToJSON(ev.type)} -> ${state} (revision ${ev.revision})`);
        if (ev.type === WatchEventType.WATCH_EVENT_TYPE_SNAPSHOT && ++snapshots === ids.length) {
          // Every promise is on the stream: now the "worker" may deliver; if it
          // fails, the watch is cancelled rather than left waiting.
          worker = fulfill(svc, cfg, promised).catch((err: unknown) => {
            workerError = err;
            abort.abort();
          });
        }
      },
      abort.signal,
    );
  } catch (err) {
    watchError = err;
  }
  await worker;
  if (workerError !== undefined) throw workerError;
  if (watchError !== undefined) throw watchError;

  const assets = new Map<string, Asset>();
  const blocked: string[] = [];
  for (const [id, key] of keyOf) {
    const a = final.get(id);
    if (!a) throw new Error(`watch reported nothing for ${key} (${id})`);
    assets.set(key, a);
    if (a.status !== AssetStatus.ASSET_STATUS_AVAILABLE) {
      blocked.push(`${key} is ${assetStatusToJSON(a.status)} ${a.failureReason}`);
    }
  }
  if (blocked.length > 0) throw new Error(`outputs not available: ${blocked.join("; ")}`);

  const mappings = Object.fromEntries([...assets].map(([key, a]) => [key, a.id]));
  const manifest = await svc.getManifest(mappings, { task_id: cfg.nextTaskId, threshold: 0.5 });
  log(`manifest for ${cfg.nextTaskId}: ${manifest.manifestPath}`);
  return { assets, events, manifest };
}

/** Delivers every promised output, as the producing task's worker would. */
async function fulfill(svc: AssetService, cfg: Config, promised: Map<string, Asset>): Promise<void> {
  for (const [key, a] of promised) {
    let content: FulfillAssetRequest["content"];
    if (key === "summary") {
      content = { $case: "value", value: { kind: { $case: "text", value: "3 scenes, 2 speakers" } } };
    } else if (key === "metrics") {
      content = { $case: "value", value: { kind: { $case: "json", value: '{"scenes": 3, "speakers": 2}' } } };
    } else {
      // A FILE output: written under the import root, the server moves it in.
      const root = cfg.importRoot ?? "";
      await mkdir(root, { recursive: true });
      const file = path.join(root, `${cfg.taskId}-${a.id}.txt`);
      await writeFile(file, `report of ${cfg.taskId}\n`);
      content = { $case: "sourcePath", value: file };
    }
    await svc.fulfillAsset({ assetId: a.id, content });
  }
}
