/** Entry point of the `fitha` executable (built into dist/fitha by scripts/build). */
import { fithaCommand } from "./fitha-command.ts";
import { runCli } from "./runner.ts";

const exitCode = await runCli(fithaCommand, process.argv.slice(2));
// Exit explicitly: a one-shot command must not linger on an idle connection's timers.
process.exit(exitCode);
