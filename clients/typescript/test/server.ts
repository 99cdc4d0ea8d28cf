// The server under test: $ASSET_SERVICE_ADDR (plus $ASSET_SERVICE_IMPORT_ROOT if it has
// one), or else `python -m asset_service` started here on port 0.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";

export interface TestServer {
  address: string;
  importRoot?: string;
  stop(): Promise<void>;
}

const LISTENING = /asset-service listening on (\S+:\d+)/;

function repoRoot(): string {
  let dir = __dirname;
  while (!existsSync(path.join(dir, "pyproject.toml"))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no pyproject.toml above ${__dirname}`);
    dir = parent;
  }
  return dir;
}

export async function testServer(): Promise<TestServer> {
  const address = process.env.ASSET_SERVICE_ADDR;
  if (address) {
    return { address, importRoot: process.env.ASSET_SERVICE_IMPORT_ROOT || undefined, stop: async () => {} };
  }
  const repo = repoRoot();
  const python = process.env.ASSET_SERVICE_PYTHON || path.join(repo, ".venv", "bin", "python");
  const dir = mkdtempSync(path.join(tmpdir(), "asset-service-ts-test-"));
  const importRoot = path.join(dir, "worker");
  mkdirSync(importRoot);
  // The server reads ASSET_SERVICE_* variables as settings: pass none.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ASSET_SERVICE_")));
  const child = spawn(
    python,
    [
      "-m", "asset_service",
      "--listen", "127.0.0.1:0",
      "--storage-root", path.join(dir, "data"),
      "--database-url", `sqlite:///${path.join(dir, "assets.db")}`,
      "--import-root", importRoot,
      "--shutdown-grace", "2",
    ],
    { cwd: repo, env, stdio: ["ignore", "ignore", "pipe"] },
  );
  const stop = async (): Promise<void> => {
    await terminate(child);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    return { address: await listeningAddress(child), importRoot, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

function listeningAddress(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error(`asset-service did not start in 30s:\n${log}`)), 30_000);
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (text: string) => {
      log += text; // keep reading, so that the server never blocks on a full pipe
      const m = LISTENING.exec(log);
      if (m?.[1]) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`asset-service exited with ${code}:\n${log}`));
    });
    child.once("error", reject);
  });
}

function terminate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill("SIGKILL"), 15_000);
    child.once("exit", () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill("SIGTERM");
  });
}
