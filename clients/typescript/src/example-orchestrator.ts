// Runs one task hand-off against an Asset Service and prints the next task's
// manifest path:  node dist/src/example-orchestrator.js [host:port] [import-root]
import { AssetService } from "./client";
import { runExample } from "./orchestrator";

async function main(): Promise<void> {
  const address = process.argv[2] ?? process.env.ASSET_SERVICE_ADDR ?? "127.0.0.1:50051";
  const svc = new AssetService(address);
  try {
    const res = await runExample(svc, {
      taskId: `transcribe-${Date.now()}`,
      nextTaskId: "summarise",
      importRoot: process.argv[3],
      log: (line) => console.error(line),
    });
    console.log(res.manifest.manifestPath);
  } finally {
    svc.close();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
