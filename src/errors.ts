/**
 * Errors an operator can cause or fix (bad config, unreachable etcd, a lease held elsewhere) are
 * FithaErrors: the CLI prints their message on one line and exits with their code, never a stack
 * trace. Anything else that escapes a command is a bug and is printed with its stack.
 */

/** Process exit codes of every fitha command (documented in README.md). */
export const ExitCode = {
  ok: 0,
  /** The operation failed: unreachable cluster, I/O error, refused request. */
  failed: 1,
  /** The command line or a configuration file is invalid; nothing was done. */
  usage: 2,
  /** A lease is held by another live host (lease commands). */
  heldElsewhere: 3,
  /** A bug: an error fitha did not expect (sysexits' EX_SOFTWARE). */
  internal: 70,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export class FithaError extends Error {
  constructor(
    message: string,
    readonly exitCode: ExitCode = ExitCode.failed,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "FithaError";
  }
}

/** Invalid command-line usage: unknown option, missing argument, bad value. */
export class UsageError extends FithaError {
  constructor(message: string) {
    super(message, ExitCode.usage);
    this.name = "UsageError";
  }
}

/** Renders any thrown value as one line, for logs and error replies. */
export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
