import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";

import { createHash } from "node:crypto";

import { Server, ServerCredentials, status, type ServiceError } from "@grpc/grpc-js";

import { AssetService, type ClientOptions, DataLossError, taskTokenSource } from "../src/client";
import {
  type Asset,
  AssetServiceService,
  AssetStatus,
  AssetType,
  GetAssetResponse,
  ReadAssetResponse,
  WatchEventType,
} from "../src/gen/asset/v1/asset_service";
import { keepLease } from "../src/lease";
import { promise, runExample, watch } from "../src/orchestrator";
import { type TokenSource, connection, isLoopbackTarget } from "../src/security";
import { sleep, taskId, within } from "./helpers";
import { type TestServer, testServer } from "./server";

const PENDING = AssetStatus.ASSET_STATUS_PENDING;
const AVAILABLE = AssetStatus.ASSET_STATUS_AVAILABLE;
const FAILED = AssetStatus.ASSET_STATUS_FAILED;
const UNKNOWN_ID = "00000000-0000-4000-8000-000000000000";

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
    svc = open(server.token);
  });

  after(async () => {
    for (const c of opened) c.close();
    await server?.stop();
  });

  const opened: AssetService[] = [];
  /** A client with the server's transport (TLS, client certificate) and this token. */
  function open(token?: string | TokenSource, transport = server.transport, options: ClientOptions = {}): AssetService {
    const c = new AssetService(server.address, { ...transport, token, ...options });
    opened.push(c);
    return c;
  }

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
    await rejectsWith(svc.getAsset(UNKNOWN_ID), status.NOT_FOUND);
    await rejectsWith(svc.createPendingAsset({ taskId: "../escape", label: "x" }), status.INVALID_ARGUMENT);
    await rejectsWith(watch(svc, [UNKNOWN_ID]), status.NOT_FOUND);
  });

  test("bearer tokens are checked", async (t) => {
    const token = server.token;
    if (!token) return t.skip("the server takes no tokens: set ASSET_SERVICE_TOKEN");

    let asked = 0;
    const counted = open(() => {
      asked += 1;
      return token;
    });
    for (let i = 0; i < 3; i++) await rejectsWith(counted.getAsset(UNKNOWN_ID), status.NOT_FOUND);
    assert.equal(asked, 3, "the token source is asked before every call");

    const wrong = open("not-a-token-the-server-knows-0123456789abc");
    await rejectsWith(wrong.getAsset(UNKNOWN_ID), status.UNAUTHENTICATED);
    await rejectsWith(wrong.createPendingAsset({ taskId: taskId("wrong"), label: "x" }), status.UNAUTHENTICATED);

    // Without retries: a safe call failing with UNAVAILABLE would be sent 5 times in ~7 s.
    const broken = open(
      async () => {
        throw new Error("vault sealed");
      },
      server.transport,
      { retry: false },
    );
    await rejectsWith(broken.getAsset(UNKNOWN_ID), status.UNAVAILABLE, "vault sealed");

    const anonymous = open(undefined);
    if (!server.clientCertificate) {
      await rejectsWith(anonymous.getAsset(UNKNOWN_ID), status.UNAUTHENTICATED);
      await rejectsWith(anonymous.createPendingAsset({ taskId: taskId("anon"), label: "x" }), status.UNAUTHENTICATED);
      return;
    }
    // mTLS: the certificate alone authenticates, as a reader; without it the handshake fails.
    await rejectsWith(anonymous.getAsset(UNKNOWN_ID), status.NOT_FOUND);
    await rejectsWith(anonymous.createPendingAsset({ taskId: taskId("cert"), label: "x" }), status.PERMISSION_DENIED);
    const noCertificate = open(token, { rootCerts: server.transport.rootCerts }, { retry: false });
    await rejectsWith(noCertificate.getAsset(UNKNOWN_ID), status.UNAVAILABLE);
  });

  test("a task token fulfils and reads its own task's outputs, nothing else", async (t) => {
    if (!server.token) return t.skip("the server takes no tokens: set ASSET_SERVICE_TOKEN");
    const task = taskId("task");
    const out = [{ key: "out", label: "out.txt", mediaType: "text/plain", type: AssetType.ASSET_TYPE_VALUE }];
    const id = (await promise(svc, task, out)).get("out")!.id;
    const foreignId = (await promise(svc, `${task}-other`, out)).get("out")!.id;

    const minted = await svc.mintTaskToken(task, [], 120);
    assert.equal(minted.token.split(".").length, 3, `${minted.token} is a JWT`);
    const left = minted.expiresAt.getTime() - Date.now();
    assert.ok(left > 60_000 && left <= 125_000, `expires in ${left} ms, want about 2 min`);

    let mints = 0;
    const minter = {
      mintTaskToken: (...args: Parameters<AssetService["mintTaskToken"]>) => {
        mints += 1;
        return svc.mintTaskToken(...args);
      },
    };
    const worker = open(taskTokenSource(minter, task, [], 120));
    await worker.fulfillAsset({ assetId: id, content: { $case: "value", value: { kind: { $case: "text", value: "done by the worker" } } } });
    assert.equal((await worker.getAsset(id)).status, AVAILABLE);
    assert.equal((await worker.readAsset(id)).toString("utf8"), "done by the worker");
    assert.equal((await worker.readAsset(id, { offset: 5, limit: 2 })).toString("utf8"), "by");

    await rejectsWith(
      worker.fulfillAsset({ assetId: foreignId, content: { $case: "value", value: { kind: { $case: "text", value: "x" } } } }),
      status.PERMISSION_DENIED,
    );
    await rejectsWith(worker.createPendingAsset({ taskId: task, label: "more" }), status.PERMISSION_DENIED);

    // It renews the leases of its own task's promises, and only those.
    const leasedOut = out.map((o) => ({ ...o, leaseSeconds: 60 }));
    const leasedId = (await promise(svc, task, leasedOut)).get("out")!.id;
    const foreignLeasedId = (await promise(svc, `${task}-other`, leasedOut)).get("out")!.id;
    const renewed = await worker.renewLease(leasedId, 120);
    const runsOut = renewed.leaseExpireTime!.getTime() - Date.now();
    assert.ok(runsOut > 60_000 && runsOut <= 125_000, `renewed lease runs out in ${runsOut} ms, want about 2 min`);
    await rejectsWith(worker.renewLease(foreignLeasedId), status.PERMISSION_DENIED);
    assert.equal(mints, 1, "the worker's token source mints once and reuses the token");
  });

  /** A PENDING VALUE asset of a fresh task, with this lease. */
  async function promiseOne(leaseSeconds: number): Promise<Asset> {
    const out = [{ key: "out", label: "out.txt", mediaType: "text/plain", type: AssetType.ASSET_TYPE_VALUE, leaseSeconds }];
    return (await promise(svc, taskId("lease"), out)).get("out")!;
  }

  test("keepLease holds a 1 s lease past its end until the promise is fulfilled", async () => {
    const p = await promiseOne(1);
    assert.equal(p.leaseSeconds, 1);
    const first = p.leaseExpireTime!.getTime();
    const left = first - Date.now();
    assert.ok(left > 0 && left <= 1100, `a 1 s lease runs out in ${left} ms`);

    // Well past the first lease's end (the server looks every 0.2 s).
    const keeper = keepLease(svc, p.id, 300);
    let ended = false;
    void keeper.done.then(() => (ended = true));
    await sleep(2500);
    assert.equal(ended, false, "the keeper ended while the promise was PENDING");
    const a = await svc.getAsset(p.id);
    assert.equal(a.status, PENDING, `after 2.5 s of renewals: ${a.failureReason}`);
    const movedBy = a.leaseExpireTime!.getTime() - first;
    assert.ok(movedBy >= 1500, `the lease was moved by ${movedBy} ms in 2.5 s`);
    await keeper.stop();
    assert.equal(ended, true, "stop() resolved before the keeper had ended");
    assert.equal(await keeper.done, undefined);

    const fulfilled = await svc.fulfillAsset({ assetId: p.id, content: { $case: "value", value: { kind: { $case: "text", value: "kept" } } } });
    assert.equal(fulfilled.status, AVAILABLE);
  });

  test("a lease nobody renews fails the promise, and a keeper started too late ends", async () => {
    const started = Date.now();
    const p = await promiseOne(1);
    const statuses: AssetStatus[] = [];
    const final = await watch(svc, [p.id], (ev) => {
      statuses.push(ev.asset!.status);
    });
    const took = Date.now() - started;
    assert.deepEqual(statuses, [PENDING, FAILED]);
    const a = final.get(p.id)!;
    assert.ok(a.failureReason.startsWith("lease expired"), a.failureReason);
    assert.equal(a.updatedBy, "lease");
    assert.ok(took >= 900, `FAILED after ${took} ms, before its 1 s lease ran out`);

    await rejectsWith(svc.renewLease(p.id), status.FAILED_PRECONDITION, p.id);
    const keeper = keepLease(svc, p.id, 50);
    const err = (await within(keeper.done, 5000, "the keeper still runs")) as ServiceError;
    assert.equal(err.code, status.FAILED_PRECONDITION, `keeper ended with ${String(err)}`);
    await rejectsWith(keeper.stop(), status.FAILED_PRECONDITION, p.id);
  });

  test("renewLease errors: no lease, unknown asset, too long, not whole seconds, cancelled", async () => {
    const p = await promiseOne(0);
    assert.equal(p.leaseSeconds, 0);
    assert.equal(p.leaseExpireTime, undefined);
    await rejectsWith(svc.renewLease(p.id, 10), status.FAILED_PRECONDITION, p.id);
    await rejectsWith(svc.renewLease(UNKNOWN_ID), status.NOT_FOUND);
    const leased = await promiseOne(60);
    await rejectsWith(svc.renewLease(leased.id, 2 * 86400), status.INVALID_ARGUMENT);
    await assert.rejects(svc.renewLease(leased.id, -1), RangeError);
    await assert.rejects(svc.renewLease(leased.id, 0.5), RangeError);
    await assert.rejects(promiseOne(1.5), RangeError);
    // A call can be cancelled, or bounded by a deadline.
    await rejectsWith(svc.renewLease(leased.id, 0, { signal: AbortSignal.abort() }), status.CANCELLED);
    await rejectsWith(svc.renewLease(leased.id, 0, { deadline: new Date(Date.now() - 1) }), status.DEADLINE_EXCEEDED);

    // The keeper of a promise without a lease ends on the first refusal.
    const keeper = keepLease(svc, p.id, 50);
    const err = (await within(keeper.done, 5000, "the keeper still runs")) as ServiceError;
    assert.equal(err.code, status.FAILED_PRECONDITION, `keeper ended with ${String(err)}`);
    await assert.rejects(keepLease(svc, p.id, 0).stop(), RangeError);
  });

  test("keepLease retries transient errors, and nothing renews after stop() or the signal", async () => {
    const p = await promiseOne(5);
    let calls = 0;
    const flaky: Pick<AssetService, "renewLease"> = {
      renewLease: (...args) => {
        calls += 1;
        if (calls <= 2) {
          return Promise.reject(Object.assign(new Error("connection reset (injected)"), { code: status.UNAVAILABLE }));
        }
        return svc.renewLease(...args);
      },
    };
    const keeper = keepLease(flaky, p.id, 100);
    let ended = false;
    void keeper.done.then(() => (ended = true));
    for (const until = Date.now() + 5000; calls < 4 && Date.now() < until && !ended; ) await sleep(20);
    await keeper.stop(); // rejects if the UNAVAILABLE renewals had ended it
    assert.ok(calls >= 4, `${calls} renewals in 5 s at 100 ms`);
    const a = await svc.getAsset(p.id);
    assert.ok(a.leaseExpireTime! > p.leaseExpireTime!, "the renewals after the transient errors did not move the lease");
    const after = calls;
    await sleep(300);
    assert.equal(calls, after, "renewals after stop()");

    const abort = new AbortController();
    const aborted = keepLease(svc, p.id, 100, abort.signal);
    abort.abort();
    assert.equal(await within(aborted.done, 5000, "the aborted keeper still runs"), undefined);
    await aborted.stop();
  });
});

