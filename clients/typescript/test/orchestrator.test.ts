import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";

import { status, type ServiceError } from "@grpc/grpc-js";

import { AssetService } from "../src/client";
import { AssetStatus, AssetType, WatchEventType } from "../src/gen/asset/v1/asset_service";
import { promise, runExample, watch } from "../src/orchestrator";
import { type TestServer, testServer } from "./server";

const PENDING = AssetStatus.ASSET_STATUS_PENDING;
const AVAILABLE = AssetStatus.ASSET_STATUS_AVAILABLE;
const FAILED = AssetStatus.ASSET_STATUS_FAILED;

function taskId(name: string): string {
  return `ts-${name}-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
}

async function rejectsWith(promise: Promise<unknown>, code: status, includes?: string): Promise<void> {
  await assert.rejects(promise, (err: ServiceError) => {
    assert.equal(err.code, code, `code ${status[err.code]} (${err.details}), want ${status[code]}`);
    if (includes) assert.ok(err.details.includes(includes), `${err.details} names ${includes}`);
    return true;
  });
}

describe("asset service from TypeScript", () => {
  let server: TestServer;
  let svc: AssetService;

  before(async () => {
    server = await testServer();
    svc = new AssetService(server.address);
  });

  after(async () => {
    svc?.close();
    await server?.stop();
  });

  test("example flow: PENDING then AVAILABLE, then a manifest of existing files", async () => {
    const lines: string[] = [];
    const res = await runExample(svc, {
      taskId: taskId("flow"),
      nextTaskId: "consume",
      importRoot: server.importRoot,
      log: (line) => lines.push(line),
    });
    const keys = ["metrics", "summary", ...(server.importRoot ? ["report"] : [])].sort();
    assert.deepEqual([...res.assets.keys()].sort(), keys, lines.join("\n"));

    const seen = new Map<string, AssetStatus[]>();
    let lastRevision = 0;
    for (const ev of res.events) {
      const a = ev.asset!;
      seen.set(a.id, [...(seen.get(a.id) ?? []), a.status]);
      if (ev.type === WatchEventType.WATCH_EVENT_TYPE_CHANGED) {
        assert.ok(ev.revision > lastRevision, `revision ${ev.revision} after ${lastRevision}`);
      }
      lastRevision = Math.max(lastRevision, ev.revision);
    }
    for (const [key, a] of res.assets) {
      assert.deepEqual(seen.get(a.id), [PENDING, AVAILABLE], `statuses of ${key}`);
      assert.equal(a.status, AVAILABLE);
    }

    const manifestPath = res.manifest.manifestPath;
    assert.ok(path.isAbsolute(manifestPath), manifestPath);
    const manifest = JSON.parse(readFileSync(manifestPath, "utf8")) as {
      inputs: Record<string, string>;
      config_params: Record<string, unknown>;
    };
    assert.deepEqual(Object.keys(manifest.inputs).sort(), keys);
    assert.deepEqual(manifest.inputs, res.manifest.entries);
    for (const [key, file] of Object.entries(manifest.inputs)) {
      assert.ok(path.isAbsolute(file) && existsSync(file), `${key}: ${file}`);
    }
    assert.equal(readFileSync(manifest.inputs.summary!, "utf8"), "3 scenes, 2 speakers");
    assert.deepEqual(JSON.parse(readFileSync(manifest.inputs.metrics!, "utf8")), { scenes: 3, speakers: 2 });
    assert.deepEqual(manifest.config_params, { task_id: "consume", threshold: 0.5 });
  });

  test("a failed output ends the watch and blocks the manifest", async () => {
    const promised = await promise(svc, taskId("fail"), [
      { key: "out", label: "out.txt", mediaType: "text/plain", type: AssetType.ASSET_TYPE_VALUE },
    ]);
    const id = promised.get("out")!.id;
    await rejectsWith(svc.getManifest({ in: id }), status.FAILED_PRECONDITION, id);

    const statuses: AssetStatus[] = [];
    const final = await watch(svc, [id], async (ev) => {
      statuses.push(ev.asset!.status);
      if (statuses.length === 1) await svc.failAsset(id, "worker crashed");
    });
    assert.deepEqual(statuses, [PENDING, FAILED]);
    assert.equal(final.get(id)?.failureReason, "worker crashed");
    await rejectsWith(
      svc.fulfillAsset({ assetId: id, content: { $case: "value", value: { kind: { $case: "text", value: "late" } } } }),
      status.FAILED_PRECONDITION,
    );
  });

  test("errors carry gRPC status codes", async () => {
    await rejectsWith(svc.getAsset("not-a-uuid"), status.INVALID_ARGUMENT);
    await rejectsWith(svc.getAsset("00000000-0000-4000-8000-000000000000"), status.NOT_FOUND);
    await rejectsWith(svc.createPendingAsset({ taskId: "../escape", label: "x" }), status.INVALID_ARGUMENT);
    await rejectsWith(watch(svc, ["00000000-0000-4000-8000-000000000000"]), status.NOT_FOUND);
  });
});
