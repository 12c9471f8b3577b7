// Validates ServiceMonitor and PrometheusRule objects against the Prometheus
// Operator's own schemas, as shipped by the npm package
// @kubernetes-models/prometheus-operator (installed by .ci/install).
//
// Usage: node validate_monitoring.mjs NODE_MODULES_PARENT < objects.json
// (stdin: a JSON array of objects; prints one line per invalid object and
// exits 1 if any).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = join(process.argv[2], "node_modules", "@kubernetes-models", "prometheus-operator");
const v1 = await import(pathToFileURL(join(modules, "monitoring.coreos.com", "v1", "index.js")).href);
const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const obj of objects) {
  const Model = obj.apiVersion === "monitoring.coreos.com/v1" ? v1[obj.kind] : undefined;
  const name = `${obj.kind}/${obj.metadata?.name}`;
  if (!Model) {
    console.log(`${name}: no schema for ${obj.apiVersion} ${obj.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
  } catch (e) {
    console.log(`${name}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