describe("reads checked against their record", () => {
  /** A server whose record says `real` but whose ReadAsset sends `sent`. */
  async function lyingServer(real: Buffer, sent: Buffer): Promise<{ address: string; stop: () => void }> {
    const server = new Server();
    const sha256 = createHash("sha256").update(real).digest("hex");
    server.addService(AssetServiceService, {
      getAsset: (call: { request: { assetId: string } }, cb: (err: null, res: GetAssetResponse) => void) =>
        cb(null, GetAssetResponse.fromPartial({
          asset: { id: call.request.assetId, status: AVAILABLE, type: AssetType.ASSET_TYPE_FILE, sizeBytes: real.length, sha256 },
        })),
      readAsset: (call: { write: (m: ReadAssetResponse) => void; end: () => void }) => {
        call.write(ReadAssetResponse.fromPartial({ chunk: sent, offset: 0 }));
        call.end();
      },
    } as never);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    return { address: `127.0.0.1:${port}`, stop: () => server.forceShutdown() };
  }

  test("a whole read that is not the record's bytes is a DataLossError", async () => {
    const id = "11111111-2222-4333-8444-555555555555";
    for (const sent of [Buffer.from("the fake bytes"), Buffer.from("the real")]) {
      const server = await lyingServer(Buffer.from("the real bytes"), sent);
      const c = new AssetService(server.address);
      try {
        await assert.rejects(c.readAsset(id), (err: unknown) => {
          assert.ok(err instanceof DataLossError, `${err}`);
          assert.equal(err.code, status.DATA_LOSS);
          assert.equal(err.assetId, id);
          return true;
        });
        assert.deepEqual(await c.readAsset(id, { verify: false }), sent, "unchecked, as asked");
      } finally {
        c.close();
        server.stop();
      }
    }
  });
});

describe("credentials without a server", () => {
  test("a token goes over plaintext only to a loopback address", () => {
    assert.throws(() => connection("192.0.2.7:50051", { token: "t" }), /plaintext/);
    assert.throws(() => connection("example.com:50051", { token: "t" }), /plaintext/);
    for (const target of ["127.0.0.1:50051", "localhost:50051", "[::1]:50051", "dns:///localhost:50051", "unix:/tmp/a.sock", "ipv4:127.0.0.1:1,127.0.0.2:2"]) {
      assert.ok(isLoopbackTarget(target), target);
      assert.ok(connection(target, { token: "t" }).options.interceptors?.length === 1, target);
    }
    for (const target of ["192.0.2.7:50051", "[2001:db8::1]:1", "ipv4:127.0.0.1:1,192.0.2.7:2", "127.example.com:1"]) {
      assert.ok(!isLoopbackTarget(target), target);
    }
    // Over TLS a token may go anywhere; a client certificate needs its key.
    assert.ok(connection("192.0.2.7:50051", { tls: true, token: "t" }).credentials._isSecure());
    assert.throws(() => connection("192.0.2.7:50051", { certChain: Buffer.from("x") }), /privateKey/);
  });
});
