// Builds the operator app into lcms/serve/static/, which `lcms serve` mounts at /.
//
// There is no bundler: the app is plain ES modules (src/), copied as they are, and MapLibre GL JS
// is copied from node_modules (its ES module, its worker and its stylesheet) into static/vendor/.
// Nothing is fetched at run time: every script and style the pages use is in the built folder.
import { cpSync, existsSync, mkdirSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "lcms", "serve", "static");
const maplibre = join(here, "node_modules", "maplibre-gl", "dist");

if (!existsSync(maplibre)) {
  console.error("node_modules/maplibre-gl is missing: run `npm ci` in frontend/ first");
  process.exit(1);
}
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "vendor"), { recursive: true });
cpSync(join(here, "src"), out, { recursive: true });
for (const file of ["maplibre-gl.mjs", "maplibre-gl-worker.mjs", "maplibre-gl.css"]) {
  cpSync(join(maplibre, file), join(out, "vendor", file));
}
const version = JSON.parse(readFileSync(join(here, "node_modules", "maplibre-gl", "package.json"))).version;
writeFileSync(
  join(out, "BUILT.txt"),
  `Built by frontend/build.mjs from frontend/src and maplibre-gl ${version}; do not edit: edit frontend/src.\n`,
);
console.log(`built the app into ${out} (maplibre-gl ${version})`);
