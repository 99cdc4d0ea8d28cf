// Where to connect and how, from ASSET_SERVICE_* variables (the same names as the Python and Go clients).
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";

import { type Security, type TokenSource, notAnAddress } from "./security";

/** The server when ASSET_SERVICE_ADDR is not set: the server's own default --listen. */
export const DEFAULT_ADDRESS = "127.0.0.1:50051";

/** The variables `fromEnv` reads, and what each one does. */
export const ENVIRONMENT = {
  ASSET_SERVICE_ADDR: `host:port of the server (default ${DEFAULT_ADDRESS})`,
  ASSET_SERVICE_TOKEN: "bearer token sent with every call",
  ASSET_SERVICE_TOKEN_FILE: "a file holding the token, read again before every call (a token that gets refreshed)",
  ASSET_SERVICE_TLS: "1/true/yes/on: TLS with Node's default roots (as tls: true)",
  ASSET_SERVICE_CA_FILE: "PEM root CA(s) that signed the server's certificate: TLS",
  ASSET_SERVICE_CLIENT_CERT: "PEM client certificate chain (mTLS; with ASSET_SERVICE_CLIENT_KEY)",
  ASSET_SERVICE_CLIENT_KEY: "its unencrypted PEM private key",
  ASSET_SERVICE_TIMEOUT: "seconds: the deadline of a unary call that sets none (default 30)",
} as const;

/** An address, the security options and the default deadline, as `new AssetService` takes them. */
export interface EnvConfig {
  address: string;
  security: Security;
  /** From ASSET_SERVICE_TIMEOUT; undefined: the client's default. */
  defaultTimeoutMs?: number;
}

function file(env: NodeJS.ProcessEnv, name: string): Buffer | undefined {
  const p = env[name]?.trim();
  if (!p) return undefined;
  try {
    return readFileSync(p);
  } catch (err) {
    throw new Error(`${name}=${p}: cannot read it: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * A token read from `path` before every call, so that a refreshed file is used at once. A
 * file that cannot be read later (e.g. while it is being replaced) leaves the last token in
 * use, with a process warning; a missing or empty file is refused here, at once.
 */
export function tokenFile(path: string, variable = "token file"): TokenSource {
  const parse = (text: string): string => {
    const token = text.trim();
    if (!token) throw new Error(`${variable}=${path}: the file is empty`);
    return token;
  };
  let last: string;
  try {
    last = parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new Error(`${variable}=${path}: cannot read it: ${(err as Error).message}`, { cause: err });
  }
  return async () => {
    try {
      last = parse(await readFile(path, "utf8"));
    } catch (err) {
      process.emitWarning(`${variable}=${path}: ${(err as Error).message}; sending the token read before`);
    }
    return last;
  };
}

// The words a boolean variable takes (the Go client's and the `asset` CLI's).
const TRUE = new Set(["1", "true", "t", "yes", "y", "on"]);
const FALSE = new Set(["0", "false", "f", "no", "n", "off"]);

function flag(env: NodeJS.ProcessEnv, name: string): boolean {
  const text = env[name]?.trim();
  if (!text || FALSE.has(text.toLowerCase())) return false;
  if (TRUE.has(text.toLowerCase())) return true;
  throw new Error(`${name}=${text} is not a boolean (1/0, true/false, yes/no, on/off)`);
}

function timeout(env: NodeJS.ProcessEnv): number | undefined {
  const text = env.ASSET_SERVICE_TIMEOUT?.trim();
  if (!text) return undefined;
  const seconds = Number(text);
  if (!Number.isFinite(seconds) || seconds <= 0) {
    throw new RangeError(`ASSET_SERVICE_TIMEOUT=${text} is not a number of seconds above 0`);
  }
  return seconds * 1000;
}

/**
 * The address, security and default deadline that `env` (default: process.env) describes;
 * see ENVIRONMENT. Throws, naming the variable, for a file that cannot be read, a
 * certificate without its key, a token given twice, or a timeout that is not above 0.
 */
export function configFromEnv(env: NodeJS.ProcessEnv = process.env): EnvConfig {
  const address = env.ASSET_SERVICE_ADDR?.trim() || DEFAULT_ADDRESS;
  const wrong = notAnAddress(address);
  if (wrong) throw new RangeError(`ASSET_SERVICE_ADDR=${wrong}`);
  const rootCerts = file(env, "ASSET_SERVICE_CA_FILE");
  const certChain = file(env, "ASSET_SERVICE_CLIENT_CERT");
  const privateKey = file(env, "ASSET_SERVICE_CLIENT_KEY");
  if (Boolean(certChain) !== Boolean(privateKey)) {
    throw new Error("ASSET_SERVICE_CLIENT_CERT and ASSET_SERVICE_CLIENT_KEY go together: set both or neither");
  }
  const security: Security = {};
  if (flag(env, "ASSET_SERVICE_TLS")) security.tls = true;
  if (rootCerts) security.rootCerts = rootCerts;
  if (certChain && privateKey) Object.assign(security, { certChain, privateKey });
  const token = env.ASSET_SERVICE_TOKEN?.trim();
  const tokenPath = env.ASSET_SERVICE_TOKEN_FILE?.trim();
  if (token && tokenPath) {
    throw new Error("both ASSET_SERVICE_TOKEN and ASSET_SERVICE_TOKEN_FILE are set: unset one of them");
  }
  if (token) security.token = token;
  if (tokenPath) security.token = tokenFile(tokenPath, "ASSET_SERVICE_TOKEN_FILE");
  const defaultTimeoutMs = timeout(env);
  return defaultTimeoutMs === undefined ? { address, security } : { address, security, defaultTimeoutMs };
}
