// The server under test: $ASSET_SERVICE_ADDR (plus $ASSET_SERVICE_IMPORT_ROOT if it has
// one), or else `python -m asset_service` started here on port 0 (plaintext on loopback,
// with a tokens file and a task-token secret).
//
// How to reach $ASSET_SERVICE_ADDR: $ASSET_SERVICE_CA_FILE (PEM root CA: TLS),
// $ASSET_SERVICE_CLIENT_CERT and $ASSET_SERVICE_CLIENT_KEY (mTLS; the server must map the
// certificate to the reader role), $ASSET_SERVICE_TOKEN (a bearer token with the
// orchestrator role; the server must also have --token-secret-file),
// $ASSET_SERVICE_ADMIN_TOKEN (test only: one with the admin role, for DeleteAsset).
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";

import type { Security } from "../src/security";

export interface TestServer {
  address: string;
  importRoot?: string;
  /** TLS settings (and the client certificate), without a token. */
  transport: Security;
  /** A token with the orchestrator role, if the server takes tokens. */
  token?: string;
  /** A token with the admin role (DeleteAsset), if the test was given one. */
  adminToken?: string;
  /** Whether `transport` presents a client certificate (mapped to the reader role). */
  clientCertificate: boolean;
  stop(): Promise<void>;
}

function transportFromEnv(): Security {
  const file = (name: string): Buffer | undefined => {
    const p = process.env[name];
    return p ? readFileSync(p) : undefined;
  };
  return {
    rootCerts: file("ASSET_SERVICE_CA_FILE"),
    certChain: file("ASSET_SERVICE_CLIENT_CERT"),
    privateKey: file("ASSET_SERVICE_CLIENT_KEY"),
  };
}

/** A tokens file granting a fresh token the orchestrator role, and a task-token secret. */
function writeSecurityFiles(dir: string): { token: string; tokensFile: string; secretFile: string } {
  const token = randomBytes(32).toString("base64url"); // the shape of secrets.token_urlsafe(32)
  const sha256 = createHash("sha256").update(token, "utf8").digest("hex");
  const tokensFile = path.join(dir, "tokens.toml");
  writeFileSync(tokensFile, `[[tokens]]\nprincipal = "ts-test"\nroles = ["orchestrator"]\nsha256 = "${sha256}"\n`, {
    mode: 0o600,
  });
  const secretFile = path.join(dir, "task-secret");
  writeFileSync(secretFile, `${randomBytes(48).toString("hex")}\n`, { mode: 0o600 });
  return { token, tokensFile, secretFile };
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
    const transport = transportFromEnv();
    return {
      address,
      importRoot: process.env.ASSET_SERVICE_IMPORT_ROOT || undefined,
      transport,
      token: process.env.ASSET_SERVICE_TOKEN || undefined,
      adminToken: process.env.ASSET_SERVICE_ADMIN_TOKEN || undefined,
      clientCertificate: transport.certChain !== undefined,
      stop: async () => {},
    };
  }
  const own = await ownServer();
  return { ...own, transport: {}, adminToken: undefined, clientCertificate: false };
}

/** A server this process started: it can be stopped, killed and started again on its port. */
export interface OwnServer {
  address: string;
  importRoot: string;
  /** A token with the orchestrator role (the server has a tokens file and a task-token secret). */
  token: string;
  /** Starts it again (after stop or kill) on the same port, storage and database. */
  start(): Promise<void>;
  /** SIGTERM (the server's graceful stop), SIGKILL after 15 s; resolves once it exited. */
  halt(): Promise<void>;
  /** SIGKILL: nothing of the server's shutdown runs. */
  kill(): Promise<void>;
  /** Stops it and removes its folder. */
  stop(): Promise<void>;
}

/**
 * `python -m asset_service` on a free port of 127.0.0.1, in a temporary folder, plaintext,
 * with a tokens file (one orchestrator token) unless `tokens` is false.
 */
export async function ownServer(tokens = true): Promise<OwnServer> {
  const repo = repoRoot();
  const python = process.env.ASSET_SERVICE_PYTHON || path.join(repo, ".venv", "bin", "python");
  const dir = mkdtempSync(path.join(tmpdir(), "asset-service-ts-test-"));
  const importRoot = path.join(dir, "worker");
  mkdirSync(importRoot);
  const { token, tokensFile, secretFile } = writeSecurityFiles(dir);
  // The server reads ASSET_SERVICE_* variables as settings: pass none.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("ASSET_SERVICE_")));
  let listen = "127.0.0.1:0";
  let child: ChildProcess | undefined;
  const start = async (): Promise<void> => {
    child = spawn(
      python,
      [
        "-m", "asset_service",
        "--listen", listen,
        "--storage-root", path.join(dir, "data"),
        "--database-url", `sqlite:///${path.join(dir, "assets.db")}`,
        "--import-root", importRoot,
        ...(tokens ? ["--tokens-file", tokensFile, "--token-secret-file", secretFile] : []),
        "--shutdown-grace", "2",
        "--lease-check-interval", "0.2", // a lease's expiry is seen within 0.2 s
      ],
      { cwd: repo, env, stdio: ["ignore", "ignore", "pipe"] },
    );
    listen = await listeningAddress(child); // the same port from now on
  };
  const halt = async (): Promise<void> => {
    if (child) await terminate(child);
  };
  const kill = async (): Promise<void> => {
    if (child) await terminate(child, "SIGKILL");
  };
  const stop = async (): Promise<void> => {
    await halt();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await start();
  } catch (err) {
    await stop();
    throw err;
  }
  return { address: listen, importRoot, token, start, halt, kill, stop };
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

function terminate(child: ChildProcess, signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill("SIGKILL"), 15_000);
    child.once("exit", () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill(signal);
  });
}
