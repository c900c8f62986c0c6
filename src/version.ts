/** What this binary is: release version, the commit it was built from, the Bun runtime inside it. */
import packageJson from "../package.json" with { type: "json" };

// Set by scripts/build with `--define`; absent when running from source with `bun src/cli/main.ts`.
declare const FITHA_GIT_COMMIT: string | undefined;

export interface BuildInfo {
  readonly version: string;
  /** Git commit of the build ("unknown" when run from source), with "-dirty" if the tree had changes. */
  readonly commit: string;
  readonly bun: string;
}

export const buildInfo: BuildInfo = Object.freeze({
  version: packageJson.version,
  commit: typeof FITHA_GIT_COMMIT === "string" ? FITHA_GIT_COMMIT : "unknown",
  bun: Bun.version,
});
