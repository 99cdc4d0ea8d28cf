// The same package through `import`: named exports of its CommonJS build, errors typed.
import { createRequire } from "node:module";

import { AssetService, AssetServiceError, Status } from "@asset-service/client";

const require = createRequire(import.meta.url);
const svc = AssetService.fromEnv();
try {
  await svc.getAsset("00000000-0000-4000-8000-000000000000");
  console.log("found an asset that does not exist");
} catch (err) {
  const deep = (() => {
    try {
      require.resolve("@asset-service/client/dist/client");
      return "resolved";
    } catch (e) {
      return e.code;
    }
  })();
  console.log(JSON.stringify({ typed: err instanceof AssetServiceError, code: Status[err.code], deep, version: require("@asset-service/client/package.json").version }));
} finally {
  svc.close();
}
