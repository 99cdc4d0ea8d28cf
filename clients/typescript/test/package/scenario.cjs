// An orchestrator and a worker from plain JavaScript, with the package as npm installs it
// (tests/e2e/test_clients_go_ts.py copies this file into a scratch project). Where the
// server is and how to reach it comes from ASSET_SERVICE_* variables.
"use strict";
const { createHash } = require("node:crypto");
const { AssetService, AssetServiceError, AssetStatus, AssetType, Status, WatchEventType } = require("@asset-service/client");

async function main() {
  const orchestrator = AssetService.fromEnv();
  const task = `pack-${process.pid}-${Date.now()}`;
  const promised = await orchestrator.createPendingAsset({ taskId: task, label: "report.bin", type: AssetType.ASSET_TYPE_FILE });
  const { token } = await orchestrator.mintTaskToken(task, [], 300);
  const worker = AssetService.fromEnv({ token });
  const bytes = Buffer.from(`the report of ${task}\n`.repeat(50_000));
  try {
    const statuses = [];
    const watching = (async () => {
      for await (const ev of orchestrator.watch({ assetIds: [promised.id] })) {
        statuses.push(AssetStatus[ev.asset.status]);
        if (ev.type === WatchEventType.WATCH_EVENT_TYPE_SNAPSHOT) {
          await worker.uploadAsset(bytes, { pendingAssetId: promised.id });
        }
      }
    })();
    await watching;
    const manifest = await orchestrator.getManifest({ report: promised.id }, { task: "next" });
    const back = await worker.readAsset(promised.id);
    let denied = "";
    try {
      await worker.createPendingAsset({ taskId: task, label: "more" });
    } catch (err) {
      denied = err instanceof AssetServiceError && err.code === Status.PERMISSION_DENIED ? "PERMISSION_DENIED" : String(err);
    }
    let typeError = "";
    try {
      await orchestrator.getAsset({ assetId: promised.id });
    } catch (err) {
      typeError = `${err.name}: ${err.message}`;
    }
    console.log(
      JSON.stringify({
        statuses,
        manifestEntries: Object.keys(manifest.entries),
        bytesBack: back.equals(bytes),
        sha256: (await orchestrator.getAsset(promised.id)).sha256 === createHash("sha256").update(bytes).digest("hex"),
        denied,
        typeError,
      }),
    );
  } finally {
    worker.close();
    orchestrator.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
