// What needs no Asset Service: the retry table and keepalive in effect, resume budgets,
// checks of what a server answered, configuration from the environment, and the README's
// tables.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { type Method, rpcName } from "../src/calls";
import { AssetService, KEEPALIVE_TIMEOUT_MS, KEEPALIVE_TIME_MS } from "../src/client";
import { ENVIRONMENT, configFromEnv } from "../src/env";
import { DataLossError, Status } from "../src/errors";
import {
  AssetServiceService,
  QueryUploadResponse,
  type UploadAssetRequest,
  UploadAssetResponse,
  type UploadHeader,
  WatchAssetResponse,
} from "../src/gen/asset/v1/asset_service";
import { RETRIED } from "../src/retry";
import { EMPTY_MESSAGES, type FakeServer, failingFirst, fakeServer, unavailable } from "./fake";
import { collect, failsWith, within } from "./helpers";

const FAST = { maxAttempts: 5, initialBackoffSeconds: 0.01, maxBackoffSeconds: 0.02, backoffMultiplier: 2 };
const ID = "11111111-2222-4333-8444-555555555555";

/** One call of `method` with empty messages on `client`'s channel: resolves to its status code. */
function callOnce(client: grpc.Client, method: Method): Promise<grpc.status> {
  const def = EMPTY_MESSAGES[method]!;
  const ser = (): Buffer => Buffer.alloc(0);
  const de = (b: Buffer): Buffer => b;
  return new Promise((resolve) => {
    const done = (err: grpc.ServiceError | null): void => resolve(err ? err.code : grpc.status.OK);
    if (def.requestStream) {
      const call = client.makeClientStreamRequest(def.path, ser, de, done);
      call.write({});
      call.end();
    } else if (def.responseStream) {
      const call = client.makeServerStreamRequest(def.path, ser, de, {});
      call.on("data", () => {});
      call.on("error", done);
      call.on("end", () => done(null));
    } else {
      client.makeUnaryRequest(def.path, ser, de, {}, done);
    }
  });
}

describe("retries through the service config", () => {
  const counts = new Map<string, number>();
  let fake: FakeServer;
  let svc: AssetService;
  const methods = Object.keys(AssetServiceService) as Method[];

  before(async () => {
    const handlers = Object.fromEntries(methods.map((m) => [m, failingFirst(m, 1, counts)]));
    fake = await fakeServer(handlers, EMPTY_MESSAGES);
    svc = new AssetService(fake.address, { retry: FAST });
  });

  after(() => {
    svc.close();
    fake.stop();
  });

  test("exactly the safe RPCs of the table are sent again after UNAVAILABLE", async () => {
    for (const method of methods) {
      const code = await callOnce(svc.raw, method);
      const { retried } = RETRIED[method];
      assert.equal(counts.get(method), retried ? 2 : 1, `${rpcName(method)}: attempts`);
      assert.equal(code, retried ? Status.OK : Status.UNAVAILABLE, `${rpcName(method)}: status`);
    }
    assert.ok(methods.some((m) => RETRIED[m].retried) && methods.some((m) => !RETRIED[m].retried));
  });

  test("retry: false sends every call once", async () => {
    const once = new AssetService(fake.address, { retry: false });
    try {
      counts.delete("getAsset");
      assert.equal(await callOnce(once.raw, "getAsset"), Status.UNAVAILABLE);
      assert.equal(counts.get("getAsset"), 1);
    } finally {
      once.close();
    }
  });
});

describe("keepalive", () => {
  /** The options grpc-js's channel was made with (internal: grpc-js keeps them there). */
  function optionsOf(svc: AssetService): grpc.ChannelOptions {
    return (svc.raw.getChannel() as unknown as { internalChannel: { options: grpc.ChannelOptions } }).internalChannel.options;
  }

  test("the channel pings every 30 s while a call is open, 20 s for the answer; channelOptions win", () => {
    const keepalive = (o: grpc.ChannelOptions): unknown[] => [
      o["grpc.keepalive_time_ms"],
      o["grpc.keepalive_timeout_ms"],
      o["grpc.keepalive_permit_without_calls"],
    ];
    const plain = new AssetService("127.0.0.1:1");
    const credentials = new AssetService("127.0.0.1:1", grpc.credentials.createInsecure());
    const own = new AssetService("127.0.0.1:1", { channelOptions: { "grpc.keepalive_time_ms": 120_000, "grpc.keepalive_timeout_ms": 5_000 } });
    try {
      assert.deepEqual(keepalive(optionsOf(plain)), [KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS, 0]);
      assert.deepEqual([KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS], [30_000, 20_000]);
      assert.deepEqual(keepalive(optionsOf(credentials)), [30_000, 20_000, 0]);
      assert.deepEqual(keepalive(optionsOf(own)), [120_000, 5_000, 0]);
    } finally {
      for (const c of [plain, credentials, own]) c.close();
    }
  });
});

