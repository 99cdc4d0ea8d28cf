// Channel credentials for the Asset Service: TLS (and mTLS) plus a bearer token on every call.
import * as grpc from "@grpc/grpc-js";
import { BlockList, isIP } from "node:net";

/** Returns the bearer token to send; called before every call, so a token can be refreshed. */
export type TokenSource = () => string | Promise<string>;

/** How to reach a server (docs/security.md). No field set: plaintext, no credentials. */
export interface Security {
  /** Use TLS with Node's default root certificates (implied by the fields below). */
  tls?: boolean;
  /** PEM root certificate(s) that must sign the server's certificate: TLS. */
  rootCerts?: Buffer;
  /** PEM client certificate chain and unencrypted PEM key, for a server with --tls-client-ca (mTLS). */
  certChain?: Buffer;
  privateKey?: Buffer;
  /** Sent as `authorization: Bearer <token>`; a function is asked before every call. */
  token?: string | TokenSource;
}

/** What `new AssetServiceClient(address, credentials, options)` needs. */
export interface Connection {
  credentials: grpc.ChannelCredentials;
  options: grpc.ClientOptions;
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet("127.0.0.0", 8, "ipv4");
LOOPBACK.addAddress("::1", "ipv6");

/**
 * Whether a grpc-js target names this host: `localhost`, 127.0.0.0/8, ::1 or a unix socket
 * (with or without a `dns:` / `ipv4:` / `ipv6:` scheme and a port).
 */
export function isLoopbackTarget(target: string): boolean {
  if (/^unix(-abstract)?:/.test(target)) return true;
  const list = /^ipv[46]:(.*)$/.exec(target); // ipv4:a:1,b:2 names several addresses
  const hosts = list ? (list[1] ?? "").split(",") : [target.replace(/^dns:(\/\/[^/]*\/)?/, "")];
  return hosts.every((h) => isLoopbackHost(hostOf(h)));
}

/**
 * Why `address` cannot be a server address, or undefined: a URL (http://, https://), which
 * grpc-js would take for a host name and retry for as long as a call may wait.
 */
export function notAnAddress(address: string): string | undefined {
  const url = /^(https?):\/\/(.*?)\/?$/i.exec(address);
  if (!url) return undefined;
  return `${address} is a URL, not a server address: give host:port (${url[2]}), and for TLS tls: true or rootCerts (ASSET_SERVICE_TLS, ASSET_SERVICE_CA_FILE)`;
}

function hostOf(hostPort: string): string {
  const bracketed = /^\[([^\]]+)\](:\d+)?$/.exec(hostPort);
  if (bracketed) return bracketed[1] ?? "";
  if (hostPort.split(":").length > 2) return hostPort; // a bare IPv6 address, no port
  return hostPort.replace(/:\d*$/, "");
}

function isLoopbackHost(host: string): boolean {
  if (host.toLowerCase() === "localhost") return true;
  const family = isIP(host);
  return family !== 0 && LOOPBACK.check(host, family === 4 ? "ipv4" : "ipv6");
}

function tokenSource(token: string | TokenSource): () => Promise<string> {
  return async () => {
    const value = typeof token === "string" ? token : await token();
    if (!value) throw new Error("the token source returned an empty token");
    return value;
  };
}

function failure(err: unknown): Error & { code: grpc.status } {
  const message = err instanceof Error ? err.message : String(err);
  return Object.assign(new Error(`bearer token: ${message}`), { code: grpc.status.UNAVAILABLE });
}

/**
 * Credentials and client options for `address`. With TLS, the token travels as call
 * credentials composed with `ChannelCredentials.createSsl`. Without TLS it is sent, like the
 * server accepts it, only to a loopback address (checked here, by name: a host name other
 * than `localhost` is refused), through an interceptor, since grpc-js does not compose
 * call credentials with insecure ones.
 */
export function connection(address: string, security: Security = {}): Connection {
  const { rootCerts, certChain, privateKey, token } = security;
  if (Boolean(certChain) !== Boolean(privateKey)) {
    throw new Error("a client certificate needs both certChain and privateKey");
  }
  const tls = Boolean(security.tls || rootCerts || certChain);
  if (token === undefined) {
    return {
      credentials: tls
        ? grpc.credentials.createSsl(rootCerts ?? null, privateKey ?? null, certChain ?? null)
        : grpc.credentials.createInsecure(),
      options: {},
    };
  }
  const next = tokenSource(token);
  if (tls) {
    const perCall = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
      next().then(
        (value) => {
          const md = new grpc.Metadata();
          md.set("authorization", `Bearer ${value}`);
          callback(null, md);
        },
        (err: unknown) => callback(failure(err)),
      );
    });
    const channel = grpc.credentials.createSsl(rootCerts ?? null, privateKey ?? null, certChain ?? null);
    return { credentials: grpc.credentials.combineChannelCredentials(channel, perCall), options: {} };
  }
  if (!isLoopbackTarget(address)) {
    throw new Error(
      `refusing to send a bearer token over plaintext to ${address}: use TLS (rootCerts or tls: true), or a loopback address`,
    );
  }
  const bearer: grpc.Interceptor = (options, nextCall) => {
    const inner = nextCall(options);
    return new grpc.InterceptingCall(inner, {
      start(metadata, listener, start) {
        next().then(
          (value) => {
            metadata.set("authorization", `Bearer ${value}`);
            start(metadata, listener);
          },
          (err: unknown) => {
            const { message, code } = failure(err);
            inner.cancelWithStatus(grpc.status.CANCELLED, message); // never started: nothing is sent
            listener.onReceiveStatus({ code, details: message, metadata: new grpc.Metadata() });
          },
        );
      },
    });
  };
  return { credentials: grpc.credentials.createInsecure(), options: { interceptors: [bearer] } };
}
