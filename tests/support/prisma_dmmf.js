// Reads a Prisma schema on stdin; prints {"errors": "..."} or {"dmmf": ...} using Prisma's WASM
// schema engine (no native binary, no network).
const wasm = require("@prisma/prisma-schema-wasm");
let text = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d) => (text += d));
process.stdin.on("end", () => {
  const files = [["schema.prisma", text]];
  try {
    wasm.validate(JSON.stringify({ prismaSchema: files, noColor: true }));
  } catch (e) {
    process.stdout.write(JSON.stringify({ errors: String(e.message || e) }));
    return;
  }
  const dmmf = JSON.parse(wasm.get_dmmf(JSON.stringify({ prismaSchema: files })));
  process.stdout.write(JSON.stringify({ dmmf: dmmf.datamodel }));
});