describe("what a server answers is checked", () => {
  test("an upload the server stored with another sha256 is a DataLossError", async () => {
    const fake = await fakeServer({
      uploadAsset: (call: grpc.ServerReadableStream<unknown, unknown>, cb: grpc.sendUnaryData<UploadAssetResponse>) => {
        let size = 0;
        call.on("data", (m: { payload?: { $case: string; value: Buffer } }) => {
          if (m.payload?.$case === "chunk") size += m.payload.value.length;
        });
        call.on("end", () => cb(null, UploadAssetResponse.fromPartial({ asset: { id: ID, sizeBytes: size, sha256: "f".repeat(64) } })));
      },
    });
    const svc = new AssetService(fake.address);
    try {
      await assert.rejects(svc.uploadAsset(Buffer.from("some bytes"), { label: "x" }), (err: unknown) => {
        assert.ok(err instanceof DataLossError, String(err));
        assert.equal(err.code, Status.DATA_LOSS);
        assert.equal(err.assetId, ID);
        assert.match(err.message, new RegExp(createHash("sha256").update("some bytes").digest("hex")));
        return true;
      });
    } finally {
      svc.close();
      fake.stop();
    }
  });

  test("a watch that keeps failing with UNAVAILABLE gives up after resumeWithinMs; resume: false at once", async () => {
    let attempts = 0;
    const fake = await fakeServer({
      watchAsset: (call: grpc.ServerWritableStream<unknown, WatchAssetResponse>) => {
        attempts += 1;
        if (attempts === 1) call.write(WatchAssetResponse.fromPartial({ revision: 7 }));
        call.emit("error", unavailable("restarting (injected)"));
      },
    });
    const svc = new AssetService(fake.address, { retry: false });
    try {
      const started = Date.now();
      const events = [];
      await failsWith(
        (async () => {
          for await (const ev of svc.watch({ assetIds: [ID] }, { resumeWithinMs: 600 })) events.push(ev);
        })(),
        Status.UNAVAILABLE,
        "restarting",
      );
      const took = Date.now() - started;
      assert.equal(events.length, 1);
      assert.ok(took >= 600 && took < 5000, `gave up after ${took} ms`);
      assert.ok(attempts >= 4, `${attempts} attempts in 600 ms (waits of 100, 200, 400 ms)`);
      attempts = 1; // no event this time
      await failsWith(collect(svc.watch({ assetIds: [ID] }, { resume: false })), Status.UNAVAILABLE);
      assert.equal(attempts, 2);
    } finally {
      svc.close();
      fake.stop();
    }
  });
});

describe("close()", () => {
  test("ends every call in flight and every wait to resume, and refuses later calls", async () => {
    const fake = await fakeServer({
      watchAsset: (call: grpc.ServerWritableStream<{ assetIds: string[] }, WatchAssetResponse>) => {
        if (call.request.assetIds[0] === "broken") call.emit("error", unavailable("restarting (injected)"));
        else call.write(WatchAssetResponse.fromPartial({ revision: 1 })); // then nothing, ever
      },
    });
    const svc = new AssetService(fake.address, { retry: false });
    try {
      const open = collect(svc.watch({ assetIds: ["open"] }));
      const resuming = collect(svc.watch({ assetIds: ["broken"] }));
      open.catch(() => {});
      resuming.catch(() => {});
      await new Promise((resolve) => setTimeout(resolve, 300));
      const closedAt = Date.now();
      svc.close();
      await failsWith(within(open, 5000, "the open watch still runs"), Status.CANCELLED);
      await failsWith(within(resuming, 5000, "the resuming watch still waits"), Status.CANCELLED);
      assert.ok(Date.now() - closedAt < 1000, `the calls ended ${Date.now() - closedAt} ms after close()`);
      await failsWith(svc.getAsset(ID), Status.CANCELLED, "the client was closed");
      await failsWith(svc.uploadAsset(Buffer.from("x"), { label: "late" }), Status.CANCELLED, "the client was closed");
    } finally {
      fake.stop();
    }
  });
});

