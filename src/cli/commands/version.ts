import { defineCommand } from "citty";
import { buildInfo } from "../../version.ts";
import { jsonArg, logArgs } from "../args.ts";
import { printJson, printLines } from "../output.ts";

/** JSON shape (`--json`): { "version": "0.1.0", "commit": "<git sha>[-dirty]|unknown", "bun": "1.4.5" } */
export const versionCommand = defineCommand({
  meta: { description: "Show the fitha version, the git commit it was built from and its Bun runtime" },
  args: { ...jsonArg, ...logArgs },
  run({ args }) {
    if (args.json) printJson(buildInfo);
    else printLines(`fitha ${buildInfo.version} (commit ${buildInfo.commit}, bun ${buildInfo.bun})`);
  },
});
