import { UsageError } from "../../../errors.ts";
import { checkHostName } from "../../../store/keys.ts";

/** A host name given on the command line (`--host`), checked as keys.ts requires; `where` names the command. */
export function hostArgument(name: string, where: string): string {
  try {
    return checkHostName(name);
  } catch (error) {
    if (error instanceof RangeError) throw new UsageError(`${where}: --host: ${error.message}`);
    throw error;
  }
}
