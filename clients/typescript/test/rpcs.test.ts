// Every RPC through its AssetService method, typed errors, argument checks and deadlines,
// against the server of server.ts.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createWriteStream } from "node:fs";
import { after, before, describe, test } from "node:test";

import { AssetService, type ClientOptions } from "../src/client";
import { AssetServiceError, Status } from "../src/errors";
import {
  type Asset,
  AssetStatus,
  AssetType,
  GetOrCreateOutcome,
  ScrubOutcome,
  WatchEventType,
} from "../src/gen/asset/v1/asset_service";
import { bytesValue, jsonValue, textValue } from "../src/values";
import { collect, failsWith, taskId } from "./helpers";
import { type TestServer, testServer } from "./server";

const { ASSET_STATUS_PENDING: PENDING, ASSET_STATUS_AVAILABLE: AVAILABLE, ASSET_STATUS_FAILED: FAILED } = AssetStatus;
const UNKNOWN_ID = "00000000-0000-4000-8000-000000000000";

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** `n` bytes that differ from one MiB to the next. */
function pattern(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i + 4 <= n; i += 4096) b.writeUInt32BE(i, i);
  return b;
}

describe("every RPC from TypeScript", () => {
  let server: TestServer;
  let svc: AssetService;
  let scratch: string;
  const opened: AssetService[] = [];

  function open(token?: string, options: ClientOptions = {}): AssetService {
    const c = new AssetService(server.address, { ...server.transport, token, ...options });
    opened.push(c);
    return c;
  }

  before(async () => {
    server = await testServer();
    svc = open(server.token);
    scratch = mkdtempSync(path.join(tmpdir(), "asset-ts-rpcs-"));
  });

  after(async () => {
    for (const c of opened) c.close();
    rmSync(scratch, { recursive: true, force: true });
    await server?.stop();
  });

  test("CreateValueAsset, GetAsset, BatchGetAssets, ReadAsset of values", async () => {
    const tag = taskId("values");
    const text = await svc.createValueAsset({ label: "t.txt", value: textValue("héllo"), tags: [tag] });
    const json = await svc.createValueAsset({ label: "j.json", value: jsonValue({ a: [1, 2] }), tags: [tag] });
    const data = await svc.createValueAsset({ label: "b.bin", value: bytesValue(new Uint8Array([0, 1, 255])), tags: [tag] });
    for (const a of [text, json, data]) assert.equal(a.status, AVAILABLE);
    assert.equal((await svc.getAsset(text.id)).value?.kind?.$case, "text");
    const batch = await svc.batchGetAssets([data.id, text.id, json.id]);
    assert.deepEqual(batch.map((a) => a.id), [data.id, text.id, json.id], "in the order asked for");
    assert.equal((await svc.readAsset(text.id)).toString("utf8"), "héllo");
    assert.deepEqual(JSON.parse((await svc.readAsset(json.id)).toString("utf8")), { a: [1, 2] });
    assert.deepEqual([...(await svc.readAsset(data.id))], [0, 1, 255]);
    await failsWith(svc.batchGetAssets([text.id, UNKNOWN_ID]), Status.NOT_FOUND, UNKNOWN_ID);
  });

  test("UploadAsset from a Buffer, a stream and a file, QueryUpload; ReadAsset whole, in a range, as a stream", async () => {
    const bytes = pattern(2.5 * 1024 * 1024 + 3); // three chunks of 1 MiB and a tail
    const fromBuffer = await svc.uploadAsset(bytes, { label: "buffer.bin", mediaType: "application/x-test", tags: ["ts"] });
    assert.equal(fromBuffer.status, AVAILABLE);
    assert.equal(fromBuffer.sizeBytes, bytes.length);
    assert.equal(fromBuffer.sha256, sha256(bytes));
    assert.equal(fromBuffer.mediaType, "application/x-test");

    const pieces = [bytes.subarray(0, 10), bytes.subarray(10)];
    const fromStream = await svc.uploadAsset(Readable.from(pieces), { label: "stream.bin", chunkSize: 64 * 1024 });
    assert.equal(fromStream.sha256, sha256(bytes));

    const file = path.join(scratch, "input.bin");
    writeFileSync(file, bytes);
    const fromFile = await svc.uploadFile(file);
    assert.equal(fromFile.label, "input.bin", "the label defaults to the file's name");
    assert.equal(fromFile.sha256, sha256(bytes));

    assert.ok((await svc.readAsset(fromFile.id)).equals(bytes));
    assert.ok((await svc.readAsset(fromFile.id, { offset: 1024 * 1024 - 2, limit: 5 })).equals(bytes.subarray(1024 * 1024 - 2, 1024 * 1024 + 3)));
    const out = path.join(scratch, "output.bin");
    await pipeline(svc.readAssetStream(fromBuffer.id), createWriteStream(out));
    assert.ok(readFileSync(out).equals(bytes));

    // A resumable upload (an upload_id: QueryUpload knows it, and its asset once complete).
    const uploadId = `ts-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
    const resumed = await svc.uploadAsset(bytes.subarray(0, 1000), { label: "resumable.bin", uploadId });
    const state = await svc.queryUpload(uploadId);
    assert.equal(state.asset?.id, resumed.id);
    assert.equal(state.committedBytes, 1000);
    await failsWith(svc.queryUpload("no-such-upload-0000"), Status.NOT_FOUND);

    // An empty upload is an empty asset.
    const empty = await svc.uploadAsset(Buffer.alloc(0), { label: "empty" });
    assert.equal(empty.sizeBytes, 0);
    assert.equal((await svc.readAsset(empty.id)).length, 0);
  });

  test("GetOrCreatePendingAsset: one producer per key, the others join", async () => {
    const task = taskId("keyed");
    const key = `ts-client:${task}`;
    const produced = await svc.getOrCreatePendingAsset(key, { taskId: task, label: "keyed.bin" });
    assert.equal(produced.outcome, GetOrCreateOutcome.GET_OR_CREATE_OUTCOME_PRODUCE);
    assert.equal(produced.asset.key, key);
    const joined = await svc.getOrCreatePendingAsset(key, { taskId: task, label: "keyed.bin" });
    assert.equal(joined.outcome, GetOrCreateOutcome.GET_OR_CREATE_OUTCOME_JOIN);
    assert.equal(joined.asset.id, produced.asset.id);
    const listed = await svc.listAssets({ key });
    assert.deepEqual(
      listed.assets.map((a) => a.id),
      [produced.asset.id],
    );
    await failsWith(svc.getOrCreatePendingAsset("bad key", { taskId: task, label: "x" }), Status.INVALID_ARGUMENT);
  });

  test("UploadAsset fulfils a promise; the server's refusal is the rejection", async () => {
    const task = taskId("upload");
    const p = await svc.createPendingAsset({ taskId: task, label: "out.bin", type: AssetType.ASSET_TYPE_FILE });
    const done = await svc.uploadAsset(Buffer.from("the output"), { pendingAssetId: p.id });
    assert.equal(done.id, p.id);
    assert.equal(done.status, AVAILABLE);
    assert.equal((await svc.readAsset(p.id)).toString(), "the output");
    await failsWith(svc.uploadAsset(Buffer.from("again"), { pendingAssetId: p.id }), Status.FAILED_PRECONDITION, p.id);
    await failsWith(svc.uploadAsset(Buffer.from("x"), { label: "sized", expectedSizeBytes: 2 }), Status.DATA_LOSS, "declared 2");
    await failsWith(svc.uploadAsset(Buffer.from("x"), { label: "summed", expectedSha256: "0".repeat(64) }), Status.DATA_LOSS);
  });

  test("a source that fails cancels the upload: its error, nothing stored", async () => {
    const label = taskId("broken-source");
    async function* broken(): AsyncGenerator<Buffer> {
      yield Buffer.alloc(64 * 1024, 1);
      throw new Error("disk on fire");
    }
    await assert.rejects(svc.uploadAsset(broken(), { label }), /disk on fire/);
    assert.deepEqual((await svc.listAssets({ label })).assets, []);
    await assert.rejects(svc.uploadFile(path.join(scratch, "missing.bin")), { code: "ENOENT" });
  });

  test("RegisterFile adopts a file under the import root", async (t) => {
    if (!server.importRoot) return t.skip("no import root: set ASSET_SERVICE_IMPORT_ROOT");
    const file = path.join(server.importRoot, `${taskId("register")}.txt`);
    writeFileSync(file, "registered\n");
    const a = await svc.registerFile(file, { move: true, tags: ["registered"] });
    assert.equal(a.label, path.basename(file));
    assert.equal(a.sha256, sha256(Buffer.from("registered\n")));
    assert.equal((await svc.readAsset(a.id)).toString(), "registered\n");
    await failsWith(svc.registerFile(path.join(scratch, "outside.txt")), Status.PERMISSION_DENIED);
  });

  test("ListAssets page by page and all at once, WatchAsset by selector from its revision", async () => {
    const task = taskId("list");
    const promised: Asset[] = [];
    for (let i = 0; i < 3; i++) {
      promised.push(await svc.createPendingAsset({ taskId: task, label: `o${i}`, type: AssetType.ASSET_TYPE_VALUE }));
    }
    const first = await svc.listAssets({ createdByTask: task, pageSize: 2 });
    assert.equal(first.assets.length, 2);
    assert.ok(first.nextPageToken);
    const all = await collect(svc.listAllAssets({ createdByTask: task, pageSize: 2 }));
    assert.deepEqual(all.map((a) => a.id), promised.map((a) => a.id), "oldest first, every page");

    const watched = svc.watch({ selector: { taskId: task }, afterRevision: first.revision });
    await svc.failAsset(promised[1]!.id, "no");
    const [ev] = await collect(watched, 1); // break: cancels the call
    assert.equal(ev?.type, WatchEventType.WATCH_EVENT_TYPE_CHANGED);
    assert.equal(ev?.asset?.id, promised[1]!.id);
    assert.equal(ev?.asset?.status, FAILED);
  });

  test("GetManifest waits for a pending input; FailAsset, RenewLease, FulfillAsset", async () => {
    const task = taskId("manifest");
    const input = await svc.createPendingAsset({ taskId: task, label: "in.txt", type: AssetType.ASSET_TYPE_VALUE, leaseSeconds: 60 });
    const renewed = await svc.renewLease(input.id, 120);
    assert.ok(renewed.leaseExpireTime! > input.leaseExpireTime!);
    const waiting = svc.getManifest({ text: input.id }, { threshold: 2 }, { wait: true, timeoutMs: 20_000 });
    await svc.fulfillAsset({ assetId: input.id, content: { $case: "value", value: textValue("ready") } });
    const manifest = await waiting;
    assert.ok(path.isAbsolute(manifest.manifestPath));
    assert.deepEqual(Object.keys(manifest.entries), ["text"]);

    const failing = await svc.createPendingAsset({ taskId: task, label: "f", type: AssetType.ASSET_TYPE_VALUE });
    const failed = await svc.failAsset(failing.id, "it broke");
    assert.equal(failed.status, FAILED);
    assert.equal(failed.failureReason, "it broke");
  });

  test("DeleteAsset and ScrubAssets need the admin role; MintTaskToken the orchestrator role and a secret", async () => {
    const a = await svc.createValueAsset({ label: "doomed", value: textValue("x") });
    const file = await svc.uploadAsset(Buffer.from("scrub me"), { label: "scrubbed" });
    const admin = server.token === undefined ? svc : server.adminToken ? open(server.adminToken) : undefined;
    if (server.token !== undefined) {
      await failsWith(svc.deleteAsset(a.id), Status.PERMISSION_DENIED, "admin");
      await failsWith(collect(svc.scrubAssets([file.id])), Status.PERMISSION_DENIED, "admin");
    }
    if (admin) {
      const results = await collect(admin.scrubAssets([file.id, a.id], { rateMibPerSecond: 100 }));
      assert.deepEqual(
        results.map((r) => [r.assetId, ScrubOutcome[r.outcome]]),
        [
          [file.id, "SCRUB_OUTCOME_OK"],
          [a.id, "SCRUB_OUTCOME_SKIPPED"],
        ],
      );
      const gone = await admin.deleteAsset(a.id);
      assert.equal(gone.id, a.id);
      await failsWith(svc.getAsset(a.id), Status.NOT_FOUND);
    }
    if (server.token === undefined) {
      await failsWith(svc.mintTaskToken(taskId("mint")), Status.FAILED_PRECONDITION, "--token-secret-file");
    } else {
      const minted = await svc.mintTaskToken(taskId("mint"), [], 60);
      assert.equal(minted.token.split(".").length, 3);
    }
  });

  test("SetExpiry, PlaceHold, ReleaseHold and GetUsage: retention", async () => {
    const tag = taskId("usage");
    const a = await svc.createValueAsset({ label: "kept", value: textValue("12345"), tags: [tag] });
    const expiring = await svc.setExpiry(a.id, 3600);
    assert.equal(expiring.expiryRule, "ttl");
    assert.ok(expiring.expireTime);
    const held = await svc.placeHold(a.id, "ts-test", "checking");
    assert.deepEqual(held.holds.map((h) => [h.owner, h.reason]), [["ts-test", "checking"]]);
    const released = await svc.releaseHold(a.id, "ts-test");
    assert.equal(released.holds.length, 0);
    await failsWith(svc.releaseHold(a.id, "ts-test"), Status.NOT_FOUND, "ts-test");
    const usage = await svc.getUsage("tag", [tag]);
    assert.deepEqual(usage.rows.map((r) => [r.key, Number(r.count), Number(r.bytes)]), [[tag, 1, 5]]);
    const never = await svc.setExpiry(a.id, 0);
    assert.equal(never.expiryRule, "never");
  });

  test("errors are AssetServiceErrors: code, name, the server's message, the RPC, status details", async () => {
    const err = await failsWith(svc.getAsset("not-a-uuid"), Status.INVALID_ARGUMENT, "not-a-uuid");
    assert.ok(err instanceof Error);
    assert.equal(err.name, "AssetServiceError");
    assert.equal(err.codeName, "INVALID_ARGUMENT");
    assert.equal(err.rpc, "GetAsset");
    assert.equal(err.message, `GetAsset: INVALID_ARGUMENT: ${err.details}`);
    assert.equal(err.statusDetails, undefined);

    const pending = await svc.createPendingAsset({ taskId: taskId("blocked"), label: "x", type: AssetType.ASSET_TYPE_VALUE });
    const blocked = await failsWith(svc.getManifest({ video: pending.id }), Status.FAILED_PRECONDITION, pending.id);
    assert.equal(blocked.statusDetails?.code, Status.FAILED_PRECONDITION);
    assert.deepEqual(
      blocked.violations.map((x) => [x.type, x.subject]),
      [["PENDING", `assets/${pending.id}`]],
    );
    // Streams too, at once and mid-way.
    await failsWith(collect(svc.watch({ assetIds: [UNKNOWN_ID] })), Status.NOT_FOUND);
    await failsWith(svc.readAsset(UNKNOWN_ID, { verify: false }), Status.NOT_FOUND);
  });

  test("bad arguments are TypeErrors or RangeErrors naming them, never INTERNAL", async () => {
    const cases: [string, () => Promise<unknown>, ErrorConstructor, RegExp][] = [
      ["id as object", () => svc.getAsset({ assetId: "x" } as never), TypeError, /assetId must be a string, got an object/],
      ["id as number", () => svc.deleteAsset(7 as never), TypeError, /assetId must be a string, got a number \(7\)/],
      ["ids not an array", () => svc.batchGetAssets("a" as never), TypeError, /assetIds must be an array/],
      ["misspelt field", () => svc.createPendingAsset({ taskID: "t" } as never), TypeError, /request has no field "taskID"/],
      ["tags not strings", () => svc.createPendingAsset({ taskId: "t", tags: [1] } as never), TypeError, /request\.tags\[0\] must be a string/],
      ["enum out of range", () => svc.createPendingAsset({ taskId: "t", type: 9 as AssetType }), RangeError, /request\.type must be a AssetType, got 9/],
      ["lease not whole", () => svc.createPendingAsset({ taskId: "t", leaseSeconds: 1.5 }), RangeError, /leaseSeconds must be a whole number/],
      ["oneof without $case", () => svc.fulfillAsset({ assetId: "a", content: { value: "x" } } as never), TypeError, /request\.content must be \{ \$case, value \}/],
      ["value of wrong type", () => svc.createValueAsset({ label: "x", value: "text" } as never), TypeError, /request\.value must be a plain object/],
      ["upload source a string", () => svc.uploadAsset("hello" as never, { label: "x" }), TypeError, /source must be a Buffer/],
      ["chunk size zero", () => svc.uploadAsset(Buffer.from("x"), { chunkSize: 0 }), RangeError, /options\.chunkSize must be a whole number from 1/],
      ["upload id", () => svc.uploadAsset(Buffer.from("x"), { uploadId: "a b" }), RangeError, /options\.uploadId must be 8 to 64/],
      ["query id", () => svc.queryUpload(5 as never), TypeError, /uploadId must be a string/],
      ["stream of strings", () => svc.uploadAsset(Readable.from(["text"]), { label: "x" }), TypeError, /yielded a string/],
      ["negative offset", () => svc.readAsset("a", { offset: -1 }), RangeError, /options\.offset must be a whole number from 0/],
      ["manifest map", () => svc.getManifest({ a: 1 } as never), TypeError, /assetMappings\["a"\] must be a string/],
      ["config not JSON", () => svc.getManifest({}, { f: () => 1 } as never), TypeError, /configParams\.f must be a JSON value/],
      ["timeout zero", () => svc.getAsset(UNKNOWN_ID, { timeoutMs: 0 }), RangeError, /options\.timeoutMs must be above 0 ms/],
      ["deadline a number", () => svc.getAsset(UNKNOWN_ID, { deadline: 5 } as never), TypeError, /options\.deadline must be a Date/],
      ["signal not a signal", () => svc.getAsset(UNKNOWN_ID, { signal: {} } as never), TypeError, /options\.signal must be an AbortSignal/],
      ["watch misspelt", () => collect(svc.watch({ assetId: ["x"] } as never)), TypeError, /request has no field "assetId"/],
      ["list page size", () => svc.listAssets({ pageSize: 5000 }), RangeError, /filter\.pageSize must be a whole number from 0 to 1000/],
      ["mint ttl", () => svc.mintTaskToken("t", [], -1), RangeError, /ttlSeconds must be a whole number from 0/],
      ["scrub rate", () => collect(svc.scrubAssets([], { rateMibPerSecond: -1 })), RangeError, /options\.rateMibPerSecond must be 0/],
    ];
    for (const [name, call, type, message] of cases) {
      await assert.rejects(call(), (err: unknown) => {
        assert.ok(err instanceof type, `${name}: ${String(err)} is not a ${type.name}`);
        assert.match((err as Error).message, message, name);
        return true;
      });
    }
    assert.throws(() => svc.readAssetStream(5 as never), /assetId must be a string/);
    assert.throws(() => new AssetService(server.address, { tokn: "x" } as never), /options has no field "tokn"/);
    assert.throws(() => new AssetService(server.address, { defaultTimeoutMs: -1 }), RangeError);
    assert.throws(() => new AssetService(server.address, { retry: { maxAttempts: 9 } }), /maxAttempts must be a whole number from 2 to 5/);
    assert.throws(() => new AssetService(undefined as never), /address must be a string/);
  });

  test("unary calls have a default deadline, overridable per call; GetManifest's wait has none", async () => {
    const hasty = open(server.token, { defaultTimeoutMs: 1 });
    await failsWith(hasty.getAsset(UNKNOWN_ID), Status.DEADLINE_EXCEEDED);
    await failsWith(hasty.getAsset(UNKNOWN_ID, { timeoutMs: 10_000 }), Status.NOT_FOUND);
    await failsWith(hasty.getAsset(UNKNOWN_ID, { deadline: new Date(Date.now() + 10_000) }), Status.NOT_FOUND);

    const patient = open(server.token, { defaultTimeoutMs: 200 });
    const pending = await svc.createPendingAsset({ taskId: taskId("wait"), label: "x", type: AssetType.ASSET_TYPE_VALUE });
    const started = Date.now();
    await failsWith(patient.getManifest({ x: pending.id }, undefined, { wait: true, timeoutMs: 900 }), Status.DEADLINE_EXCEEDED, pending.id);
    const waited = Date.now() - started;
    assert.ok(waited >= 600, `the wait ended after ${waited} ms: the client's 200 ms default applied`);
    assert.equal((await patient.getAsset(pending.id)).status, PENDING);
  });

  test("a signal cancels any call: unary, upload, read, watch", async () => {
    const aborted = AbortSignal.abort();
    await failsWith(svc.getAsset(UNKNOWN_ID, { signal: aborted }), Status.CANCELLED);
    await failsWith(svc.uploadAsset(Buffer.alloc(10), { label: "x", signal: aborted }), Status.CANCELLED);
    const a = await svc.createValueAsset({ label: "r", value: textValue("r") });
    await failsWith(svc.readAsset(a.id, { signal: aborted, verify: false }), Status.CANCELLED);
    const p = await svc.createPendingAsset({ taskId: taskId("cancel"), label: "w", type: AssetType.ASSET_TYPE_VALUE });
    const abort = new AbortController();
    const events: number[] = [];
    const watching = (async () => {
      for await (const ev of svc.watch({ assetIds: [p.id] }, { signal: abort.signal })) {
        events.push(ev.type);
        abort.abort();
      }
    })();
    await failsWith(watching, Status.CANCELLED);
    assert.deepEqual(events, [WatchEventType.WATCH_EVENT_TYPE_SNAPSHOT]);
    assert.ok(new AssetServiceError("X", Status.CANCELLED, "m") instanceof AssetServiceError);
  });
});
