// Where to connect and how, from ASSET_SERVICE_* variables (the same names as the Python and Go clients).
import { readFileSync } from "node:fs";

import type { Security } from "./security";

/** The server when ASSET_SERVICE_ADDR is not set: the server's own default --listen. */
export const DEFAULT_ADDRESS = "127.0.0.1:50051";

/** The variables `fromEnv` reads, and what each one does. */
export const ENVIRONMENT = {
  ASSET_SERVICE_ADDR: `host:port of the server (default ${DEFAULT_ADDRESS})`,
  ASSET_SERVICE_TOKEN: "bearer token sent with every call",
  ASSET_SERVICE_CA_FILE: "PEM root CA(s) that signed the server's certificate: TLS",
  ASSET_SERVICE_CLIENT_CERT: "PEM client certificate chain (mTLS; with ASSET_SERVICE_CLIENT_KEY)",
  ASSET_SERVICE_CLIENT_KEY: "its unencrypted PEM private key",
  ASSET_SERVICE_TLS: "1/true: TLS with Node's default roots (implied by the CA file or a client certificate); 0/false: plaintext",
} as const;

/** An address and the security options, as `new AssetService(address, security)` takes them. */
export interface EnvConfig {
  address: string;
  security: Security;
}

function flag(env: NodeJS.ProcessEnv, name: string): boolean | undefined {
  const raw = env[name]?.trim().toLowerCase();
  if (!raw) return undefined;
  if (["1", "true", "yes", "on"].includes(raw)) return true;
  if (["0", "false", "no", "off"].includes(raw)) return false;
  throw new RangeError(`${name}=${env[name]} is neither true (1, true, yes, on) nor false (0, false, no, off)`);
}

function file(env: NodeJS.ProcessEnv, name: string): Buffer | undefined {
  const p = env[name];
  if (!p) return undefined;
  try {
    return readFileSync(p);
  } catch (err) {
    throw new Error(`${name}=${p}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * The address and security that `env` (default: process.env) describes; see ENVIRONMENT.
 * Throws, naming the variable, for a file that cannot be read, a certificate without its
 * key, or ASSET_SERVICE_TLS=0 beside TLS files.
 */
export function configFromEnv(env: NodeJS.ProcessEnv = process.env): EnvConfig {
  const address = env.ASSET_SERVICE_ADDR?.trim() || DEFAULT_ADDRESS;
  const rootCerts = file(env, "ASSET_SERVICE_CA_FILE");
  const certChain = file(env, "ASSET_SERVICE_CLIENT_CERT");
  const privateKey = file(env, "ASSET_SERVICE_CLIENT_KEY");
  if (Boolean(certChain) !== Boolean(privateKey)) {
    throw new Error("ASSET_SERVICE_CLIENT_CERT and ASSET_SERVICE_CLIENT_KEY go together: set both or neither");
  }
  const tls = flag(env, "ASSET_SERVICE_TLS");
  if (tls === false && (rootCerts || certChain)) {
    throw new Error("ASSET_SERVICE_TLS=0 but ASSET_SERVICE_CA_FILE or ASSET_SERVICE_CLIENT_CERT asks for TLS");
  }
  const security: Security = {};
  if (tls) security.tls = true;
  if (rootCerts) security.rootCerts = rootCerts;
  if (certChain && privateKey) Object.assign(security, { certChain, privateKey });
  const token = env.ASSET_SERVICE_TOKEN?.trim();
  if (token) security.token = token;
  return { address, security };
}
