// Runs one task hand-off against an Asset Service and prints the next task's
// manifest path:  node build/examples/orchestrator.js [host:port] [import-root]
// The address (unless given), TLS and the token come from ASSET_SERVICE_* variables
// (README, "Configuration").
import { AssetService } from "../src/client";
import { runExample } from "../src/orchestrator";

async function main(): Promise<void> {
  const svc = AssetService.fromEnv({ address: process.argv[2] });
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