describe("resumable uploads, against a fake server", () => {
  const MiB = 1024 * 1024;
  const data = Buffer.alloc(3 * MiB + 5);
  for (let i = 0; i + 4 <= data.length; i += 512) data.writeUInt32BE(i, i);
  const sha = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

  interface Upload {
    held: Buffer;
    done?: boolean;
  }

  /**
   * UploadAsset and QueryUpload as the contract says, with faults: `cut(stream, received)`
   * true ends a stream with UNAVAILABLE, keeping whole MiBs but the last (what was "made
   * durable" is less than what was sent);
   * `lose` drops the answer of a completed upload; `forget` makes QueryUpload NOT_FOUND.
   */
  async function server(faults: { cut?: (stream: number, received: number) => boolean; lose?: boolean; forget?: boolean }) {
    const uploads = new Map<string, Upload>();
    const headers: UploadHeader[] = [];
    let streams = 0;
    const answer = (id: string, u: Upload) => ({ id: `asset-of-${id}`, sizeBytes: u.held.length, sha256: sha(u.held) });
    const fake = await fakeServer({
      uploadAsset: (call: grpc.ServerReadableStream<UploadAssetRequest, UploadAssetResponse>, cb: grpc.sendUnaryData<UploadAssetResponse>) => {
        const stream = ++streams;
        let header: UploadHeader | undefined;
        let u: Upload | undefined;
        let ended = false;
        const end = (err: Partial<grpc.StatusObject> | null, res?: UploadAssetResponse): void => {
          if (ended) return;
          ended = true;
          cb(err, res ?? null);
        };
        call.on("data", (m: UploadAssetRequest) => {
          if (ended) return;
          if (m.payload?.$case === "header") {
            header = m.payload.value;
            headers.push(header);
            u = uploads.get(header.uploadId) ?? { held: Buffer.alloc(0) };
            uploads.set(header.uploadId, u);
            if (header.writeOffset !== u.held.length) {
              end({ code: grpc.status.FAILED_PRECONDITION, details: `resume at committed_bytes=${u.held.length}` });
            }
            return;
          }
          if (m.payload?.$case !== "chunk" || !u) return;
          u.held = Buffer.concat([u.held, m.payload.value]);
          if (faults.cut?.(stream, u.held.length)) {
            u.held = u.held.subarray(0, Math.max(0, Math.floor(u.held.length / MiB) - 1) * MiB);
            end(unavailable("connection reset (injected)"));
          }
        });
        call.on("end", () => {
          if (!u || !header) return end({ code: grpc.status.INVALID_ARGUMENT, details: "no header" });
          u.done = true;
          if (faults.lose && stream === 1) return end(unavailable("the answer was lost (injected)"));
          end(null, UploadAssetResponse.fromPartial({ asset: answer(header.uploadId, u) }));
        });
      },
      queryUpload: (call: grpc.ServerUnaryCall<{ uploadId: string }, QueryUploadResponse>, cb: grpc.sendUnaryData<QueryUploadResponse>) => {
        const u = uploads.get(call.request.uploadId);
        if (!u || faults.forget) return cb({ code: grpc.status.NOT_FOUND, details: "no such upload" }, null);
        cb(null, QueryUploadResponse.fromPartial({ committedBytes: u.held.length, asset: u.done ? answer(call.request.uploadId, u) : undefined }));
      },
    });
    return { fake, headers, uploads, streams: () => streams };
  }

  test("a cut upload resumes from the committed bytes, and the whole is checked", async () => {
    const { fake, headers, uploads } = await server({ cut: (stream, received) => stream === 1 && received >= 1.5 * MiB });
    const svc = new AssetService(fake.address, { retry: false });
    try {
      const sent: number[] = [];
      const asset = await svc.uploadAsset(data, { label: "big", resumable: true, onProgress: (n) => sent.push(n) });
      assert.equal(asset.sha256, sha(data));
      assert.deepEqual(headers.map((h) => h.writeOffset), [0, MiB], `the second stream starts at the committed MiB: ${JSON.stringify(headers)}`);
      assert.equal(headers[0]!.uploadId, headers[1]!.uploadId);
      assert.match(headers[0]!.uploadId, /^[0-9a-f-]{36}$/);
      assert.equal(headers[1]!.label, "big");
      assert.ok(uploads.get(headers[0]!.uploadId)!.held.equals(data));
      // The first chunk of the second stream ends 1 MiB past the committed MiB: no higher than before.
      const back = sent.findIndex((n, i) => i > 0 && n <= sent[i - 1]!);
      assert.equal(sent[back], 2 * MiB, `progress ${sent.join(",")}`);
      assert.equal(sent.at(-1), data.length);
      // By default only 8 MiB and more are resumable, as with the Python client.
      await svc.uploadAsset(data, { label: "small" });
      assert.equal(headers.at(-1)!.uploadId, "");
      await svc.uploadAsset(Buffer.alloc(8 * MiB), { label: "8 MiB" });
      assert.notEqual(headers.at(-1)!.uploadId, "");
    } finally {
      svc.close();
      fake.stop();
    }
  });

  test("a file upload cut twice resumes twice; a given uploadId is used; resumable: false does not resume", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "asset-ts-resume-"));
    const file = path.join(dir, "f.bin");
    writeFileSync(file, data);
    const cutAt = new Map([
      [1, 1.5 * MiB],
      [2, 2.5 * MiB],
    ]);
    const { fake, headers } = await server({ cut: (stream, received) => received >= (cutAt.get(stream) ?? Infinity) });
    const svc = new AssetService(fake.address, { retry: false });
    try {
      const asset = await svc.uploadFile(file, { uploadId: "my-upload-0001" });
      assert.equal(asset.sha256, sha(data));
      assert.deepEqual(headers.map((h) => [h.uploadId, h.writeOffset]), [
        ["my-upload-0001", 0],
        ["my-upload-0001", MiB],
        ["my-upload-0001", 2 * MiB],
      ]);
      cutAt.set(4, 1.5 * MiB);
      await failsWith(svc.uploadAsset(data, { label: "once", resumable: false }), Status.UNAVAILABLE, "injected");
      assert.equal(headers.at(-1)!.uploadId, "", "not resumable: no upload_id");
    } finally {
      svc.close();
      fake.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("an upload whose answer was lost is found complete; one the server forgot starts again", async () => {
    const lost = await server({ lose: true });
    const svc = new AssetService(lost.fake.address, { retry: false });
    try {
      const asset = await svc.uploadAsset(data, { label: "lost answer", resumable: true });
      assert.equal(asset.sha256, sha(data));
      assert.equal(lost.streams(), 1, "nothing sent twice");
    } finally {
      svc.close();
      lost.fake.stop();
    }
    const forgot = await server({ cut: (stream, received) => stream === 1 && received >= 2 * MiB, forget: true });
    const again = new AssetService(forgot.fake.address, { retry: false });
    try {
      assert.equal((await again.uploadAsset(data, { label: "forgotten", resumable: true })).sha256, sha(data));
      assert.deepEqual(forgot.headers.map((h) => h.writeOffset), [0, 0]);
      assert.notEqual(forgot.headers[0]!.uploadId, forgot.headers[1]!.uploadId, "a new upload_id");
    } finally {
      again.close();
      forgot.fake.stop();
    }
  });

  test("a stream is never resumable; bad upload ids are refused before sending", async () => {
    const svc = new AssetService("127.0.0.1:9", { retry: false });
    try {
      await assert.rejects(svc.uploadAsset(Readable.from([data]), { label: "s", resumable: true }), /a stream cannot be read again/);
      await assert.rejects(svc.uploadAsset(data, { uploadId: "short" }), /options\.uploadId must be 8 to 64/);
      await assert.rejects(svc.uploadAsset(data, { uploadId: "a-valid-id", resumable: false }), /uploadId needs a resumable upload/);
    } finally {
      svc.close();
    }
  });
});

