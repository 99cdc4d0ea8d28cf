// A worker whose calls all fail, one way or another, and which never calls close(): it
// must still exit by itself (resilience.test.ts runs it). ASSET_SERVICE_* say where the
// server is; argv[2] is an address where nothing listens.
import { AssetService, AssetType } from "../../src";

function report(what: string, err: unknown): void {
  const e = err as { name?: string; code?: unknown; message?: string };
  console.log(`${what}: ${e.name} ${String(e.code)} ${e.message}`);
}

async function main(): Promise<void> {
  const svc = AssetService.fromEnv();
  await svc.getAsset({ assetId: "x" } as never).catch((e) => report("object as id", e));
  await svc.createPendingAsset({ taskId: 7 } as never).catch((e) => report("number as task", e));
  await svc.getAsset("00000000-0000-4000-8000-000000000000").catch((e) => report("unknown id", e));
  async function* broken(): AsyncGenerator<Buffer> {
    yield Buffer.alloc(1024 * 1024, 7);
    throw new Error("disk on fire");
  }
  await svc.uploadAsset(broken(), { label: "broken" }).catch((e) => report("broken source", e));

  const p = await svc.createPendingAsset({ taskId: `exit-${process.pid}`, label: "w", type: AssetType.ASSET_TYPE_VALUE });
  for await (const ev of svc.watch({ assetIds: [p.id], follow: true })) {
    console.log(`watch: event ${ev.type}, then break`);
    break;
  }
  const big = await svc.uploadAsset(Buffer.alloc(4 * 1024 * 1024, 1), { label: "big" });
  const stream = svc.readAssetStream(big.id);
  for await (const chunk of stream) {
    console.log(`read: ${(chunk as Buffer).length > 0}, then destroyed`);
    break; // destroys the stream, which cancels the call
  }
  const nowhere = new AssetService(process.argv[2] ?? "127.0.0.1:9");
  await nowhere.createPendingAsset({ taskId: "t", label: "x" }).catch((e) => report("no server", e));
  await nowhere.getAsset(p.id, { timeoutMs: 300 }).catch((e) => report("no server, retried", e));
  console.log("done, without close()");
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
