export * from "./gen/asset/v1/asset_service";
export { AssetService } from "./client";
export { promise, watch, runExample } from "./orchestrator";
export type { Config, Output, Result } from "./orchestrator";
