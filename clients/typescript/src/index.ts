export * from "./gen/asset/v1/asset_service";
export { AssetService, DEFAULT_TIMEOUT_MS, KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS, taskTokenSource } from "./client";
export type {
  ClientOptions,
  ListFilter,
  ManifestOptions,
  RegisterFileOptions,
  ScrubOptions,
  TaskToken,
  UploadOptions,
  UploadSource,
} from "./client";
export type { CallOptions } from "./calls";
export { DEFAULT_ADDRESS, ENVIRONMENT, configFromEnv, tokenFile } from "./env";
export type { EnvConfig } from "./env";
export { AssetServiceError, DataLossError, Status } from "./errors";
export type { PreconditionViolation, RpcStatus, StatusDetail } from "./errors";
export { keepLease } from "./lease";
export type { LeaseKeeper } from "./lease";
export type { TaskTokenMinter } from "./tokens";
export type { ReadOptions } from "./read";
export type { ResumeOptions } from "./resume";
export { DEFAULT_RETRY_POLICY, RETRIED } from "./retry";
export type { RetryPolicy } from "./retry";
export { connection, isLoopbackTarget } from "./security";
export type { Connection, Security, TokenSource } from "./security";
export { promise, watch, runExample } from "./orchestrator";
export type { Config, Output, Result } from "./orchestrator";
export { bytesValue, jsonValue, textValue } from "./values";
export type { WatchOptions } from "./watch";