describe("configuration from the environment", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), "asset-ts-env-"));
    for (const f of ["ca.pem", "cert.pem", "key.pem"]) writeFileSync(path.join(dir, f), `${f}\n`);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("ASSET_SERVICE_* give the address, TLS files, token and timeout; mistakes name the variable", async () => {
    assert.deepEqual(configFromEnv({}), { address: "127.0.0.1:50051", security: {} });
    const full = configFromEnv({
      ASSET_SERVICE_ADDR: "assets.internal:443",
      ASSET_SERVICE_TOKEN: "tok",
      ASSET_SERVICE_CA_FILE: path.join(dir, "ca.pem"),
      ASSET_SERVICE_CLIENT_CERT: path.join(dir, "cert.pem"),
      ASSET_SERVICE_CLIENT_KEY: path.join(dir, "key.pem"),
      ASSET_SERVICE_TIMEOUT: "2.5",
    });
    assert.equal(full.address, "assets.internal:443");
    assert.equal(full.security.token, "tok");
    assert.equal(full.security.rootCerts?.toString(), "ca.pem\n");
    assert.equal(full.security.certChain?.toString(), "cert.pem\n");
    assert.equal(full.security.privateKey?.toString(), "key.pem\n");
    assert.equal(full.defaultTimeoutMs, 2500);
    assert.equal(configFromEnv({ ASSET_SERVICE_TLS: "yes" }).security.tls, true);
    assert.equal(configFromEnv({ ASSET_SERVICE_TLS: "off" }).security.tls, undefined);

    // A token file is read again before every call; one gone meanwhile leaves the last token.
    const tokenPath = path.join(dir, "token");
    writeFileSync(tokenPath, "first\n");
    const source = configFromEnv({ ASSET_SERVICE_TOKEN_FILE: tokenPath }).security.token as () => Promise<string>;
    assert.equal(await source(), "first");
    writeFileSync(tokenPath, "second");
    assert.equal(await source(), "second");
    rmSync(tokenPath);
    const warned = new Promise<string>((resolve) => process.once("warning", (w) => resolve(w.message)));
    assert.equal(await source(), "second");
    assert.match(await warned, /ASSET_SERVICE_TOKEN_FILE=.*token.*sending the token read before/);

    const refused: [NodeJS.ProcessEnv, RegExp][] = [
      [{ ASSET_SERVICE_CA_FILE: path.join(dir, "nope.pem") }, /ASSET_SERVICE_CA_FILE=.*nope\.pem: cannot read it/],
      [{ ASSET_SERVICE_CLIENT_CERT: path.join(dir, "cert.pem") }, /ASSET_SERVICE_CLIENT_KEY/],
      [{ ASSET_SERVICE_TOKEN: "t", ASSET_SERVICE_TOKEN_FILE: path.join(dir, "ca.pem") }, /both ASSET_SERVICE_TOKEN and ASSET_SERVICE_TOKEN_FILE/],
      [{ ASSET_SERVICE_TOKEN_FILE: path.join(dir, "missing") }, /ASSET_SERVICE_TOKEN_FILE=.*missing: cannot read it/],
      [{ ASSET_SERVICE_TIMEOUT: "0" }, /ASSET_SERVICE_TIMEOUT=0 is not a number of seconds above 0/],
      [{ ASSET_SERVICE_TIMEOUT: "soon" }, /ASSET_SERVICE_TIMEOUT=soon/],
      [{ ASSET_SERVICE_TLS: "maybe" }, /ASSET_SERVICE_TLS=maybe is not a boolean/],
      [{ ASSET_SERVICE_ADDR: "http://127.0.0.1:50051" }, /ASSET_SERVICE_ADDR=http:\/\/127\.0\.0\.1:50051 is a URL.*host:port \(127\.0\.0\.1:50051\)/],
    ];
    for (const [env, message] of refused) assert.throws(() => configFromEnv(env), message);
    // fromEnv: a token over plaintext to a non-loopback address is refused, as by `connection`.
    assert.throws(() => AssetService.fromEnv({ env: { ASSET_SERVICE_ADDR: "192.0.2.7:1", ASSET_SERVICE_TOKEN: "t" } }), /plaintext/);
    AssetService.fromEnv({ env: { ASSET_SERVICE_ADDR: "127.0.0.1:1", ASSET_SERVICE_TOKEN: "t" } }).close();
    // A URL is not a grpc target: refused at once, not retried for seconds as a host name.
    assert.throws(() => new AssetService("HTTPS://assets.internal:443/"), /is a URL.*host:port \(assets\.internal:443\)/);
    new AssetService("dns:///127.0.0.1:1").close();
  });

  test("the README names every variable, every RPC's method and its retry, as the code has them", () => {
    const readme = readFileSync(path.join(__dirname, "..", "..", "README.md"), "utf8");
    for (const name of Object.keys(ENVIRONMENT)) assert.ok(readme.includes(`\`${name}\``), `README: ${name}`);
    for (const [method, { retried }] of Object.entries(RETRIED)) {
      const row = new RegExp(`^\\| ${rpcName(method as Method)} \\| ${retried ? "yes" : "no"} \\|`, "m");
      assert.ok(row.test(readme), `README retry table: no row ${row}`);
      const methodRow = new RegExp(`^\\| ${rpcName(method as Method)} \\| \``, "m");
      assert.ok(methodRow.test(readme), `README methods table: no row ${methodRow}`);
    }
  });
});
