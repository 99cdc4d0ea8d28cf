export * from "./gen/asset/v1/asset_service";
export { AssetService, taskTokenSource } from "./client";
export type { TaskToken } from "./client";
export { connection, isLoopbackTarget } from "./security";
export type { Connection, Security, TokenSource } from "./security";
export { promise, watch, runExample } from "./orchestrator";
export type { Config, Output, Result } from "./orchestrator";
