// Runs one task hand-off against an Asset Service and prints the next task's
// manifest path:  node build/examples/orchestrator.js [host:port] [import-root]
// TLS and credentials come from the environment: ASSET_SERVICE_CA_FILE (PEM root CA),
// ASSET_SERVICE_CLIENT_CERT + ASSET_SERVICE_CLIENT_KEY (mTLS), ASSET_SERVICE_TOKEN.
import { readFileSync } from "node:fs";

import { AssetService } from "../src/client";
import { runExample } from "../src/orchestrator";
import type { Security } from "../src/security";

function securityFromEnv(env: NodeJS.ProcessEnv): Security {
  const file = (name: string): Buffer | undefined => (env[name] ? readFileSync(env[name]) : undefined);
  return {
    rootCerts: file("ASSET_SERVICE_CA_FILE"),
    certChain: file("ASSET_SERVICE_CLIENT_CERT"),
    privateKey: file("ASSET_SERVICE_CLIENT_KEY"),
    token: env.ASSET_SERVICE_TOKEN || undefined,
  };
}

async function main(): Promise<void> {
  const address = process.argv[2] ?? process.env.ASSET_SERVICE_ADDR ?? "127.0.0.1:50051";
  const svc = new AssetService(address, securityFromEnv(process.env));
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
