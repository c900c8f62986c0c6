/** Entry point of the `fitha` executable (built into dist/fitha by scripts/build). */
import { fithaCommand } from "./fitha-command.ts";
import { runCli } from "./runner.ts";

const argv = process.argv.slice(2);
// `fitha --version` is what many operators try first; it is `fitha version`.
const exitCode = await runCli(fithaCommand, argv[0] === "--version" ? ["version", ...argv.slice(1)] : argv);
// Exit explicitly: a one-shot command must not linger on an idle connection's timers.
process.exit(exitCode);
