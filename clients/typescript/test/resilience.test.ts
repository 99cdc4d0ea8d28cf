// A server that stops and comes back: retried calls, a watch and a read that resume. And a
// process whose calls fail exits by itself. Each test runs its own server (server.ts).
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { createServer } from "node:net";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import { AssetService } from "../src/client";
import { Status } from "../src/errors";
import { keepalive } from "../src/keepalive";
import { AssetStatus, AssetType, type WatchAssetResponse } from "../src/gen/asset/v1/asset_service";
import { textValue } from "../src/values";
import { failsWith, sleep, within } from "./helpers";
import { tcpProxy } from "./proxy";
import { type OwnServer, ownServer } from "./server";

const { ASSET_STATUS_PENDING: PENDING, ASSET_STATUS_AVAILABLE: AVAILABLE, ASSET_STATUS_FAILED: FAILED } = AssetStatus;

/** A port of 127.0.0.1 where nothing listens (bound, then closed). */
async function deadPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address() as { port: number };
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

describe("across server restarts", () => {
  let server: OwnServer;
  let svc: AssetService;
  const opened: AssetService[] = [];

  function open(options: ConstructorParameters<typeof AssetService>[1] = {}): AssetService {
    const c = new AssetService(server.address, { token: server.token, ...options });
    opened.push(c);
    return c;
  }

  before(async () => {
    server = await ownServer();
    svc = open();
  });

  after(async () => {
    for (const c of opened) c.close();
    await server?.stop();
  });

  test("a safe call made while the server is down succeeds once it is back; a creating one is not retried", async () => {
    const a = await svc.createValueAsset({ label: "kept", value: textValue("kept") });
    await server.halt();
    // The server is down: without retries a read fails at once.
    await failsWith(open({ retry: false }).getAsset(a.id), Status.UNAVAILABLE);
    const read = svc.getAsset(a.id);
    read.catch(() => {}); // awaited below
    await failsWith(svc.createValueAsset({ label: "lost", value: textValue("x") }), Status.UNAVAILABLE);
    await sleep(300);
    await server.start();
    const got = await within(read, 15_000, "the retried GetAsset still runs");
    assert.equal(got.id, a.id);
  });

  test("a watch resumes after the server is killed, from its last revision: nothing missed, nothing twice", async () => {
    const task = `resume-${Date.now()}`;
    const out = { taskId: task, type: AssetType.ASSET_TYPE_VALUE };
    const [p1, p2] = [await svc.createPendingAsset({ ...out, label: "a" }), await svc.createPendingAsset({ ...out, label: "b" })];
    const events: WatchAssetResponse[] = [];
    let snapshots!: () => void;
    const twoSnapshots = new Promise<void>((resolve) => (snapshots = resolve));
    const watching = (async () => {
      for await (const ev of svc.watch({ assetIds: [p1!.id, p2!.id] })) {
        events.push(ev);
        if (events.length === 2) snapshots();
      }
    })();
    watching.catch(() => {}); // awaited below
    // Its snapshot must have come: before any message the channel's retries would take it.
    let started!: () => void;
    const noResumeStarted = new Promise<void>((resolve) => (started = resolve));
    const noResume = failsWith(
      (async () => {
        for await (const ev of open().watch({ assetIds: [p1!.id] }, { resume: false })) started(), void ev;
      })(),
      Status.UNAVAILABLE,
    );
    await within(Promise.all([twoSnapshots, noResumeStarted]), 10_000, "no snapshot");
    await server.kill();
    await noResume;
    await server.start();
    await svc.getAsset(p1!.id); // retried until the channel is back: the next calls are not retried
    await svc.fulfillAsset({ assetId: p1!.id, content: { $case: "value", value: textValue("done") } });
    await svc.failAsset(p2!.id, "gave up");
    await within(watching, 20_000, "the watch did not end");

    const statuses = (id: string): AssetStatus[] => events.filter((e) => e.asset?.id === id).map((e) => e.asset!.status);
    assert.deepEqual(statuses(p1!.id), [PENDING, AVAILABLE], "events of a");
    assert.deepEqual(statuses(p2!.id), [PENDING, FAILED], "events of b");
    const revisions = events.map((e) => e.revision);
    assert.deepEqual(revisions.slice(2), [...revisions.slice(2)].sort((x, y) => x - y), "in revision order after the snapshot");
  });

  test("a whole read cut by a killed server goes on from the byte it reached, checked", async () => {
    const bytes = Buffer.alloc(24 * 1024 * 1024);
    for (let i = 0; i + 4 <= bytes.length; i += 1024) bytes.writeUInt32BE(i, i);
    const a = await svc.uploadAsset(bytes, { label: "big.bin" });
    const stream = svc.readAssetStream(a.id);
    const iterator = stream[Symbol.asyncIterator]();
    const first = await iterator.next();
    assert.ok(!first.done);
    await server.kill();
    await server.start();
    const chunks = [first.value as Buffer];
    for (let r = await iterator.next(); !r.done; r = await iterator.next()) chunks.push(r.value as Buffer);
    const got = Buffer.concat(chunks);
    assert.equal(got.length, bytes.length);
    assert.equal(createHash("sha256").update(got).digest("hex"), a.sha256);
  });

  test("a resumable upload cut by a dropped connection goes on from what the server holds", async () => {
    const MiB = 1024 * 1024;
    const bytes = Buffer.alloc(24 * MiB);
    for (let i = 0; i + 4 <= bytes.length; i += 4096) bytes.writeUInt32BE(i, i);
    const proxy = await tcpProxy(server.address);
    const direct = open();
    const client = new AssetService(proxy.address, { token: server.token });
    opened.push(client);
    const sent: number[] = [];
    try {
      const cut = proxy.cutAfter(8 * MiB).then(() => sent.push(-1));
      const asset = await within(
        client.uploadAsset(bytes, { label: "resumed.bin", onProgress: (n) => sent.push(n) }),
        60_000,
        "the upload still runs",
      );
      await cut;
      assert.equal(asset.sizeBytes, bytes.length);
      assert.equal(asset.sha256, createHash("sha256").update(bytes).digest("hex"));
      // Progress is what grpc-js took; each new stream starts again lower. A stream sent
      // before the server noticed the cut may start from an older committed_bytes (even
      // 0) and be refused ("resume at ..."); the last stream, the one that completed,
      // starts past 0.
      const progress = sent.filter((n) => n >= 0);
      const restarts = progress.map((n, i) => (i > 0 && n <= progress[i - 1]! ? i : -1)).filter((i) => i > 0);
      const resumedAt = restarts.at(-1) ?? -1;
      const from = progress[resumedAt]! - MiB; // its first chunk's start
      assert.ok(sent.includes(-1), "the connection was not cut");
      assert.ok(resumedAt > 0 && from > 0 && from < 24 * MiB, `resumed from ${from}: ${sent.join(",")}`);
      assert.ok((await direct.readAsset(asset.id)).equals(bytes));
    } finally {
      await proxy.close();
    }
  });

  test("a watch whose connection goes silent (no FIN, no RST) resumes once keepalive finds it dead", async () => {
    // The shortest keepalive the server allows: it answers pings less than 10 s apart with
    // GOAWAY, which would end the stream for another reason.
    const saved = { ...keepalive };
    Object.assign(keepalive, { timeMs: 11_000, timeoutMs: 2_000 });
    const proxy = await tcpProxy(server.address);
    const client = new AssetService(proxy.address, { token: server.token });
    opened.push(client);
    Object.assign(keepalive, saved); // the channel has its options
    try {
      const p = await svc.createPendingAsset({ taskId: `silent-${Date.now()}`, label: "out", type: AssetType.ASSET_TYPE_VALUE });
      const events = client.watch({ assetIds: [p.id] })[Symbol.asyncIterator]();
      const first = await within(events.next(), 10_000, "no snapshot");
      assert.equal(first.value?.asset?.status, PENDING);
      assert.equal(proxy.blackhole(), 1, "the watch's connection, and only it");
      const silenced = Date.now();
      await svc.fulfillAsset({ assetId: p.id, content: { $case: "value", value: textValue("while the line was dead") } });
      const second = await within(events.next(), 38_000, "no event since the connection went silent");
      assert.equal(second.value?.asset?.status, AVAILABLE);
      assert.deepEqual(second.value?.asset?.value?.kind, { $case: "text", value: "while the line was dead" });
      assert.ok(Date.now() - silenced >= 11_000, "the change came before keepalive could have noticed");
      assert.ok((await within(events.next(), 5_000, "the watch did not end")).done);
    } finally {
      await proxy.close();
    }
  });

  test("a process whose calls fail exits by itself, without close()", async () => {
    const script = path.join(__dirname, "children", "failing-calls.js");
    const env = { ...process.env, ASSET_SERVICE_ADDR: server.address, ASSET_SERVICE_TOKEN: server.token };
    const started = Date.now();
    const { stdout } = await promisify(execFile)(process.execPath, [script, `127.0.0.1:${await deadPort()}`], {
      env,
      timeout: 30_000,
      killSignal: "SIGKILL",
    });
    const took = Date.now() - started;
    const lines = stdout.trim().split("\n");
    assert.deepEqual(
      lines.map((l) => l.split(":")[0]),
      ["object as id", "number as task", "unknown id", "broken source", "watch", "read", "no server", "no server, retried", "done, without close()"],
      stdout,
    );
    assert.match(lines[0]!, /TypeError .*assetId must be a string/);
    assert.match(lines[1]!, /TypeError .*request\.taskId must be a string/);
    assert.match(lines[2]!, /AssetServiceError 5 GetAsset: NOT_FOUND/);
    assert.match(lines[3]!, /disk on fire/);
    assert.match(lines[6]!, /AssetServiceError 14 CreatePendingAsset: UNAVAILABLE/);
    assert.match(lines[7]!, /AssetServiceError 4 GetAsset: DEADLINE_EXCEEDED/);
    assert.ok(took < 20_000, `the process took ${took} ms to exit`);
  });
});
